"""The dashboard's list pages over real HTTP against a running daemon: owners see their
lists, add and remove members, search among many, change settings; moderators approve,
reject and discard held posts; nobody changes anything without the form's CSRF token or
on a list that is not theirs."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import event, select, update

from lists.models import Held, MailingList, Member
from mailer.db import Database
from tests.helpers import (
    DOMAIN,
    Sink,
    csrf_of,
    http,
    mail,
    make_config,
    make_list,
    make_role,
    members,
    running,
    send,
    sign_in,
    wait_quiet,
)

ANA = "ana@party.test"          # owner of steering
BO = "bo@party.test"            # owner of board
MOD = "mod@party.test"          # moderator of steering
LIST = f"steering@{DOMAIN}"


def addresses_of(db: Database, name: str) -> list[str]:
    return db.query(lambda s: list(s.scalars(
        select(Member.address).join(MailingList, MailingList.id == Member.list_id)
        .where(MailingList.name == name, Member.role == "member").order_by(Member.address))))


def form(csrf: str, **fields: str) -> bytes:
    return "&".join(f"{key}={quote(value)}" for key, value in
                    {"csrf": csrf, **fields}.items()).encode()


async def test_an_owner_sees_only_their_lists_and_may_not_touch_another(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", members(3), display_name="Steering Committee")
    make_list(config, "board", members(2), display_name="Board")
    make_role(config, "steering", ANA, "owner")
    make_role(config, "board", BO, "owner")
    async with running(config) as daemon:
        port = daemon.ports["http"]
        cookie = await sign_in(port, sink, ANA)
        status, _, page = await http(port, "GET", "/dashboard/lists", language="en",
                                     headers={"Cookie": cookie})
        assert status == 200
        assert '<a href="/dashboard/lists/steering">Steering Committee</a>' in page
        assert "<td>3</td>" in page and "/dashboard/lists/board" not in page
        assert ">Board<" not in page
        csrf = csrf_of(page)

        for method, path, body in (("GET", "/dashboard/lists/board", b""),
                                   ("GET", "/dashboard/lists/board/held", b""),
                                   ("POST", "/dashboard/lists/board/add",
                                    form(csrf, addresses="eve@evil.test")),
                                   ("POST", "/dashboard/lists/board/remove",
                                    form(csrf, address="m00001@members.test")),
                                   ("POST", "/dashboard/lists/board/settings",
                                    form(csrf, key="posting_policy", value="anyone"))):
            status, _, _ = await http(port, method, path, body, headers={"Cookie": cookie})
            assert status == 403, path
    assert addresses_of(daemon.db, "board") == members(2)
    assert daemon.db.query(lambda s: s.scalar(select(MailingList.posting_policy).where(
        MailingList.name == "board"))) == "members"


async def test_an_owner_adds_and_removes_members_and_changes_a_setting(
        tmp_path: Path, sqlite_url: str, sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [BO])
    make_role(config, "steering", ANA, "owner")
    async with running(config) as daemon:
        port = daemon.ports["http"]
        cookie = await sign_in(port, sink, ANA)
        _, _, page = await http(port, "GET", "/dashboard/lists/steering",
                                headers={"Cookie": cookie})
        csrf = csrf_of(page)
        new = "kofi@party.test\r\nlena@party.test, bo@party.test"

        forged, _, _ = await http(port, "POST", "/dashboard/lists/steering/add",
                                  f"addresses={quote(new)}".encode(),
                                  headers={"Cookie": cookie})
        assert forged == 403 and addresses_of(daemon.db, "steering") == [BO]

        refused, _, page = await http(port, "POST", "/dashboard/lists/steering/add",
                                      form(csrf, addresses="kofi@party.test not-an-address"),
                                      language="en", headers={"Cookie": cookie})
        assert refused == 400 and '<p class="notice bad" role="alert">' in page
        assert "not-an-address" in page and addresses_of(daemon.db, "steering") == [BO]

        with caplog.at_level(logging.INFO, logger="alliance.audit"):
            status, headers, _ = await http(port, "POST", "/dashboard/lists/steering/add",
                                            form(csrf, addresses=new),
                                            headers={"Cookie": cookie})
        assert status == 303
        assert headers["location"] == "/dashboard/lists/steering?notice=added&count=2"
        assert addresses_of(daemon.db, "steering") == [BO, "kofi@party.test",
                                                       "lena@party.test"]
        assert f"web: {ANA} list.add" in caplog.text
        _, _, page = await http(port, "GET", headers["location"], language="fr",
                                headers={"Cookie": cookie})
        assert "2 ajoutés" in page

        status, headers, _ = await http(port, "POST", "/dashboard/lists/steering/remove",
                                        form(csrf, address="kofi@party.test"),
                                        headers={"Cookie": cookie})
        assert status == 303 and headers["location"].endswith("notice=removed&count=1")
        assert addresses_of(daemon.db, "steering") == [BO, "lena@party.test"]
        again, _, page = await http(port, "POST", "/dashboard/lists/steering/remove",
                                    form(csrf, address="kofi@party.test"),
                                    headers={"Cookie": cookie})
        assert again == 400 and "kofi@party.test is not a member of steering" in page

        status, _, _ = await http(port, "POST", "/dashboard/lists/steering/settings",
                                  form(csrf, key="posting_policy", value="moderated"),
                                  headers={"Cookie": cookie})
        bad, _, page = await http(port, "POST", "/dashboard/lists/steering/settings",
                                  form(csrf, key="hold_days", value="0"),
                                  headers={"Cookie": cookie})
    assert status == 303 and bad == 400 and "hold_days must be at least 1" in page
    steering = daemon.db.query(lambda s: s.scalars(select(MailingList).where(
        MailingList.name == "steering")).one())
    assert (steering.posting_policy, steering.hold_days) == ("moderated", 14)


async def test_a_moderator_sees_members_but_may_neither_remove_nor_change_settings(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [BO])
    make_role(config, "steering", MOD, "moderator")
    async with running(config) as daemon:
        port = daemon.ports["http"]
        cookie = await sign_in(port, sink, MOD)
        status, _, page = await http(port, "GET", "/dashboard/lists/steering",
                                     headers={"Cookie": cookie})
        assert status == 200 and f"<td>{BO}</td>" in page
        assert "/remove" not in page and "/settings" not in page
        csrf = csrf_of(page)
        for path, body in (("remove", form(csrf, address=BO)),
                           ("add", form(csrf, addresses="x@party.test")),
                           ("settings", form(csrf, key="footer", value="no"))):
            status, _, _ = await http(port, "POST", f"/dashboard/lists/steering/{path}", body,
                                      headers={"Cookie": cookie})
            assert status == 403, path
    assert addresses_of(daemon.db, "steering") == [BO]


async def test_search_finds_a_member_among_ten_thousand_a_page_at_a_time(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    make_list(config, "steering", members(10_000))
    make_role(config, "steering", ANA, "owner")
    db = Database(config.database.url, config.base_dir)
    db.transaction(lambda s: s.execute(update(Member).where(
        Member.address == "m07321@members.test").values(display_name="Wangari Maathai")))
    db.close()
    async with running(config) as daemon:
        port = daemon.ports["http"]
        cookie = await sign_in(port, sink, ANA)
        statements: list[str] = []

        def seen(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(daemon.db.reader, "before_cursor_execute", seen)
        try:
            _, _, by_name = await http(port, "GET", "/dashboard/lists/steering?q=maathai",
                                       headers={"Cookie": cookie})
            _, _, by_address = await http(port, "GET", "/dashboard/lists/steering?q=m0732",
                                          headers={"Cookie": cookie})
            _, _, first = await http(port, "GET", "/dashboard/lists/steering",
                                     headers={"Cookie": cookie})
        finally:
            event.remove(daemon.db.reader, "before_cursor_execute", seen)
        following = first.split("after=", 1)[1].split('"', 1)[0]
        _, _, second = await http(port, "GET", f"/dashboard/lists/steering?q=&after={following}",
                                  headers={"Cookie": cookie})

    assert "<td>m07321@members.test</td><td>Wangari Maathai</td>" in by_name
    assert by_name.count("@members.test</td>") == 1
    assert by_address.count("@members.test</td>") == 10, "m07320 to m07329"
    assert first.count("@members.test</td>") == 50 and "<td>m00050@members.test</td>" in first
    assert following == "m00050%40members.test"
    assert "<td>m00051@members.test</td>" in second and "m00050@" not in second
    member_reads = [s for s in statements if "FROM members" in s and "count(" not in s]
    assert member_reads and all("LIMIT" in s for s in member_reads), member_reads


async def test_a_moderator_approves_rejects_and_discards_held_posts(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    make_list(config, "steering", [ANA, BO], posting="moderated")
    make_role(config, "steering", MOD, "moderator")
    async with running(config) as daemon:
        smtp, port = daemon.ports["smtp"], daemon.ports["http"]
        for subject, body in (("Agenda", "The agenda <b>is</b> below.\n"),
                              ("Off topic", "Buy now.\n"), ("Spam", "Spam.\n")):
            await send(smtp, ANA, [LIST], mail(ANA, LIST, subject=subject, body=body))
        await wait_quiet(sink, 6)     # each: the moderator's notice and the poster's
        cookie = await sign_in(port, sink, MOD)
        status, _, page = await http(port, "GET", "/dashboard/lists/steering/held",
                                     language="en", headers={"Cookie": cookie})
        assert status == 200 and "<h2>Agenda</h2>" in page and f"<td>{ANA}</td>" in page
        assert "The agenda &lt;b&gt;is&lt;/b&gt; below." in page and "<b>is" not in page
        csrf = csrf_of(page)
        ids = daemon.db.query(lambda s: list(s.scalars(select(Held.id).order_by(Held.id))))

        forged, _, _ = await http(port, "POST", f"/dashboard/lists/steering/held/{ids[0]}",
                                  b"action=approve", headers={"Cookie": cookie})
        assert forged == 403

        sink.received.clear()
        status, headers, _ = await http(port, "POST",
                                        f"/dashboard/lists/steering/held/{ids[0]}",
                                        form(csrf, action="approve"), headers={"Cookie": cookie})
        assert status == 303
        assert headers["location"] == "/dashboard/lists/steering/held?notice=approved&count=0"
        distributed = await wait_quiet(sink, 2)
        assert sorted(d.rcpt for d in distributed) == [ANA, BO]
        assert all("Agenda" in str(d.message["Subject"]) for d in distributed)

        sink.received.clear()
        status, _, _ = await http(port, "POST", f"/dashboard/lists/steering/held/{ids[1]}",
                                  form(csrf, action="reject", reason="Please keep to the agenda"),
                                  headers={"Cookie": cookie})
        [told] = await wait_quiet(sink, 1)
        assert status == 303 and told.rcpt == ANA
        assert "Please keep to the agenda" in told.message.get_body(
            preferencelist=("plain",)).get_content()

        sink.received.clear()
        status, _, _ = await http(port, "POST", f"/dashboard/lists/steering/held/{ids[2]}",
                                  form(csrf, action="discard"), headers={"Cookie": cookie})
        assert status == 303 and await wait_quiet(sink, 0) == []

        again, _, page = await http(port, "POST", f"/dashboard/lists/steering/held/{ids[0]}",
                                    form(csrf, action="discard"), headers={"Cookie": cookie})
        assert again == 400 and f"post {ids[0]} was already approved" in page
        _, _, page = await http(port, "GET", "/dashboard/lists/steering/held",
                                headers={"Cookie": cookie})
        assert "No post is waiting for a moderator." in page
    decided = daemon.db.query(lambda s: s.execute(select(Held.state, Held.decided_by)
                                                  .order_by(Held.id)).all())
    assert [tuple(row) for row in decided] == [("approved", MOD), ("rejected", MOD),
                                               ("discarded", MOD)]
