"""A member posts, every member receives; a stranger posts, the post is held."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from lists.models import Held
from mailer.db import Database
from mailer.models import Delivery
from mailer.tokens import Signer
from tests.helpers import (
    DOMAIN,
    Sink,
    config_file,
    invoke,
    mail,
    make_config,
    make_list,
    members,
    running,
    send,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"


async def test_member_post_reaches_every_member_with_list_headers(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    people = members(25)
    make_list(config, "steering", people, display_name="Steering Committee")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST],
                   mail(people[0], LIST, subject="Agenda for Nairobi"))
        delivered = await sink.wait_for(len(people))

    assert sorted(sink.recipients) == sorted(people)
    assert set(sink.recipients.values()) == {1}, "one transaction per member, no duplicates"
    signer = Signer(b"test-secret", "member")
    unsubscribe = Signer(b"test-secret", "unsubscribe")
    senders = {d.mail_from for d in delivered}
    assert len(senders) == len(people), "each member has its own VERP envelope sender"
    for copy in delivered:
        local = copy.mail_from.split("@")[0]
        assert local.startswith("steering-bounces+")
        member_id = signer.verify(local.split("+", 1)[1])
        assert member_id is not None
        message = copy.message
        assert message["List-Id"] == '"Steering Committee" <steering.lists.example.org>'
        assert message["List-Post"] == f"<mailto:{LIST}>"
        one_click = f"https://lists.example.org/unsubscribe/{unsubscribe.sign(member_id)}"
        assert message["List-Unsubscribe"] == \
            f"<{one_click}>, <mailto:steering-leave@{DOMAIN}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Subscribe"] == f"<mailto:steering-join@{DOMAIN}>"
        assert message["List-Owner"] == f"<mailto:steering-owner@{DOMAIN}>"
        assert message["List-Archive"] == "<https://lists.example.org/lists/steering/>"
        assert message["List-Help"] == f"<mailto:steering-request@{DOMAIN}?subject=help>"
        assert message["Precedence"] == "list"
        assert message["Subject"] == "[steering] Agenda for Nairobi"
        assert message.get_content() == (
            "Hello, list.\n\n-- \n_______________________________________________\n"
            f"Steering Committee -- {LIST}\n"
            f"To unsubscribe, send a message to steering-leave@{DOMAIN}\n")


async def test_verp_token_names_the_member_it_was_sent_to(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(3)
    make_list(config, "steering", people)
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST], mail(people[0], LIST))
        delivered = await sink.wait_for(3)
        rows = daemon.db.query(lambda s: s.execute(
            select(Delivery.recipient, Delivery.member_id)).all())
    member_of = dict(rows)
    signer = Signer(b"test-secret", "member")
    for copy in delivered:
        token = copy.mail_from.split("+", 1)[1].split("@")[0]
        assert signer.verify(token) == member_of[copy.rcpt]


async def test_post_from_a_non_member_is_held_not_delivered(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    make_list(config, "steering", members(5))
    stranger = "stranger@elsewhere.test"
    async with running(config) as daemon:
        _, reply = await send(daemon.ports["smtp"], stranger, [LIST],
                              mail(stranger, LIST, subject="Buy now"))
        assert reply.startswith("2.0.0")
        notices = await wait_quiet(sink, 1)
        held = daemon.db.query(lambda s: list(s.scalars(select(Held))))
    assert [(h.sender, h.subject, h.state) for h in held] == [(stranger, "Buy now", "held")]
    assert [(d.rcpt, d.message["Subject"]) for d in notices] == \
        [(stranger, "Your message to steering awaits approval")], "no member got the post"

    result = invoke(config_file(config, tmp_path), "list", "held", "steering", "--json")
    assert result.exit_code == 0, result.output
    assert '"sender": "stranger@elsewhere.test"' in result.output
    assert "not a member" in result.output


async def test_a_message_carrying_our_own_list_id_is_not_distributed_again(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(3)
    make_list(config, "steering", people)
    async with running(config) as daemon:
        looped = mail(people[0], LIST, List_Id="<steering.lists.example.org>")
        await send(daemon.ports["smtp"], people[0], [LIST], looped)
        await send(daemon.ports["smtp"], people[0], [LIST], mail(people[0], LIST, "fresh"))
        await sink.wait_for(3)
        await asyncio.sleep(0.3)
    assert {d.message["Subject"] for d in sink.received} == {"[steering] fresh"}


def test_member_count_streams_from_the_database(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "big", members(1200))
    db = Database(sqlite_url)
    from lists import service
    try:
        count = db.query(lambda s: sum(1 for _ in service.members(s, service.find(s, "big"))))
    finally:
        db.close()
    assert count == 1200
