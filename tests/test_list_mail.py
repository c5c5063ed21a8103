"""What the list does to a post: prefix, Reply-To, footer across MIME shapes, one-click."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

from sqlalchemy import select

from lists.footer import add_footer
from lists.models import Member
from mailer.inbound import parse
from mailer.tokens import Signer
from tests.helpers import (
    DOMAIN,
    Sink,
    mail,
    make_config,
    make_list,
    members,
    running,
    send,
    set_option,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"
FOOTER = "To unsubscribe, send a message to steering-leave@lists.example.org"


def as_bytes(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=default_policy.clone(linesep="\r\n"))


async def one_post(tmp_path: Path, url: str, sink: Sink, data: bytes, count: int = 2,
                   **options: str) -> list[EmailMessage]:
    config = make_config(tmp_path, url, smarthost_port=sink.port)
    people = members(count)
    make_list(config, "steering", people, display_name="Steering Committee")
    for key, value in options.items():
        set_option(config, "steering", key, value)
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST], data)
        return [d.message for d in await wait_quiet(sink, count)]


async def test_the_prefix_is_not_doubled_on_replies(tmp_path: Path, sqlite_url: str,
                                                    sink: Sink) -> None:
    sender = members(1)[0]
    copies = await one_post(tmp_path, sqlite_url, sink,
                            mail(sender, LIST, subject="Re: [steering] Budget"), 1)
    assert copies[0]["Subject"] == "Re: [steering] Budget"


async def test_a_non_ascii_subject_gets_the_prefix(tmp_path: Path, sqlite_url: str,
                                                   sink: Sink) -> None:
    sender = members(1)[0]
    copies = await one_post(tmp_path, sqlite_url, sink,
                            mail(sender, LIST, subject="Réunion à Bogotá"), 1)
    assert copies[0]["Subject"] == "[steering] Réunion à Bogotá"


async def test_reply_to_the_list_when_configured(tmp_path: Path, sqlite_url: str,
                                                 sink: Sink) -> None:
    sender = members(1)[0]
    copies = await one_post(tmp_path, sqlite_url, sink,
                            mail(sender, LIST, Reply_To="elsewhere@party.example"), 1,
                            reply_to="list")
    assert copies[0]["Reply-To"] == f"Steering Committee <{LIST}>"


async def test_an_alternative_message_is_wrapped_with_the_footer_after_it(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    sender = members(1)[0]
    post = EmailMessage()
    post["From"], post["To"], post["Subject"] = sender, LIST, "Rich"
    post.set_content("plain words\n")
    post.add_alternative("<p>rich words</p>\n", subtype="html")
    [copy] = await one_post(tmp_path, sqlite_url, sink, as_bytes(post), 1)
    assert copy.get_content_type() == "multipart/mixed"
    first, second = copy.get_payload()  # type: ignore[misc]
    assert first.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in first.get_payload()] == ["text/plain", "text/html"]
    assert first.get_payload()[1].get_content() == "<p>rich words</p>\n"
    assert second.get_content_type() == "text/plain"
    assert FOOTER in second.get_content()


def test_a_mixed_message_gets_one_more_part() -> None:
    post = EmailMessage()
    post["Subject"] = "With attachment"
    post.set_content("see attached\n")
    post.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf",
                        filename="agenda.pdf")
    raw = as_bytes(post)
    result = parse(add_footer(raw, parse(raw), FOOTER))
    parts = result.get_payload()
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "application/pdf", "text/plain"]  # type: ignore[union-attr]
    assert parts[1].get_content() == b"%PDF-1.4"  # type: ignore[index]
    assert FOOTER in parts[2].get_content()  # type: ignore[index]


def test_a_calendar_invitation_or_a_signed_message_gets_no_footer() -> None:
    invitation = EmailMessage()
    invitation.set_content("You are invited\n")
    invitation.add_alternative("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n",
                               subtype="calendar", params={"method": "REQUEST"})
    raw = as_bytes(invitation)
    assert add_footer(raw, parse(raw), FOOTER) == raw
    signed = (b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; "
              b"boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
              b"Content-Type: application/pgp-signature\r\n\r\nsig\r\n--b--\r\n")
    assert add_footer(signed, parse(signed), FOOTER) == signed


def test_base64_text_is_wrapped_and_its_bytes_kept() -> None:
    post = EmailMessage()
    post.set_content("Grüße aus Berlin\n", cte="base64")
    raw = as_bytes(post)
    original_body = raw.split(b"\r\n\r\n", 1)[1]
    result = add_footer(raw, parse(raw), FOOTER)
    assert original_body.strip() in result
    parsed = parse(result)
    assert parsed.get_payload()[0].get_content() == "Grüße aus Berlin\n"  # type: ignore


async def http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    """One HTTP/1.1 request over a real socket: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"{method} {path} HTTP/1.1\r\nHost: lists.example.org\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + body)
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1].decode()


async def test_one_click_unsubscribe_gets_a_page_and_posts_unsubscribe(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    people = members(2)
    make_list(config, "steering", people)
    async with running(config) as daemon:
        port = daemon.ports["http"]
        await send(daemon.ports["smtp"], people[0], [LIST], mail(people[0], LIST))
        copies = {d.rcpt: d.message for d in await wait_quiet(sink, 2)}
        header = str(copies[people[1]]["List-Unsubscribe"])
        url = header.split("<", 1)[1].split(">", 1)[0]
        path = url.removeprefix("https://lists.example.org")
        member_id = Signer(b"test-secret", "unsubscribe").verify(path.rsplit("/", 1)[1])
        assert member_id is not None

        status, page = await http(port, "GET", path)
        assert status == 200 and people[1] in page and "<form method='post'>" in page
        assert sorted(daemon.db.query(lambda s: s.scalars(select(Member.address)).all())) \
            == people, "a GET never unsubscribes"

        status, page = await http(port, "POST", path, b"List-Unsubscribe=One-Click")
        assert status == 200 and "has left" in page
        goodbye = (await wait_quiet(sink, 3))[2]
        remaining = daemon.db.query(lambda s: s.scalars(select(Member.address)).all())
        again, _ = await http(port, "POST", path, b"List-Unsubscribe=One-Click")
        forged, _ = await http(port, "POST", path[:-3] + "aaa", b"")
        missing, _ = await http(port, "GET", "/nothing-here")
    assert remaining == [people[0]]
    assert (goodbye.rcpt, goodbye.message["Subject"]) == (people[1], "You have left steering")
    assert (again, forged, missing) == (404, 404, 404)


async def test_an_open_lists_archive_is_on_the_web_and_a_closed_ones_is_not(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(1)
    make_list(config, "steering", people)
    make_list(config, "board", people, subscription="closed")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, people[0], [LIST], mail(people[0], LIST, subject="Open <agenda>"))
        await send(port, people[0], [f"board@{DOMAIN}"],
                   mail(people[0], f"board@{DOMAIN}", subject="Private"))
        copies = {str(d.message["Subject"]): d.message for d in await wait_quiet(sink, 2)}
        status, index = await http(daemon.ports["http"], "GET", "/lists/steering/")
        link = index.split("href='", 1)[1].split("'", 1)[0]
        post_status, post = await http(daemon.ports["http"], "GET", f"/lists/steering/{link}")
        closed, _ = await http(daemon.ports["http"], "GET", "/lists/board/")
    assert copies["[steering] Open <agenda>"]["List-Archive"] == \
        "<https://lists.example.org/lists/steering/>"
    assert copies["[board] Private"]["List-Archive"] is None
    assert status == 200 and "Open &lt;agenda&gt;" in index
    assert post_status == 200 and "Hello, list." in post and people[0] not in post
    assert closed == 404


async def test_a_long_non_ascii_subject_and_list_name_are_folded_not_refused(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    subject = "Réunion du comité de coordination à Dakar : ordre du jour et propositions"
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(1)
    make_list(config, "steering", people,
              display_name="Comité directeur de l'Alliance progressiste — réseau mondial")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST], mail(people[0], LIST, subject))
        [copy] = await wait_quiet(sink, 1)
    assert copy.message["Subject"] == f"[steering] {subject}"
    assert "Comité directeur" in str(copy.message["List-Id"])


async def test_a_poster_cannot_harvest_members_unsubscribe_tokens(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    people = members(2)
    await one_post(tmp_path, sqlite_url, sink, mail(
        people[0], LIST, Reply_To="x+@@unsubscribe-token@@@evil.example"), 2)
    for copy in sink.received:
        assert b"Reply-To: x+@@unsubscribe-token@@@evil.example\r\n" in copy.data
        assert "@@unsubscribe-token@@" not in str(copy.message["List-Unsubscribe"])


def test_a_non_ascii_footer_relabels_a_7bit_part_and_keeps_its_parameters() -> None:
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=us-ascii; format=flowed\r\n"
           b"Content-Transfer-Encoding: 7bit\r\n\r\nHello\r\n")
    result = add_footer(raw, parse(raw), "Pour vous désabonner : écrivez à x-leave@example.org")
    message = parse(result)
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert message.get_content_charset() == "utf-8"
    assert message.get_param("format") == "flowed"
    assert "désabonner" in message.get_content()
