"""Digest members get one digest per period; regular members get each post; never empty.

The daemon's clock is moved by the test (a day, three days) instead of sleeping; the
scheduler's `digests` job then sends what is due, through the real SMTP sink.
"""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from email.policy import default as default_policy
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lists import archive, digests, service
from lists.models import DigestState, MailingList, Member
from mailer.config import Config
from mailer.daemon import Daemon
from mailer.db import Database
from mailer.models import Delivery, Outgoing
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
DAY = 86_400.0


def make_steering(config: Config, people: list[str], delivery: dict[str, str],
                  disabled: tuple[str, ...] = (), **settings: object) -> None:
    """The steering list: these members, their delivery modes, and the given settings."""
    db = Database(config.database.url, config.base_dir)
    db.upgrade()

    def create(session: Session) -> None:
        made = service.create(session, "steering", display_name="Steering Committee")
        service.add_members(session, made, people)
        for key, value in settings.items():
            setattr(made, key, value)
        session.flush()
        for address, mode in delivery.items():
            session.execute(update(Member).where(Member.address == address)
                            .values(delivery=mode))
        session.execute(update(Member).where(Member.address.in_(disabled))
                        .values(enabled=False, disabled_reason="bounces"))

    try:
        db.transaction(create)
    finally:
        db.close()


async def scheduled(daemon: Daemon) -> None:
    """Run the scheduler's jobs now, as its next tick would, and let delivery settle."""
    daemon.scheduler.wake()
    await daemon.scheduler.run_due()
    await quiet(daemon)


async def digests_arrive(daemon: Daemon, sink: Sink, count: int) -> None:
    """Run the scheduler until the sink holds `count` deliveries.

    On PostgreSQL a run can find the job's advisory lock held by the scheduler's own tick
    (it then skips until the job is next due), so this asks again rather than once.
    """
    deadline = time.monotonic() + 15
    while len(sink.received) < count:
        assert time.monotonic() < deadline, f"sink got {len(sink.received)} of {count}"
        await scheduled(daemon)
        await asyncio.sleep(0.05)


async def post(daemon: Daemon, sink: Sink, sender: str, subject: str, body: str,
               copies: int) -> None:
    """A member posts; returns once the regular members' copies have arrived."""
    before = len(sink.received)
    await send(daemon.ports["smtp"], sender, [LIST],
               mail(sender, LIST, subject=subject, body=body))
    await sink.wait_for(before + copies)
    await quiet(daemon)


def digest_parts(copy: Delivered) -> tuple[EmailMessage, list[EmailMessage], EmailMessage]:
    """The masthead, the enclosed posts and the footer of a MIME digest (RFC 2046 §5.1.5)."""
    message = copy.message
    assert message.get_content_type() == "multipart/mixed"
    contents, digest, footer = message.iter_parts()
    assert contents.get_content_type() == "text/plain"
    assert digest.get_content_type() == "multipart/digest"
    assert footer.get_content_type() == "text/plain"
    posts = list(digest.iter_parts())
    assert {part.get_content_type() for part in posts} == {"message/rfc822"}
    enclosed = [part.get_content() for part in posts]
    assert all(isinstance(inner, EmailMessage) for inner in enclosed)
    assert isinstance(contents, EmailMessage) and isinstance(footer, EmailMessage)
    return contents, enclosed, footer


async def test_digest_members_get_one_digest_when_the_period_ends_and_never_an_empty_one(
        tmp_path: Path, database_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    people = members(6)
    regular, readers, nomail, disabled = people[:2], people[2:4], people[4], people[5]
    make_steering(config, people, {**dict.fromkeys(readers + [disabled], "digest"),
                                   nomail: "nomail"}, disabled=(disabled,))
    clock = Clock(time.time())
    async with running(config, clock=clock) as daemon:
        assert "digests" in [job.name for job in daemon.scheduler.jobs]
        await post(daemon, sink, regular[0], "Agenda for Nairobi", "Items below.\n", 2)
        await post(daemon, sink, regular[1], "Travel grants", "Apply by May.\n", 2)
        await scheduled(daemon)
        assert sorted(sink.recipients.elements()) == sorted(regular * 2), "no digest yet"

        clock.advance(1.01)
        await digests_arrive(daemon, sink, 6)
        first = sink.received[4:]

        clock.advance(3)
        await scheduled(daemon)
        assert len(sink.received) == 6, "nothing new was posted: no digest"

        await post(daemon, sink, regular[0], "Minutes", "Attached.\n", 2)
        await scheduled(daemon)
        assert len(sink.received) == 8, "the new post waits for the end of its period"
        clock.advance(1.01)
        await digests_arrive(daemon, sink, 10)
        second = sink.received[8:]
        member_ids = daemon.db.query(lambda s: dict(s.execute(
            select(Member.address, Member.id).where(Member.role == "member")).all()))

    for issue, copies, subjects in (
            (1, first, ["[steering] Agenda for Nairobi", "[steering] Travel grants"]),
            (2, second, ["[steering] Minutes"])):
        assert sorted(copy.rcpt for copy in copies) == sorted(readers)
        for copy in copies:
            local = copy.mail_from.split("@")[0]
            assert local.startswith("steering-bounces+"), "VERP, as for every list mail"
            assert MEMBER_TOKENS.verify(local.split("+", 1)[1]) == member_ids[copy.rcpt]
            message = copy.message
            assert message["Subject"] == f"Steering Committee Digest, Vol 1, Issue {issue}"
            assert message["From"].addresses[0].addr_spec == LIST
            assert message["From"].addresses[0].display_name == "Steering Committee"
            assert message["To"] == LIST
            assert message["List-Id"] == '"Steering Committee" <steering.lists.example.org>'
            assert message["Precedence"] == "list"
            assert message["Auto-Submitted"] is None, "a digest is list mail, not a robot's"
            assert "@@" not in message["List-Unsubscribe"], "the member's own link"
            contents, enclosed, footer = digest_parts(copy)
            assert [str(inner["Subject"]) for inner in enclosed] == subjects
            topics = contents.get_content()
            assert all(f". {subject} (" in topics for subject in subjects)
            assert f"End of Steering Committee Digest, Vol 1, Issue {issue}" in \
                footer.get_content()
    assert enclosed[0].get_content().startswith("Attached.\n")


async def test_posts_past_the_size_threshold_go_before_the_period_ends(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    poster, reader = members(2)
    make_steering(config, [poster, reader], {reader: "digest"}, digest_max_kb=4,
                  digest_period="weekly")
    async with running(config, clock=Clock(time.time())) as daemon:
        await post(daemon, sink, poster, "Short note", "Just a line.\n", 1)
        await scheduled(daemon)
        assert sink.recipients[reader] == 0
        await post(daemon, sink, poster, "Long report", "A long line of the report.\n" * 200, 1)
        await digests_arrive(daemon, sink, 3)
    digest = sink.received[-1]
    assert digest.rcpt == reader
    _, enclosed, _ = digest_parts(digest)
    assert [str(inner["Subject"]) for inner in enclosed] == \
        ["[steering] Short note", "[steering] Long report"]


# -- the job, called directly -----------------------------------------------------------

def archive_post(session: Session, mailing_list: MailingList, subject: str, at: float,
                 body: str = "Hello, list.\n", data: bytes | None = None) -> int:
    """A post as the list archived it; returns its archive id."""
    row = archive.store(session, mailing_list.id, "ana@party.test",
                        data or mail("Ana Silva <ana@party.test>", LIST, subject, body), at)
    session.flush()
    return row.id


def test_one_digest_for_many_members_is_stored_once_with_a_row_each(
        tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url)
    people = members(700)
    make_steering(config, people, dict.fromkeys(people[:600], "digest"))
    db = Database(database_url)
    start = time.time()
    try:
        def seed(session: Session) -> None:
            steering = service.find(session, "steering")
            for n in range(3):
                archive_post(session, steering, f"Post {n}", start + n)
        db.transaction(seed)
        job = digests.job(list_site())
        assert db.transaction(job.run, start + 10) == 0, "the period has not ended"
        assert db.transaction(job.run, start + 2 * DAY) == 1
        assert db.transaction(job.run, start + 4 * DAY) == 0, "never empty"
        assert db.transaction(digests.send_now, list_site(), "steering", start + 4 * DAY) == 0
        db.transaction(lambda s: archive_post(s, service.find(s, "steering"), "Late", start))
        assert db.transaction(digests.send_now, list_site(), "steering", start + 4 * DAY) == 1

        def stored(session: Session) -> tuple[int, list[str], int]:
            outgoing = session.scalars(select(Outgoing).where(Outgoing.kind == "digest")).all()
            rows = session.execute(select(Delivery.recipient, Delivery.member_id).where(
                Delivery.outgoing_id.in_([o.id for o in outgoing]))).all()
            return len(outgoing), sorted(r[0] for r in rows), sum(1 for r in rows if r[1])
        count, recipients, with_member = db.query(stored)
    finally:
        db.close()
    assert count == 2
    assert recipients == sorted(people[:600] * 2)
    assert with_member == 1200, "each row names its member, for VERP"


def test_a_list_nobody_reads_as_a_digest_moves_on_without_sending(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    people = members(2)
    make_steering(config, people, {})
    db = Database(sqlite_url)
    start = time.time()
    job = digests.job(list_site())
    try:
        ids = db.transaction(lambda s: [archive_post(s, service.find(s, "steering"),
                                                     f"Old {n}", start) for n in range(2)])
        assert db.transaction(job.run, start) == 0
        assert db.transaction(job.run, start + 1.01 * DAY) == 0
        state = db.query(lambda s: s.get(DigestState, service.find(s, "steering").id))
        assert (state.last_archived_id, state.issue) == (ids[-1], 0)

        db.transaction(lambda s: s.execute(update(Member).where(Member.address == people[1])
                                           .values(delivery="digest")))
        db.transaction(lambda s: archive_post(s, service.find(s, "steering"), "New",
                                              start + 2 * DAY))
        assert db.transaction(job.run, start + 3.01 * DAY) == 1
        data = db.query(lambda s: s.scalars(select(Outgoing.data)).one())
    finally:
        db.close()
    message = BytesParser(policy=default_policy).parsebytes(data.replace(b"\r\n", b"\n"))
    assert message["Subject"] == "Steering Committee Digest, Vol 1, Issue 1"
    digest = list(message.iter_parts())[1]
    assert [str(part.get_content()["Subject"]) for part in digest.iter_parts()] == ["New"]


def test_the_plain_text_digest_follows_rfc_1153(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_steering(config, members(1), {}, language="en")
    separator = "-" * 30
    plain = (b"Message-ID: <1@party.test>\r\nReceived: from mx by relay\r\n"
             b"Subject: Agenda\r\nX-Mailer: Thunderbird\r\nCc: kofi@party.test\r\n"
             b"From: Ana Silva <ana@party.test>\r\nTo: steering@lists.example.org\r\n"
             b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\n\r\n\r\nItems:\r\n"
             + separator.encode() + b"\r\n1. Budget\r\n\r\n\r\n")
    attachment = EmailMessage()
    attachment["From"], attachment["Subject"] = "kofi@party.test", "Report"
    attachment.set_content("See the report.\n")
    attachment.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf",
                              filename="report.pdf")
    html = EmailMessage()
    html["From"], html["Subject"] = "lea@party.test", "Poster"
    html.set_content("<p>Poster</p>", subtype="html")
    db = Database(sqlite_url)
    try:
        def render(session: Session) -> bytes:
            steering = service.find(session, "steering")
            last = 0
            for subject, data in (("Agenda", plain), ("Report", attachment.as_bytes()),
                                  ("Poster", html.as_bytes())):
                last = archive_post(session, steering, subject, time.time(), data=data)
            issue = digests.Issue(steering, 2, 3, time.time(),
                                  digests.entries(session, steering.id, 0, last))
            return digests.rfc1153(list_site(), issue)
        data = db.query(render)
    finally:
        db.close()

    message = BytesParser(policy=default_policy).parsebytes(data.replace(b"\r\n", b"\n"))
    assert message["Subject"] == "Steering Committee Digest, Vol 2, Issue 3"
    assert message["List-Id"] == '"Steering Committee" <steering.lists.example.org>'
    assert message.get_content_type() == "text/plain"
    preamble, rest = message.get_content().split("\n" + "-" * 70 + "\n\n", 1)
    assert "   1. Agenda (Ana Silva)\n   2. Report (kofi@party.test)\n" in preamble
    chunks = rest.split(f"\n\n{separator}\n\n")
    assert len(chunks) == 4, "three enclosed messages, then the trailer"
    first = Parser().parsestr(chunks[0])
    assert first.keys() == ["Date", "From", "To", "Cc", "Subject", "Message-ID"]
    assert first.get_payload().split("\n") == ["Items:", " " + separator[1:], "1. Budget"]
    second, third = Parser().parsestr(chunks[1]), Parser().parsestr(chunks[2])
    assert second.get_payload().startswith("See the report.\n\n[A part of this message")
    assert third.get_payload().startswith("[A part of this message that is not plain text")
    trailer = chunks[3].rstrip("\n").split("\n")
    assert trailer[-2:] == ["End of Steering Committee Digest, Vol 2, Issue 3", "*" * 48]


async def test_a_member_who_asks_for_plain_digests_gets_rfc_1153(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    clock = Clock()
    people = members(3)
    plain, rich = people[1], people[2]
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_steering(config, people, {rich: "digest"})
    async with running(config, clock=clock) as daemon:
        request = f"steering-request@{DOMAIN}"
        await send(daemon.ports["smtp"], plain, [request],
                   mail(plain, request, subject="set digest plain"))
        await sink.wait_for(1)
        answer = sink.received.pop()
        assert 'Done: your delivery is now "digest plain".' in answer.message.get_content()
        await post(daemon, sink, people[0], "Agenda", "Item one.\n", copies=1)
        clock.advance(days=2)
        await digests_arrive(daemon, sink, 3)
    by_rcpt = {d.rcpt: d for d in sink.received[1:]}
    assert by_rcpt[rich].message.get_content_type() == "multipart/mixed"
    text = by_rcpt[plain].message
    assert text.get_content_type() == "text/plain"
    body = text.get_content()
    assert "-" * 70 in body and "Subject: [steering] Agenda" in body
