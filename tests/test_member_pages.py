"""Members help themselves on the web (/me): options, leaving, their data downloaded and
erased (GDPR art. 15 and 17), over real HTTP against a running daemon."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from lists.models import Archived, Member
from meetings.models import Delegate
from tests.helpers import (
    DOMAIN,
    Sink,
    cli,
    config_file,
    csrf_of,
    http,
    mail,
    make_config,
    make_list,
    party,
    running,
    seat,
    send,
    sign_in,
    wait_quiet,
)

ANA = "ana@members.test"
LIST = f"steering@{DOMAIN}"


def memberships(db, address: str) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    rows = db.query(lambda s: s.execute(select(Member.list_id, Member.delivery,
                                               Member.language)
                                        .where(Member.address == address)).all())
    return {str(list_id): (delivery, language) for list_id, delivery, language in rows}


async def test_a_member_switches_to_digests_in_french_then_leaves(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [ANA], display_name="Steering Committee")
    async with running(config) as daemon:
        port = daemon.ports["http"]
        cookie = await sign_in(port, sink, ANA)
        status, _, page = await http(port, "GET", "/me", headers={"Cookie": cookie})
        assert status == 200 and "<h2>Steering Committee</h2>" in page
        csrf = csrf_of(page)

        forged, _, _ = await http(port, "POST", "/me/lists/steering",
                                  b"delivery=nomail&language=de", headers={"Cookie": cookie})
        assert forged == 403 and memberships(daemon.db, ANA) == {"1": ("regular", "")}

        status, headers, _ = await http(port, "POST", "/me/lists/steering",
                                        f"csrf={csrf}&delivery=digest&language=fr".encode(),
                                        headers={"Cookie": cookie})
        assert status == 303 and headers["location"] == "/me?done=saved"
        assert memberships(daemon.db, ANA) == {"1": ("digest", "fr")}
        _, _, page = await http(port, "GET", "/me?done=saved",
                                headers={"Cookie": cookie, "Accept-Language": "fr"})
        assert "Enregistré." in page and '<option value="digest" selected>' in page

        sink.received.clear()
        status, headers, _ = await http(port, "POST", "/me/lists/steering/leave",
                                        f"csrf={csrf}".encode(), headers={"Cookie": cookie})
        assert status == 303 and headers["location"] == "/me?done=left"
        [goodbye] = await wait_quiet(sink, 1)
    assert memberships(daemon.db, ANA) == {}
    assert goodbye.rcpt == ANA and "Steering Committee" in str(goodbye.message["Subject"])


async def test_a_member_downloads_then_erases_their_data(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [ANA, "bo@members.test"])
    cli(config_file(config, tmp_path), "list", "set", "steering", "public_archive", "yes")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], ANA, [LIST],
                   mail(f"Ana Silva <{ANA}>", LIST, subject="Agenda", body="See you.\n"))
        await wait_quiet(sink, 2)
        port = daemon.ports["http"]
        cookie = await sign_in(port, sink, ANA)
        status, headers, body = await http(port, "GET", "/me/data.json",
                                           headers={"Cookie": cookie})
        assert status == 200 and headers["content-disposition"].startswith("attachment;")
        data = json.loads(body)
        assert data["address"] == ANA
        assert [m["list"] for m in data["lists"]["memberships"]] == ["steering"]
        [post] = data["lists"]["archived_posts"]
        assert post["subject"] == "[steering] Agenda"
        assert post["url"].startswith("https://lists.example.org/lists/steering/")
        assert data["meetings"]["delegate"] is None

        _, _, page = await http(port, "GET", "/me/erase", headers={"Cookie": cookie})
        status, headers, page = await http(port, "POST", "/me/erase",
                                           f"csrf={csrf_of(page)}".encode(),
                                           headers={"Cookie": cookie})
        assert status == 200 and "Your data is erased" in page
        assert headers["set-cookie"].startswith("alliance_session=;"), "signed out"
        again, _, _ = await http(port, "GET", "/me", headers={"Cookie": cookie})
        assert again == 403, "the address is no one to the site any more"
        archived = daemon.db.query(lambda s: s.scalars(select(Archived)).one())
    assert memberships(daemon.db, ANA) == {}
    assert archived.sender == "(erased)"
    assert ANA.encode() not in archived.data and b"Ana Silva" not in archived.data
    assert b"See you." in archived.data, "what was said to the list stays"


async def test_a_seated_delegate_keeps_the_seat_when_erasing(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    party(path, "Parti Socialiste")
    seat(path, ANA, "Ana Silva", "Parti Socialiste", "board", "fr")
    async with running(config) as daemon:
        port = daemon.ports["http"]
        cookie = await sign_in(port, sink, ANA)
        _, _, page = await http(port, "GET", "/me/erase", headers={"Cookie": cookie})
        status, _, page = await http(port, "POST", "/me/erase",
                                     f"csrf={csrf_of(page)}".encode(),
                                     headers={"Cookie": cookie, "Accept-Language": "fr"})
        delegate = daemon.db.query(lambda s: s.scalar(select(Delegate.name)))
    assert status == 200 and "Vous occupez encore un siège dans : board" in page
    assert delegate == "Ana Silva", "the seat is the party's: the coordinators unseat"
    assert memberships(daemon.db, ANA) == {}, "off the lists all the same"
