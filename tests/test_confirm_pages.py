"""Confirming a subscription on the web, and RFC 8058's one-click unsubscribe.

A person asks to join or leave by mail, opens the link of the confirmation (as a link
scanner would, which must change nothing), and presses the page's one button.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from sqlalchemy import select

from lists.models import Member
from mailer.tokens import Signer
from tests.helpers import (
    DOMAIN,
    SECRET,
    Delivered,
    Sink,
    http,
    mail,
    make_config,
    make_list,
    running,
    send,
    wait_quiet,
)

JOIN = f"steering-join@{DOMAIN}"
LEAVE = f"steering-leave@{DOMAIN}"
ANA = "ana@party.example"
LINK = re.compile(r"https://lists\.example\.org(/confirm/steering/[0-9]+-[a-z2-7]{26})")


def roster(daemon: object) -> list[str]:
    db = daemon.db  # type: ignore[attr-defined]
    return db.query(lambda s: sorted(s.scalars(select(Member.address))))


def page_of(confirmation: Delivered) -> str:
    """The confirmation page's path, from the mail's text; its token is the Subject's."""
    message = confirmation.message
    found = LINK.search(message.get_content())
    assert found is not None, message.get_content()
    assert found[1].endswith(message["Subject"].split()[1])
    return found[1]


async def test_join_and_leave_by_the_confirmation_pages(tmp_path: Path, sqlite_url: str,
                                                        sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", ["bo@party.example"], display_name="Steering Committee")
    async with running(config) as daemon:
        smtp, port = daemon.ports["smtp"], daemon.ports["http"]
        await send(smtp, ANA, [JOIN], mail(ANA, JOIN, subject="join"))
        join = page_of((await wait_quiet(sink, 1))[0])
        shown = await http(port, "GET", join, language="fr")
        head = await http(port, "HEAD", join)
        scanned = roster(daemon)
        joined = await http(port, "POST", join, language="fr")
        welcome = (await wait_quiet(sink, 2))[1]
        after_join = roster(daemon)
        used = await http(port, "POST", join, language="es")

        await send(smtp, ANA, [LEAVE], mail(ANA, LEAVE, subject="leave"))
        leave = page_of((await wait_quiet(sink, 3))[2])
        asked = await http(port, "GET", leave)
        left = await http(port, "POST", leave)
        goodbye = (await wait_quiet(sink, 4))[3]
        after_leave = roster(daemon)
        other_list = await http(port, "GET", leave.replace("/steering/", "/board/"))

    assert shown[0] == 200 and shown[1]["content-language"] == "fr" and head[0] == 200
    assert "Vous inscrire à la liste Steering Committee" in shown[2]
    assert shown[2].count("<button") == 1 and '<form method="post">' in shown[2]
    assert scanned == ["bo@party.example"], "a GET subscribes no one"
    assert joined[0] == 200 and "est maintenant inscrite" in joined[2]
    assert after_join == [ANA, "bo@party.example"]
    assert (welcome.rcpt, welcome.message["Subject"]) == (ANA, "Welcome to Steering Committee")
    assert used[0] == 404 and "Enlace desconocido" in used[2] and "confirmación" in used[2]
    assert asked[0] == 200 and "Leave Steering Committee?" in asked[2]
    assert left[0] == 200 and f"{ANA} has left Steering Committee." in left[2]
    assert goodbye.message["Subject"] == "You have left Steering Committee"
    assert after_leave == ["bo@party.example"]
    assert other_list[0] == 404


async def post_form_data(port: int, path: str, boundary: str, body: bytes) -> int:
    """A POST as RFC 8058 §3.1 prefers it (multipart/form-data); its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n"
                 f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(response.split(b" ", 2)[1])


async def test_one_click_unsubscribe_takes_rfc_8058s_body_in_either_form_encoding(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    people = ["ana@party.example", "bo@party.example", "cy@party.example"]
    make_list(config, "steering", people)
    signer = Signer(SECRET, "unsubscribe")
    async with running(config) as daemon:
        ids = daemon.db.query(lambda s: {address: ident for address, ident in s.execute(
            select(Member.address, Member.id))})
        path = {address: f"/unsubscribe/{signer.sign(ids[address])}" for address in people}
        port = daemon.ports["http"]
        bare = await http(port, "POST", path[people[0]], b"")
        other = await http(port, "POST", path[people[0]], b"List-Unsubscribe=Later")
        kept = roster(daemon)
        boundary = "----alliance"
        multipart = (f"--{boundary}\r\nContent-Disposition: form-data; "
                     f'name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--{boundary}--\r\n').encode()
        by_form_data = await post_form_data(port, path[people[1]], boundary, multipart)
        by_urlencoded = await http(port, "POST", path[people[2]], b"List-Unsubscribe=One-Click")
        unknown = await http(port, "POST", path[people[2]], b"")
        remaining = roster(daemon)
    assert bare[0] == other[0] == 400 and "<button" in bare[2], "the page, to press its button"
    assert kept == people
    assert by_form_data == by_urlencoded[0] == 200
    assert remaining == [people[0]]
    assert unknown[0] == 404
