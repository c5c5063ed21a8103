"""A member's mail bounces: the VERP address names them, the score climbs, delivery stops.

Each bounce is a real report (tests/data/bounces/) sent over SMTP to the envelope sender
that the list copy carried; the daemon's clock moves a day between bounces.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lists import service
from lists.bounces import decay
from lists.models import Bounce, Member, Pending
from lists.subscriptions import reenable
from mailer.config import Config
from mailer.daemon import Daemon
from mailer.db import Database
from mailer.tokens import Signer
from tests.helpers import (
    DOMAIN,
    MEMBER_TOKENS,
    Clock,
    Delivered,
    Sink,
    list_site,
    mail,
    make_config,
    members,
    quiet,
    running,
    send,
)

LIST = f"steering@{DOMAIN}"
BOUNCES = f"steering-bounces@{DOMAIN}"
OWNER = "chair@parties.test"
DAY = 86_400.0
DATA = Path(__file__).parent / "data" / "bounces"
# Delivery reports come from the null sender (RFC 5321 §4.5.5).
REPORTER = ""


@dataclass(frozen=True)
class Standing:
    enabled: bool
    reason: str
    score: float
    bounces: tuple[str, ...]


def report(name: str, member: str, bounce_address: str) -> bytes:
    """A stored bounce report, about `member`, sent to `bounce_address`."""
    text = (DATA / name).read_bytes()
    text = text.replace(b"delegate@members.test", member.encode())
    text = text.replace(b"steering-bounces+TOKEN@lists.example.org", bounce_address.encode())
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def make_steering(config: Config, people: list[str], **settings: object) -> None:
    """The steering list with these members, one owner, and the given settings."""
    db = Database(config.database.url, config.base_dir)
    db.upgrade()

    def create(session: Session) -> None:
        made = service.create(session, "steering", display_name="Steering Committee")
        service.add_members(session, made, people)
        service.add_members(session, made, [OWNER], role="owner")
        for key, value in settings.items():
            setattr(made, key, value)

    try:
        db.transaction(create)
    finally:
        db.close()


def standing(daemon: Daemon, address: str) -> Standing:
    def read(session: Session) -> Standing:
        member = session.scalar(select(Member).where(Member.address == address,
                                                     Member.role == "member"))
        assert member is not None
        kinds = session.scalars(select(Bounce.kind).where(Bounce.member_id == member.id)
                                .order_by(Bounce.id))
        return Standing(member.enabled, member.disabled_reason, member.bounce_score,
                        tuple(kinds))
    return daemon.db.query(read)


async def post(daemon: Daemon, sink: Sink, sender: str, subject: str) -> dict[str, Delivered]:
    """A member posts; returns the list copies by recipient once delivery settles."""
    await send(daemon.ports["smtp"], sender, [LIST], mail(sender, LIST, subject=subject))
    await quiet(daemon)
    return {d.rcpt: d for d in sink.received if str(d.message["Subject"]).endswith(subject)}


async def bounce(daemon: Daemon, name: str, member: str, bounce_address: str) -> None:
    """A mail system returns a report about `member` to the bounce address."""
    await send(daemon.ports["smtp"], REPORTER, [bounce_address],
               report(name, member, bounce_address))
    await quiet(daemon)


async def test_hard_bounces_on_five_days_disable_delivery_until_the_member_confirms(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    people = members(3)
    poster, bouncing = people[0], people[1]
    make_steering(config, people)
    clock = Clock(time.time())
    async with running(config, clock=clock) as daemon:
        copies = await post(daemon, sink, poster, "Agenda for Nairobi")
        verp = copies[bouncing].mail_from
        assert verp.startswith("steering-bounces+")

        for day in range(1, 5):
            await bounce(daemon, "postfix-dsn.eml", bouncing, verp)
            assert standing(daemon, bouncing) == Standing(True, "", float(day),
                                                          ("hard",) * day)
            clock.advance(1)
        before = len(sink.received)
        await bounce(daemon, "postfix-dsn.eml", bouncing, verp)
        assert standing(daemon, bouncing) == Standing(False, "bounces", 5.0, ("hard",) * 5)

        notices = {d.rcpt: d for d in sink.received[before:]}
        assert set(notices) == {bouncing, OWNER}
        token = daemon.db.query(lambda s: s.scalars(
            select(Pending.token).where(Pending.action == "reenable",
                                        Pending.address == bouncing)).one())
        confirm = f"steering-confirm+{token}@{DOMAIN}"
        notice = notices[bouncing]
        assert notice.mail_from.startswith("steering-bounces+"), \
            "robot mail to a member carries the member's VERP token"
        assert notices[OWNER].mail_from == BOUNCES
        assert notice.message["Reply-To"] == confirm
        assert notice.message["Auto-Submitted"] == "auto-generated"
        body = notice.message.get_content()
        assert f"confirm {token}" in body and confirm in body
        owner_notice = notices[OWNER].message
        assert bouncing in owner_notice["Subject"]
        assert owner_notice["From"].addresses[0].addr_spec == f"steering-owner@{DOMAIN}"

        # The notice bounces too (the address is dead): it counts against no one.
        before = len(sink.received)
        await bounce(daemon, "postfix-dsn.eml", bouncing, BOUNCES)
        assert standing(daemon, bouncing).bounces == ("hard",) * 5
        assert len(sink.received) == before

        copies = await post(daemon, sink, poster, "Minutes")
        assert set(copies) == set(people) - {bouncing}

        def confirmed(session: Session) -> None:
            steering = service.find(session, "steering")
            pending = session.scalars(select(Pending).where(Pending.token == token)).one()
            reenable(session, list_site(), steering, pending)
        daemon.db.transaction(confirmed)
        assert standing(daemon, bouncing) == Standing(True, "", 0.0, ("hard",) * 5)
        copies = await post(daemon, sink, poster, "Budget")
        assert set(copies) == set(people)


async def test_a_forged_token_or_unknown_list_is_refused_at_rcpt(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_steering(config, members(2))
    forged = Signer(b"another-secret", "member").sign(1)
    async with running(config) as daemon:
        for address in (f"steering-bounces+{forged}@{DOMAIN}",
                        f"steering-bounces+1-{'a' * 26}@{DOMAIN}",
                        f"nosuchlist-bounces+{MEMBER_TOKENS.sign(1)}@{DOMAIN}"):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await send(daemon.ports["smtp"], REPORTER, [address],
                           report("postfix-dsn.eml", "m00001@members.test", address))
            assert refused.value.recipients[0].code == 550
        # The genuine token of the same member is accepted.
        await send(daemon.ports["smtp"], REPORTER,
                   [f"steering-bounces+{MEMBER_TOKENS.sign(1)}@{DOMAIN}"],
                   report("postfix-dsn.eml", "m00001@members.test", BOUNCES))


async def test_an_out_of_office_reply_or_spam_at_the_bounce_address_is_discarded(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(3)
    make_steering(config, people)
    async with running(config) as daemon:
        copies = await post(daemon, sink, people[0], "Agenda for Nairobi")
        before = len(sink.received)
        await send(daemon.ports["smtp"], people[1], [copies[people[1]].mail_from],
                   report("out-of-office.eml", people[1], copies[people[1]].mail_from))
        await send(daemon.ports["smtp"], "offers@bulk-sender.test", [BOUNCES],
                   report("spam.eml", people[2], BOUNCES))
        await quiet(daemon)
        assert len(sink.received) == before, "nothing is forwarded or answered"
        for person in people:
            assert standing(daemon, person) == Standing(True, "", 0.0, ())


async def test_a_delayed_dsn_is_a_soft_bounce_worth_half(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(2)
    make_steering(config, people)
    async with running(config) as daemon:
        copies = await post(daemon, sink, people[0], "Agenda for Nairobi")
        await bounce(daemon, "postfix-delayed.eml", people[1], copies[people[1]].mail_from)
        assert standing(daemon, people[1]) == Standing(True, "", 0.5, ("soft",))


async def test_bounces_on_the_same_day_count_once(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(2)
    make_steering(config, people)
    clock = Clock(time.time() - time.time() % DAY + DAY / 3)   # early in a UTC day
    async with running(config, clock=clock) as daemon:
        verp = (await post(daemon, sink, people[0], "Agenda"))[people[1]].mail_from
        await bounce(daemon, "postfix-delayed.eml", people[1], verp)
        await bounce(daemon, "postfix-dsn.eml", people[1], verp)
        await bounce(daemon, "gmail-failed-recipients.eml", people[1], verp)
        assert standing(daemon, people[1]) == Standing(True, "", 1.0,
                                                       ("soft", "hard", "hard"))
        clock.advance(1)
        await bounce(daemon, "gmail-failed-recipients.eml", people[1], verp)
        assert standing(daemon, people[1]).score == 2.0


async def test_a_bounce_without_a_token_scores_nobody(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    """Anyone can write a DSN naming a member; only a signed VERP token counts."""
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(2)
    make_steering(config, people)
    async with running(config) as daemon:
        await bounce(daemon, "postfix-dsn.eml", people[1], BOUNCES)
        await bounce(daemon, "postfix-dsn.eml", "stranger@elsewhere.test", BOUNCES)
        assert standing(daemon, people[1]) == Standing(True, "", 0.0, ())
        assert daemon.db.query(lambda s: len(list(s.scalars(select(Bounce))))) == 0


async def test_an_old_score_is_forgotten(tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(3)
    make_steering(config, people, bounce_decay_days=7)
    clock = Clock(time.time())
    async with running(config, clock=clock) as daemon:
        copies = await post(daemon, sink, people[0], "Agenda")
        for person in people[1:]:
            await bounce(daemon, "postfix-dsn.eml", person, copies[person].mail_from)
            clock.advance(1)
            await bounce(daemon, "postfix-dsn.eml", person, copies[person].mail_from)
        assert standing(daemon, people[1]).score == 2.0

        clock.advance(8)
        await bounce(daemon, "postfix-dsn.eml", people[1], copies[people[1]].mail_from)
        assert standing(daemon, people[1]).score == 1.0, "starts again from 0"

        await daemon.scheduler.run_due()
        assert standing(daemon, people[1]).score == 1.0, "bounced today: kept"
        assert standing(daemon, people[2]).score == 0.0, "last bounce 8 days ago: forgotten"


def test_decay_spares_disabled_members_and_follows_each_lists_setting(
        tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url)
    people = members(3)
    make_steering(config, people, bounce_decay_days=30)
    now = time.time()
    db = Database(database_url)

    def arrange(session: Session) -> None:
        for address, enabled, age in ((people[0], True, 10), (people[1], True, 40),
                                      (people[2], False, 40)):
            member = service.member(session, service.find(session, "steering").id, address)
            assert member is not None
            member.enabled, member.bounce_score = enabled, 3.0
            member.last_bounce_at = now - age * DAY

    def scores(session: Session) -> list[float]:
        return [m.bounce_score for m in session.scalars(
            select(Member).where(Member.role == "member").order_by(Member.address))]

    try:
        db.transaction(arrange)
        assert db.transaction(decay, now) == 0
        assert db.query(scores) == [3.0, 0.0, 3.0]
    finally:
        db.close()


async def test_a_smarthost_refusing_the_mailbox_counts_as_a_hard_bounce(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    people = members(3)
    make_steering(config, people)
    sink.refuse[people[1]] = "550 5.1.1 No such user here"
    sink.refuse[people[2]] = "554 5.7.1 Message refused by policy"
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST], mail(people[0], LIST))
        await sink.wait_for(1)
        deadline = time.monotonic() + 10
        while standing(daemon, people[1]).score == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert standing(daemon, people[1]) == Standing(True, "", 1.0, ("hard",))
        assert standing(daemon, people[2]) == Standing(True, "", 0.0, ()), \
            "a policy refusal is not the member's fault"
