"""Answers to invitations: what mail to an invitee's rsvp+TOKEN@ address does (issue 5).

Replies as Outlook, Google, Apple and Thunderbird really send them are addressed to a
meeting of ours and processed: our own hand-written fixtures (tests/data/replies/, one per
client quirk), our own message in the shape of each real capture (tests/data/interop/), and,
when they are beside the checkout, the captures themselves in ../shared/interop-samples/
(read from there, never copied), rewritten only where they must name our meeting (UID), our
invitee and our rsvp address. The conversations run over SMTP against a daemon on port 0;
the rules, the stale and spoofed cases and hostile input are also checked in one
transaction each, which is where the daemon's router would call them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from zoneinfo import ZoneInfo

import aiosmtplib
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.addresses import Role, Route
from mailer.db import Database
from mailer.inbound import Inbound, parse
from mailer.models import Delivery, Outgoing
from meetings import invitations, itip
from meetings.meeting_site import MeetingSite
from meetings.models import (
    Invitation,
    Meeting,
    RsvpEvent,
)
from meetings.rsvp import FORWARD_HEADER, Reading, RsvpHandler, RsvpOutcome, process, read
from tests.helpers import (
    ATTENDEE_TOKENS,
    COORDINATOR,
    DATA,
    DOMAIN,
    FIXTURE_INVITEE,
    FIXTURE_RSVP,
    FIXTURE_UID,
    REPLIES,
    ZONE,
    Clock,
    Delivered,
    Sink,
    Standing,
    World,
    addressed,
    bare_line_feeds,
    cli,
    cli_error,
    config_file,
    crlf,
    fixture,
    mail,
    make_config,
    meeting_site,
    organise,
    quiet,
    run,
    running,
    send,
    standing,
)

INTEROP = Path(__file__).resolve().parent.parent.parent / "shared" / "interop-samples"
APPLE_UID = "1E71F9C8-AEDA-48EB-98D0-76E898F6BB5C"
APPLE_ATTENDEE = "xyzzy@example.com"


# -- the organisation (tests/helpers.py), in the test's database (conftest's `db`) -------

@pytest.fixture
def world(db: Database) -> World:
    return db.transaction(organise)


def events(db: Database) -> list[tuple[str, str, str]]:
    return db.query(lambda s: [(e.kind, e.partstat, e.detail) for e in s.scalars(
        select(RsvpEvent).order_by(RsvpEvent.id))])


def outgoing(db: Database) -> list[tuple[str, EmailMessage]]:
    """Every queued message: (recipient, parsed message)."""
    def read(session: Session) -> list[tuple[str, EmailMessage]]:
        rows = session.execute(select(Delivery.recipient, Outgoing.data)
                               .join(Outgoing, Delivery.outgoing_id == Outgoing.id)
                               .order_by(Delivery.id))
        return [(recipient, parse(data)) for recipient, data in rows]
    return db.query(read)


# -- messages: fixtures and samples, addressed to our meeting --------------------------

@dataclass(frozen=True)
class Samples:
    """Messages in the shape of each real client, from one folder, and the names in them
    that stand for our meeting, our invitee and our rsvp address."""

    folder: Path
    uid: str
    invitees: tuple[str, ...]
    rsvp: str = ""

    def message(self, name: str, world: World, invitee: str = "ana@party.test",
                **more: str) -> bytes:
        """The message `name`, addressed to our meeting and from `invitee`."""
        changes = {**more, self.uid: world.uid}
        if self.rsvp:
            changes[self.rsvp] = world.rsvp(invitee)
        changes.update((stand_in, invitee) for stand_in in self.invitees)
        return addressed(self.raw(name), changes)

    def raw(self, name: str) -> bytes:
        """The file `name` as it is, with CRLF line ends."""
        return crlf((self.folder / name).read_bytes())


# The shapes the shared captures show, one file each; tests/data/interop/ holds our own
# message of each shape under the same name (its README says which quirk each keeps).
SHAPES = sorted([
    "apple-ical-reply-accepted.eml", "apple-ical-reply-missing-attendee.eml",
    "apple-ical-reply-missing-organizer.eml", "apple-ical-reply-no-ics.eml",
    "cancel-recurring-series.eml", "dsn-bounce-with-ics.eml",
    "exchange-cdo-request-malformed.ics", "exchange2010-request-windows-tzid.ics",
    "google-calendar-request.eml", "google-recurring-with-overrides.ics",
    "outlook-exchange2010-request.eml", "outlook-teams-request.eml",
    "request-single-occurrence-override.eml", "zimbra-recurring-with-instance-override.ics"])
OWN_SAMPLES = Samples(DATA / "interop", FIXTURE_UID, (FIXTURE_INVITEE,), FIXTURE_RSVP)


def interop_folder() -> Path:
    if not INTEROP.is_dir():
        # Never an error, in CI either: the suite is complete without files outside the
        # repository, since every shape also exists as our own fixture.
        pytest.skip(f"the shared interop samples are not beside the checkout ({INTEROP}); "
                    "the same test ran on our own message of that shape (tests/data/interop/)")
    return INTEROP


@pytest.fixture(params=["own", "shared"])
def samples(request: pytest.FixtureRequest) -> Samples:
    """Each client shape twice: our own message, and the real capture when it is there."""
    if request.param == "own":
        return OWN_SAMPLES
    return Samples(interop_folder(), APPLE_UID, (APPLE_ATTENDEE, "nonexistant@example.com"))


def wrapped(calendar: bytes, world: World, sender: str = "ana@party.test",
            method: str = "") -> bytes:
    """A calendar as the only part of a message from `sender` (Outlook's .ics export)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = world.rsvp(sender) if sender in world.invitations else DOMAIN
    message["Subject"] = "Calendar"
    message["Date"] = "Mon, 1 Mar 2027 10:00:00 +0000"
    params = {"method": method} if method else {}
    message.set_content(calendar, maintype="text", subtype="calendar", params=params)
    return message.as_bytes(policy=default_policy.clone(linesep="\r\n"))


def reply_calendar(world: World, attendee_lines: str, *, method: str = "REPLY",
                   sequence: int | None = 0, stamp: str | None = "20250301T100000Z",
                   uid: str | None = None, extra: str = "") -> bytes:
    """A minimal iTIP object with the given ATTENDEE lines (for the rule tests)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", f"METHOD:{method}",
             "BEGIN:VEVENT", f"UID:{uid if uid is not None else world.uid}"]
    lines += [f"SEQUENCE:{sequence}"] if sequence is not None else []
    lines += [f"DTSTAMP:{stamp}"] if stamp is not None else []
    lines += attendee_lines.strip().splitlines() + extra.strip().splitlines()
    lines += ["END:VEVENT", "END:VCALENDAR", ""]
    return "\r\n".join(lines).encode()


def answer_of(world: World, partstat: str, address: str = "ana@party.test", *,
              sender: str | None = None, sequence: int = 0,
              stamp: str = "20250301T100000Z", uid: str | None = None,
              extra: str = "") -> bytes:
    """A reply mail from `sender` (default: the attendee) with one ATTENDEE line."""
    attendee = f"ATTENDEE;PARTSTAT={partstat};CN=Someone:mailto:{address}"
    calendar = reply_calendar(world, attendee, sequence=sequence, stamp=stamp, uid=uid,
                              extra=extra)
    return wrapped(calendar, world, sender or address, method="REPLY")


def deliver(db: Database, world: World, address: str, raw: bytes, *,
            mail_from: str = "ana@party.test", site: MeetingSite | None = None) -> RsvpOutcome:
    """What the router does with one message to `address`'s rsvp address, in one transaction."""
    rcpt = world.rsvp(address)
    token = rcpt.split("+", 1)[1].split("@", 1)[0]
    inbound = Inbound(1, 1, Route(Role.RSVP, None, token), rcpt, mail_from, raw,
                      policy=RsvpHandler.options.policy)     # as the router leaves it

    def run(session: Session) -> RsvpOutcome:
        invitation = session.get(Invitation, world.invitations[address])
        assert invitation is not None
        return process(session, site or meeting_site(), invitation, inbound)
    return db.transaction(run)


def forwards(db: Database) -> list[str]:
    """The reasons of the messages passed on to the coordinator, in order."""
    return [str(message[FORWARD_HEADER]) for recipient, message in outgoing(db)
            if recipient == COORDINATOR and message[FORWARD_HEADER] is not None]


# -- replies as each client sends them -------------------------------------------------

CLIENT_REPLIES = [
    ("outlook-reply-accepted.eml", "ACCEPTED", "I will arrive the evening before."),
    ("google-reply-declined.eml", "DECLINED", "Our party congress is that weekend, sorry."),
    ("thunderbird-reply-tentative.eml", "TENTATIVE", ""),
    # The calendar part starts with a UTF-8 byte-order mark, as .NET libraries write it.
    ("utf8-bom-reply-accepted.eml", "ACCEPTED", "Avec plaisir."),
]


@pytest.mark.parametrize(("name", "partstat", "comment"), CLIENT_REPLIES)
def test_a_client_reply_sets_partstat_and_comment_once(db: Database, world: World, name: str,
                                                      partstat: str, comment: str) -> None:
    raw = fixture(name, world)
    assert deliver(db, world, "ana@party.test", raw) == RsvpOutcome("applied", partstat)
    assert standing(db, world, "ana@party.test") == Standing(partstat, comment, "active")
    assert events(db) == [("reply", partstat, comment)]
    assert outgoing(db) == [], "an applied reply sends nothing"
    # Delivered twice (a retry, a second copy): nothing changes the second time.
    assert deliver(db, world, "ana@party.test", raw).action == "unchanged"
    assert len(events(db)) == 1
    assert standing(db, world, "kofi@party.test").partstat == "NEEDS-ACTION"


def test_an_apple_reply_without_method_parameter_is_applied(db: Database, world: World,
                                                           samples: Samples) -> None:
    raw = samples.message("apple-ical-reply-accepted.eml", world, "yann@party.test")
    outcome = deliver(db, world, "yann@party.test", raw, mail_from="yann@party.test")
    assert outcome == RsvpOutcome("applied", "ACCEPTED")
    assert standing(db, world, "yann@party.test").partstat == "ACCEPTED"
    assert forwards(db) == []


def test_an_outlook_reply_reads_without_organizer_dtstamp_and_with_a_windows_tzid(
        world: World) -> None:
    found = itip.read(parse(fixture("outlook-reply-accepted.eml", world)))
    [reply] = found.messages
    assert (reply.method, reply.organizer, reply.uid) == ("REPLY", "", world.uid)
    assert reply.stamp == datetime(2027, 3, 1, 10, 15, 22, tzinfo=ZONE).replace(
        tzinfo=ZoneInfo("UTC")).timestamp(), "no DTSTAMP: the Date: header"
    counter = itip.read(parse(fixture("outlook-counter.eml", world))).messages[0]
    assert counter.start == datetime(2027, 3, 15, 9, 0, tzinfo=ZONE)


def test_google_sends_the_calendar_twice_and_it_counts_once(world: World) -> None:
    found = itip.read(parse(fixture("google-reply-declined.eml", world)))
    assert len(found.messages) == 1
    assert found.messages[0].attendees[0].comment == "Our party congress is that weekend, sorry."


# -- who may answer ----------------------------------------------------------------------

def test_a_spoofed_reply_naming_another_attendee_changes_nothing_and_goes_to_coordination(
        db: Database, world: World) -> None:
    raw = fixture("spoofed-reply-other-attendee.eml", world)
    outcome = deliver(db, world, "ana@party.test", raw, mail_from="mallory@elsewhere.test")
    assert outcome.action == "forward"
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert standing(db, world, "kofi@party.test").partstat == "NEEDS-ACTION"
    assert forwards(db) == ["the REPLY names kofi@party.test, not the invitee ana@party.test"]
    [(_, message)] = outgoing(db)
    assert message["Message-ID"] == "<spoof-31337@elsewhere.test>", "passed on as it came"
    assert events(db) == []


def test_a_reply_from_someone_other_than_the_attendee_changes_nothing(
        db: Database, world: World) -> None:
    raw = fixture("thunderbird-reply-tentative.eml", world,
                  **{"From: Ana Silva <ana@party.test>": "From: Mallory <mallory@else.test>"})
    assert deliver(db, world, "ana@party.test", raw).action == "forward"
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert forwards(db) == ["sent by mallory@else.test, not the invitee"]


def test_a_sent_by_the_reply_names_itself_proves_nothing(db: Database, world: World) -> None:
    # A secretary's reply goes to a person: the SENT-BY is written by whoever sends it.
    line = ('ATTENDEE;PARTSTAT=ACCEPTED;SENT-BY="mailto:office@party.test":'
            'mailto:ana@party.test')
    raw = wrapped(reply_calendar(world, line), world, "office@party.test", "REPLY")
    assert deliver(db, world, "ana@party.test", raw).action == "forward"
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert forwards(db) == ["sent by office@party.test, not the invitee"]
    raw = fixture("spoofed-sent-by.eml", world)
    assert deliver(db, world, "ana@party.test", raw,
                   mail_from="mallory@evil.test").action == "forward"
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"


def test_a_reply_without_a_readable_sender_changes_nothing(db: Database,
                                                          world: World) -> None:
    raw = fixture("null-sender-broken-from.eml", world)
    outcome = deliver(db, world, "ana@party.test", raw, mail_from="")
    assert outcome.action == "dropped" and "sent by no one" in outcome.reason
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert events(db) == [] and outgoing(db) == []


def test_a_reply_with_two_attendees_that_is_no_delegation_changes_nothing(
        db: Database, world: World) -> None:
    lines = ("ATTENDEE;PARTSTAT=ACCEPTED:mailto:ana@party.test\n"
             "ATTENDEE;PARTSTAT=ACCEPTED:mailto:kofi@party.test")
    raw = wrapped(reply_calendar(world, lines), world, "ana@party.test", "REPLY")
    assert deliver(db, world, "ana@party.test", raw).action == "forward"
    assert forwards(db) == ["the REPLY also names kofi@party.test"]
    assert standing(db, world, "kofi@party.test").partstat == "NEEDS-ACTION"


def test_two_attendee_lines_for_the_invitee_with_different_answers_change_nothing(
        db: Database, world: World) -> None:
    lines = ("ATTENDEE;PARTSTAT=ACCEPTED:mailto:ana@party.test\n"
             "ATTENDEE;PARTSTAT=DECLINED:mailto:ana@party.test")
    raw = wrapped(reply_calendar(world, lines), world, "ana@party.test", "REPLY")
    why = ("the REPLY has 2 ATTENDEE lines for ana@party.test with different answers "
           "(ACCEPTED, DECLINED)")
    assert deliver(db, world, "ana@party.test", raw) == RsvpOutcome("forward", why)
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert forwards(db) == [why] and events(db) == []
    # The same answer written twice is still one answer.
    twice = wrapped(reply_calendar(world, lines.replace("DECLINED", "ACCEPTED")), world,
                    "ana@party.test", "REPLY")
    assert deliver(db, world, "ana@party.test", twice) == RsvpOutcome("applied", "ACCEPTED")


def test_only_partstat_and_the_note_are_taken_from_a_reply(db: Database, world: World) -> None:
    extra = "DTSTART:20300101T000000Z\nLOCATION:Elsewhere\nSTATUS:CANCELLED\nSUMMARY:Hijack"
    raw = answer_of(world, "ACCEPTED", extra=extra)
    assert deliver(db, world, "ana@party.test", raw).action == "applied"

    def meeting(session: Session) -> tuple[str, str, int]:
        row = session.get(Meeting, world.meeting_id)
        assert row is not None
        return row.location, row.status, row.sequence
    assert db.query(meeting) == ("KICC, Nairobi", "CONFIRMED", 0)


def test_a_reply_about_one_occurrence_matches_nothing_of_ours(db: Database,
                                                              world: World) -> None:
    raw = answer_of(world, "DECLINED", extra="RECURRENCE-ID:20270314T060000Z")
    outcome = deliver(db, world, "ana@party.test", raw)
    assert outcome == RsvpOutcome("forward", "REPLY about one occurrence (20270314T060000Z) of a "
                                         "meeting that does not repeat")


def test_a_reply_about_another_event_is_passed_on(db: Database, world: World) -> None:
    raw = answer_of(world, "ACCEPTED", uid="someone-elses-meeting@example.com")
    assert deliver(db, world, "ana@party.test", raw).action == "forward"
    assert forwards(db) == ["REPLY about another event (UID 'someone-elses-meeting@example.com')"]


# -- stale replies, cancelled meetings ----------------------------------------------------

def set_meeting(db: Database, world: World, **values: object) -> None:
    def change(session: Session) -> None:
        meeting = session.get(Meeting, world.meeting_id)
        for key, value in values.items():
            setattr(meeting, key, value)
    db.transaction(change)


def test_a_reply_older_than_the_one_applied_changes_nothing(db: Database,
                                                            world: World) -> None:
    newer = answer_of(world, "ACCEPTED", stamp="20250302T100000Z")
    older = answer_of(world, "DECLINED", stamp="20250301T100000Z")
    assert deliver(db, world, "ana@party.test", newer).action == "applied"
    outcome = deliver(db, world, "ana@party.test", older)
    assert outcome == RsvpOutcome("unchanged", "it is older than the reply already applied")
    assert standing(db, world, "ana@party.test").partstat == "ACCEPTED"
    # A later change of mind is applied.
    later = answer_of(world, "DECLINED", stamp="20250303T100000Z")
    assert deliver(db, world, "ana@party.test", later).action == "applied"
    assert [e[1] for e in events(db)] == ["ACCEPTED", "DECLINED"]


def test_a_reply_to_the_time_before_a_reschedule_changes_nothing(db: Database,
                                                                world: World) -> None:
    set_meeting(db, world, sequence=1)
    db.transaction(lambda s: setattr(s.get(Invitation, world.invitations["ana@party.test"]),
                                     "reset_sequence", 1))
    old_time = answer_of(world, "ACCEPTED", sequence=0)
    outcome = deliver(db, world, "ana@party.test", old_time)
    assert outcome == RsvpOutcome("unchanged", "it answers SEQUENCE 0, before the change at "
                                           "SEQUENCE 1")
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert deliver(db, world, "ana@party.test",
                   answer_of(world, "ACCEPTED", sequence=1)).action == "applied"


def test_a_sequence_from_the_future_cannot_block_later_replies(db: Database,
                                                               world: World) -> None:
    odd = answer_of(world, "DECLINED", sequence=99, stamp="20250301T100000Z")
    assert deliver(db, world, "ana@party.test", odd).action == "applied"
    fine = answer_of(world, "ACCEPTED", sequence=0, stamp="20250302T100000Z")
    assert deliver(db, world, "ana@party.test", fine).action == "applied"
    assert standing(db, world, "ana@party.test").partstat == "ACCEPTED"


def test_without_sequence_outlooks_cdo_sequence_is_read(world: World) -> None:
    raw = reply_calendar(world, "ATTENDEE;PARTSTAT=ACCEPTED:mailto:ana@party.test",
                         sequence=None, extra="X-MICROSOFT-CDO-APPT-SEQUENCE:3")
    assert itip.parse(raw).sequence == 3
    no_sequence = reply_calendar(world, "ATTENDEE:mailto:ana@party.test", sequence=None)
    assert itip.parse(no_sequence).sequence == 0


def test_a_reply_to_a_cancelled_meeting_changes_nothing(db: Database, world: World) -> None:
    set_meeting(db, world, status="CANCELLED", sequence=1)
    outcome = deliver(db, world, "ana@party.test", answer_of(world, "ACCEPTED", sequence=1))
    assert outcome == RsvpOutcome("unchanged", "the meeting is cancelled")
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert events(db) == [] and outgoing(db) == []


# -- mail that is not an answer ------------------------------------------------------------

NOT_ANSWERS = [
    ("apple-ical-reply-no-ics.eml", "no calendar data"),
    ("apple-ical-reply-missing-attendee.eml",
     "the REPLY names no attendee, not the invitee ana@party.test"),
    # CalendarServer's capture lacks the ATTENDEE as well as the ORGANIZER: a missing
    # ORGANIZER alone is fine (outlook-reply-accepted.eml has none), no PARTSTAT is not.
    ("apple-ical-reply-missing-organizer.eml",
     "the REPLY names no attendee, not the invitee ana@party.test"),
    ("outlook-exchange2010-request.eml", "calendar data that is not an answer (REQUEST)"),
    ("outlook-teams-request.eml", "calendar data that is not an answer (REQUEST)"),
    ("google-calendar-request.eml", "calendar data that is not an answer (REQUEST)"),
    ("request-single-occurrence-override.eml",
     "calendar data that is not an answer (REQUEST)"),
    ("cancel-recurring-series.eml", "calendar data that is not an answer (CANCEL)"),
]


@pytest.mark.parametrize(("name", "reason"), NOT_ANSWERS)
def test_interop_samples_that_are_no_usable_answer_go_to_coordination(
        db: Database, world: World, samples: Samples, name: str, reason: str) -> None:
    raw = samples.message(name, world, "ana@party.test")
    outcome = deliver(db, world, "ana@party.test", raw)
    assert outcome == RsvpOutcome("forward", reason)
    assert forwards(db) == [reason]
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert events(db) == []


ICS_SAMPLES = [
    ("exchange2010-request-windows-tzid.ics", "calendar data that is not an answer (REQUEST)"),
    ("exchange-cdo-request-malformed.ics", "calendar data that is not an answer (REQUEST)"),
    ("google-recurring-with-overrides.ics", "calendar data that is not an answer (no METHOD)"),
    ("zimbra-recurring-with-instance-override.ics",
     "calendar data that is not an answer (no METHOD)"),
]


@pytest.mark.parametrize(("name", "reason"), ICS_SAMPLES)
def test_interop_calendars_attached_to_a_mail_are_passed_on(
        db: Database, world: World, samples: Samples, name: str, reason: str) -> None:
    calendar = samples.raw(name)
    outcome = deliver(db, world, "ana@party.test", wrapped(calendar, world))
    assert outcome == RsvpOutcome("forward", reason)


def exchange_reply(samples: Samples, world: World, attendee: str, **more: str) -> bytes:
    """The Exchange 2010 sample (Windows TZID) turned into that attendee's REPLY."""
    text = samples.raw("exchange2010-request-windows-tzid.ics")
    text = text.replace(b"METHOD:REQUEST", b"METHOD:REPLY").replace(
        b"END:VEVENT", f"ATTENDEE;PARTSTAT=TENTATIVE:mailto:{attendee}\r\nEND:VEVENT".encode())
    # Exchange's own UID (one line of hex in both files) becomes our meeting's.
    text, found = re.subn(rb"^UID:[0-9A-F]{64,}\r$", b"UID:" + world.uid.encode() + b"\r", text,
                          flags=re.MULTILINE)
    assert found == 1
    for old, new in more.items():
        text = text.replace(old.encode(), new.encode())
    return text


def test_the_exchange_sample_as_a_reply_is_applied_despite_its_windows_tzid(
        db: Database, world: World, samples: Samples) -> None:
    raw = wrapped(exchange_reply(samples, world, "ana@party.test"), world)
    assert deliver(db, world, "ana@party.test", raw) == RsvpOutcome("applied", "TENTATIVE")


def test_the_malformed_cdo_sample_as_a_reply_has_no_uid_and_is_passed_on(
        db: Database, world: World, samples: Samples) -> None:
    text = samples.raw("exchange-cdo-request-malformed.ics")
    text = text.replace(b"METHOD:REQUEST", b"METHOD:REPLY").replace(
        b"END:VEVENT", b"ATTENDEE;PARTSTAT=ACCEPTED:mailto:ana@party.test\r\nEND:VEVENT")
    outcome = deliver(db, world, "ana@party.test", wrapped(text, world))
    assert outcome == RsvpOutcome("forward", "REPLY about another event (UID '')")


def test_an_outlook_reply_in_tnef_only_goes_to_coordination(db: Database,
                                                            world: World) -> None:
    outcome = deliver(db, world, "ana@party.test", fixture("outlook-tnef-reply.eml", world))
    assert outcome == RsvpOutcome("forward", "an Outlook TNEF attachment (winmail.dat) without "
                                         "text/calendar")


def test_an_out_of_office_reply_is_dropped(db: Database, world: World) -> None:
    outcome = deliver(db, world, "ana@party.test", fixture("out-of-office.eml", world))
    assert outcome == RsvpOutcome("dropped", "automatic mail: Auto-Submitted: auto-replied")
    assert outgoing(db) == [] and events(db) == []


def test_an_automatic_reply_with_a_calendar_reply_is_applied_but_never_passed_on(
        db: Database, world: World) -> None:
    raw = answer_of(world, "ACCEPTED").replace(b"Subject:", b"Auto-Submitted: auto-generated"
                                                            b"\r\nSubject:", 1)
    assert deliver(db, world, "ana@party.test", raw).action == "applied"
    spoof = answer_of(world, "ACCEPTED", "kofi@party.test", sender="ana@party.test").replace(
        b"Subject:", b"Auto-Submitted: auto-generated\r\nSubject:", 1)
    assert deliver(db, world, "ana@party.test", spoof).action == "dropped"
    assert outgoing(db) == []


def test_a_dsn_bounce_of_the_invitation_is_kept_beside_the_answer(
        db: Database, world: World, samples: Samples) -> None:
    raw = samples.message("dsn-bounce-with-ics.eml", world, "kofi@party.test")
    outcome = deliver(db, world, "kofi@party.test", raw, mail_from="")
    assert outcome.action == "bounced" and outcome.reason.startswith("5.0.0 on ")
    assert standing(db, world, "kofi@party.test") == Standing("NEEDS-ACTION", "", "active",
                                                              problem=outcome.reason)
    assert events(db) == [("bounce", "NEEDS-ACTION", outcome.reason)]
    assert deliver(db, world, "kofi@party.test", raw, mail_from="").action == "unchanged"
    assert len(events(db)) == 1 and outgoing(db) == []
    # Kofi answers after all: his address works, and the problem is cleared.
    reply = answer_of(world, "ACCEPTED", "kofi@party.test")
    assert deliver(db, world, "kofi@party.test", reply,
                   mail_from="kofi@party.test") == RsvpOutcome("applied", "ACCEPTED")
    assert standing(db, world, "kofi@party.test") == Standing("ACCEPTED", "", "active")


def cancel_meeting(db: Database, world: World, site: MeetingSite | None = None) -> None:
    """`alliance meeting cancel`, in one transaction."""
    def cancel(session: Session) -> None:
        meeting = session.get(Meeting, world.meeting_id)
        assert meeting is not None
        invitations.cancel(session, site or meeting_site(), meeting)
    db.transaction(cancel)


def test_a_refused_message_keeps_the_answer_and_later_mail_still_goes(
        db: Database, world: World, tmp_path: Path, sqlite_url: str) -> None:
    assert deliver(db, world, "ana@party.test", answer_of(world, "ACCEPTED")).action == \
        "applied"
    report = fixture("dsn-content-policy-5.7.1.eml", world)
    outcome = deliver(db, world, "ana@party.test", report, mail_from="")
    assert outcome.action == "bounced"
    assert outcome.reason.endswith(": 550 5.7.1 Message rejected: attachment type not "
                                   "allowed (invite.ics) by content policy")
    assert standing(db, world, "ana@party.test") == Standing("ACCEPTED", "", "active",
                                                             problem=outcome.reason)
    assert deliver(db, world, "ana@party.test", report, mail_from="").action == "unchanged"
    path = config_file(make_config(tmp_path, sqlite_url), tmp_path)
    rows = json.loads(cli(path, "meeting", "attendance", str(world.meeting_id), "--json"))
    [ana] = [row for row in rows if row["address"] == "ana@party.test"]
    assert (ana["partstat"], ana["answered"]) == ("ACCEPTED", "by mail")
    assert ana["delivery"] == f"a message failed: {outcome.reason}"
    cancel_meeting(db, world)
    assert sorted(r for r, m in outgoing(db)) == sorted(world.invitations), "Ana too"


def test_only_repeated_failures_of_the_address_stop_mail(db: Database, world: World) -> None:
    clock = Clock()
    site = meeting_site(clock=clock)
    policy = fixture("dsn-content-policy-5.7.1.eml", world)
    unknown = fixture("dsn-user-unknown-5.1.1.eml", world)
    for _ in range(4):      # a content filter, every day: the address is fine
        assert deliver(db, world, "ana@party.test", policy, mail_from="", site=site).action \
            == "bounced"
        clock.advance(days=1)
    assert standing(db, world, "ana@party.test").state == "active"
    seen = []
    for _ in range(3):      # no such user, on three days (twice the first: one a day)
        seen.append(deliver(db, world, "ana@party.test", unknown, mail_from="",
                            site=site).action)
        if len(seen) == 1:
            assert deliver(db, world, "ana@party.test", unknown, mail_from="",
                           site=site).action == "unchanged"
        clock.advance(days=1)
    assert seen == ["bounced", "bounced", "undeliverable"]
    assert standing(db, world, "ana@party.test").state == "undeliverable"
    cancel_meeting(db, world, site)
    assert "ana@party.test" not in [r for r, m in outgoing(db)], "no more mail"
    assert sorted(r for r, m in outgoing(db)) == ["kofi@party.test", "yann@party.test",
                                                  "zara@party.test"]


def test_a_reply_after_the_address_failed_makes_it_reachable_again(db: Database,
                                                                   world: World) -> None:
    clock = Clock()
    site = meeting_site(clock=clock)
    unknown = fixture("dsn-user-unknown-5.1.1.eml", world)
    for _ in range(3):
        deliver(db, world, "ana@party.test", unknown, mail_from="", site=site)
        clock.advance(days=1)
    assert standing(db, world, "ana@party.test").state == "undeliverable"
    assert deliver(db, world, "ana@party.test", answer_of(world, "TENTATIVE"),
                   site=site).action == "applied"
    assert standing(db, world, "ana@party.test") == Standing("TENTATIVE", "", "active")
    assert deliver(db, world, "ana@party.test", unknown, mail_from="",
                   site=site).action == "bounced", "the count starts again"


# -- hostile input -------------------------------------------------------------------------

def many_events(world: World) -> bytes:
    event = ("BEGIN:VEVENT\r\nUID:{uid}\r\nRECURRENCE-ID:2027{n:04d}T090000Z\r\n"
             "ATTENDEE;PARTSTAT=ACCEPTED:mailto:ana@party.test\r\nEND:VEVENT\r\n")
    body = "".join(event.format(uid=world.uid, n=n) for n in range(1, 200))
    return f"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\n{body}END:VCALENDAR\r\n".encode()


def nested(depth: int) -> bytes:
    head = b"From: ana@party.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    body = b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nEND:VCALENDAR\r\n"
    data = b"Content-Type: text/calendar\r\n\r\n" + body
    for n in range(depth):
        data = (f"Content-Type: multipart/mixed; boundary=b{n}\r\n\r\n--b{n}\r\n".encode()
                + data + f"\r\n--b{n}--\r\n".encode())
    return head + data


def many_parts(count: int) -> bytes:
    parts = b"".join(b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n" for _ in range(count))
    return (b"From: ana@party.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + parts + b"--x--\r\n")


HOSTILE = {
    "garbage": lambda w: wrapped(b"\x00\xff\xfe garbage \x80\r\n" * 50, w, method="REPLY"),
    "no vcalendar": lambda w: wrapped(b"BEGIN:VEVENT\r\nUID:x\r\nEND:VEVENT\r\n", w),
    "unbalanced": lambda w: wrapped(b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nEND:VCALENDAR\r\n", w),
    "huge": lambda w: wrapped(b"BEGIN:VCALENDAR\r\nX-PAD:" + b"a" * 600_000
                              + b"\r\nEND:VCALENDAR\r\n", w),
    "many events": lambda w: wrapped(many_events(w), w),
    "deep nesting": lambda w: nested(40),
    "many parts": lambda w: many_parts(400),
    "broken values": lambda w: wrapped(reply_calendar(
        w, "ATTENDEE;PARTSTAT=ACC EPTED:mailto:ana@party.test", sequence=None,
        extra="SEQUENCE:lots\r\nDTSTAMP:yesterday"), w),
    "bad charset": lambda w: wrapped(b"x", w).replace(b"text/calendar",
                                                     b"text/calendar; charset=klingon"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_calendar_data_never_raises_and_goes_to_coordination(
        db: Database, world: World, name: str) -> None:
    raw = HOSTILE[name](world)
    started = time.monotonic()
    outcome = deliver(db, world, "ana@party.test", raw)
    assert outcome.action == "forward", outcome
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert len(forwards(db)) == 1
    assert time.monotonic() - started < 10, "bounded work"


def test_lowercase_method_and_mailto_are_read(db: Database, world: World) -> None:
    raw = wrapped(reply_calendar(world, "ATTENDEE;PARTSTAT=declined:MAILTO:Ana@Party.TEST",
                                 method="reply"), world)
    assert deliver(db, world, "ana@party.test", raw) == RsvpOutcome("applied", "DECLINED")


# -- COUNTER, REFRESH, substitutes ----------------------------------------------------------

def test_a_counter_is_recorded_and_summarised_for_coordination_once(db: Database,
                                                                   world: World) -> None:
    raw = fixture("outlook-counter.eml", world)
    outcome = deliver(db, world, "ana@party.test", raw)
    assert outcome.action == "counter"
    assert outcome.reason.startswith("2027-03-15 09:00 - 2027-03-15 17:00; KICC, Nairobi; "
                                     "The 14th is our party congress.")
    assert [e[0] for e in events(db)] == ["counter"]
    [(recipient, summary)] = outgoing(db)
    assert recipient == COORDINATOR
    assert summary["Subject"] == ("New time proposed: Steering Committee, Nairobi "
                                  "(by Ana Silva)")
    assert summary["Reply-To"] == "ana@party.test"
    assert summary["Auto-Submitted"] == "auto-generated"
    text = summary.get_content()
    assert "2027-03-15 09:00" in text and "Could we meet on the 15th instead?" in text
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert deliver(db, world, "ana@party.test", raw).action == "unchanged"
    assert len(outgoing(db)) == 1


def raw_outgoing(db: Database) -> list[bytes]:
    """Every queued message as it goes over the wire."""
    return db.query(lambda s: list(s.scalars(select(Outgoing.data).order_by(Outgoing.id))))


def test_a_summary_in_base64_ends_its_lines_in_crlf(db: Database, world: World) -> None:
    # A meeting named in Arabic makes the summary's text base64 (RFC 2046 §4.1.1: CRLF
    # inside too).
    set_meeting(db, world, title="اجتماع لجنة التوجيه في نيروبي لمناقشة الميزانية والحملات "
                                 "المشتركة بين الأحزاب الأعضاء في التحالف التقدمي")
    note = "نقترح الخامس عشر بدلاً من ذلك، فالرابع عشر هو مؤتمر حزبنا الوطني."
    lines = "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:ana@party.test"
    calendar = reply_calendar(world, lines, method="COUNTER", extra=(
        "DTSTART:20270315T060000Z\nDTEND:20270315T140000Z\nCOMMENT:" + note))
    raw = wrapped(calendar, world, "ana@party.test", "COUNTER")
    assert deliver(db, world, "ana@party.test", raw).action == "counter"
    [summary] = raw_outgoing(db)
    assert b"Content-Transfer-Encoding: base64" in summary
    assert bare_line_feeds(summary) == []


def test_a_counter_is_judged_against_the_sequence_that_attendee_last_received(
        db: Database, world: World) -> None:
    # Kofi is uninvited: the meeting's SEQUENCE rises, but only Kofi hears of it.
    def uninvite(session: Session) -> None:
        meeting = session.get(Meeting, world.meeting_id)
        kofi = session.get(Invitation, world.invitations["kofi@party.test"])
        assert meeting is not None and kofi is not None
        invitations.withdraw(session, meeting_site(), meeting, [kofi])
    db.transaction(uninvite)
    assert deliver(db, world, "ana@party.test",
                   fixture("outlook-counter.eml", world)).action == "counter"
    [summary] = [m for r, m in outgoing(db) if r == COORDINATOR]
    assert "Could we meet on the 15th instead?" in summary.get_content()
    assert "earlier version" not in summary.get_content(), "Ana's SEQUENCE 0 is her latest"
    # Ana then has the update at SEQUENCE 1: a proposal about SEQUENCE 0 is an old one.
    db.transaction(lambda s: setattr(s.get(Invitation, world.invitations["ana@party.test"]),
                                     "sent_sequence", 1))
    older = fixture("outlook-counter.eml", world, **{"Could we meet": "Might we meet"})
    assert deliver(db, world, "ana@party.test", older).action == "counter"
    last = [m for r, m in outgoing(db) if r == COORDINATOR][-1]
    assert "made against an earlier version" in last.get_content()


def test_a_counter_to_a_sequence_we_never_sent_is_passed_on_not_recorded(
        db: Database, world: World) -> None:
    raw = fixture("outlook-counter.eml", world, **{"SEQUENCE:0": "SEQUENCE:5"})
    outcome = deliver(db, world, "ana@party.test", raw)
    assert outcome.action == "forward" and "R32" in outcome.reason
    assert events(db) == []
    assert [r for r, _ in outgoing(db)] == [COORDINATOR]


def test_a_long_counter_counts_once(db: Database, world: World) -> None:
    note = "COMMENT:" + "We could meet on the fifteenth instead. " * 80
    lines = "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:ana@party.test"
    calendar = reply_calendar(world, lines, method="COUNTER", extra=(
        "DTSTART:20270315T060000Z\nDTEND:20270315T140000Z\n" + note))
    raw = wrapped(calendar, world, "ana@party.test", "COUNTER")
    assert deliver(db, world, "ana@party.test", raw).action == "counter"
    assert deliver(db, world, "ana@party.test", raw) == \
        RsvpOutcome("unchanged", "the same proposal again")
    assert [e[0] for e in events(db)] == ["counter"]


def test_a_counter_from_someone_else_is_only_passed_on(db: Database, world: World) -> None:
    raw = fixture("outlook-counter.eml", world, **{
        "From: Ana Silva <ana@party.test>": "From: Mallory <mallory@else.test>"})
    assert deliver(db, world, "ana@party.test", raw).action == "forward"
    assert events(db) == []


def test_a_refresh_sends_the_current_invitation_to_the_invitee_only(db: Database,
                                                                   world: World) -> None:
    outcome = deliver(db, world, "ana@party.test", fixture("refresh.eml", world))
    assert outcome == RsvpOutcome("refreshed", "SEQUENCE 0")
    [(recipient, message)] = outgoing(db)
    assert recipient == "ana@party.test"
    calendars = itip.read(message)
    assert [(m.method, m.uid) for m in calendars.messages] == [("REQUEST", world.uid)]
    assert calendars.messages[0].organizer == world.rsvp("ana@party.test")
    assert events(db) == [("refresh", "NEEDS-ACTION", "")], "for the daily summary"
    spoofed = fixture("refresh.eml", world, **{
        "From: Ana Silva <ana@party.test>": "From: Mallory <mallory@else.test>"})
    assert deliver(db, world, "ana@party.test", spoofed).action == "forward"
    assert [r for r, _ in outgoing(db)] == ["ana@party.test", COORDINATOR]


def substitute_request(db: Database, address: str) -> itip.ItipMessage:
    [message] = [m for r, m in outgoing(db) if r == address]
    [request] = itip.read(message).messages
    return request


def test_a_delegation_reply_invites_the_substitute(db: Database, world: World) -> None:
    lines = ('ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO="mailto:maria@party.test":'
             'mailto:ana@party.test\n'
             'ATTENDEE;PARTSTAT=NEEDS-ACTION;DELEGATED-FROM="mailto:ana@party.test";'
             'CN=Maria Lopez:mailto:maria@party.test')
    raw = wrapped(reply_calendar(world, lines), world, "ana@party.test", "REPLY")
    assert deliver(db, world, "ana@party.test", raw) == RsvpOutcome("delegated",
                                                                "maria@party.test")
    assert standing(db, world, "ana@party.test") == Standing(
        "DELEGATED", "", "active", "maria@party.test")
    request = substitute_request(db, "maria@party.test")
    maria = request.attendee("maria@party.test")
    assert maria is not None and maria.delegated_from == ("ana@party.test",)
    assert events(db) == [("delegated", "DELEGATED", "maria@party.test")]
    assert deliver(db, world, "ana@party.test", raw).action == "unchanged"
    assert len(outgoing(db)) == 1


def test_an_invitee_who_sent_a_substitute_cannot_simply_take_the_seat_back(
        db: Database, world: World) -> None:
    deliver(db, world, "ana@party.test",
            command(world, "ana@party.test", "delegate maria@party.test\n"))
    outcome = deliver(db, world, "ana@party.test", answer_of(world, "ACCEPTED"))
    assert outcome == RsvpOutcome("forward", "the invitee has sent maria@party.test in their place")
    assert standing(db, world, "ana@party.test").partstat == "DELEGATED"


def test_the_substitutes_reply_naming_the_delegator_too_is_theirs(db: Database,
                                                                 world: World) -> None:
    deliver(db, world, "ana@party.test",
            command(world, "ana@party.test", "delegate maria@party.test\n"))
    world.invitations["maria@party.test"] = db.query(lambda s: s.scalar(
        select(Invitation.id).where(Invitation.address == "maria@party.test")))
    lines = ('ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM="mailto:ana@party.test":'
             'mailto:maria@party.test\n'
             'ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO="mailto:maria@party.test":'
             'mailto:ana@party.test')
    raw = wrapped(reply_calendar(world, lines), world, "maria@party.test", "REPLY")
    outcome = deliver(db, world, "maria@party.test", raw, mail_from="maria@party.test")
    assert outcome == RsvpOutcome("applied", "ACCEPTED")
    assert standing(db, world, "ana@party.test").partstat == "DELEGATED"


def command(world: World, sender: str, text: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = world.rsvp("ana@party.test")
    message["Subject"] = "Re: Invitation: Steering Committee, Nairobi"
    message.set_content(text)
    return message.as_bytes(policy=default_policy.clone(linesep="\r\n"))


def test_the_delegate_command_sends_a_substitute(db: Database, world: World) -> None:
    raw = command(world, "Ana Silva <ana@party.test>",
                  "delegate maria@party.test Maria Lopez\n\n> Invitation: ...\n")
    assert deliver(db, world, "ana@party.test", raw) == RsvpOutcome("delegated",
                                                                "maria@party.test")
    request = substitute_request(db, "maria@party.test")
    assert request.attendee("maria@party.test") is not None

    def substitute(session: Session) -> tuple[str, int | None]:
        row = session.scalar(select(Invitation).where(
            Invitation.address == "maria@party.test"))
        assert row is not None
        return row.name, row.delegated_from_id
    assert db.query(substitute) == ("Maria Lopez", world.invitations["ana@party.test"])


def test_the_delegate_command_from_someone_else_is_passed_on(db: Database,
                                                            world: World) -> None:
    raw = command(world, "mallory@else.test", "delegate mallory@else.test\n")
    assert deliver(db, world, "ana@party.test", raw).action == "forward"
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert forwards(db) == ["a delegate command from mallory@else.test, not the invitee"]


def test_a_substitute_the_charter_forbids_changes_nothing(db: Database, world: World) -> None:
    # Lena is a delegate of another party: she cannot speak for Ana's.
    raw = command(world, "ana@party.test", "delegate lena@party.test\n")
    outcome = deliver(db, world, "ana@party.test", raw)
    assert outcome.action == "forward"
    assert outcome.reason == ("the substitute cannot be invited: lena@party.test is a "
                              "delegate of African National Congress; a substitute speaks "
                              "for Frente Amplio, and no party may have a second voice")
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Invitation).where(
        Invitation.address == "lena@party.test"))) == 0
    assert events(db) == []


def test_when_the_substitute_declines_the_delegator_is_asked_again(db: Database,
                                                                  world: World) -> None:
    deliver(db, world, "ana@party.test",
            command(world, "ana@party.test", "delegate maria@party.test\n"))
    maria = db.query(lambda s: s.scalar(select(Invitation.id).where(
        Invitation.address == "maria@party.test")))
    world.invitations["maria@party.test"] = maria
    declined = answer_of(world, "DECLINED", "maria@party.test")
    assert deliver(db, world, "maria@party.test", declined,
                   mail_from="maria@party.test").action == "applied"
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
    # The seat is Ana's again: Maria is uninvited, so the party has one voice only.
    assert standing(db, world, "maria@party.test").state == "removed"
    sent = [(r, itip.read(m).messages[0]) for r, m in outgoing(db)]
    assert [(r, m.method) for r, m in sent] == [("maria@party.test", "REQUEST"),
                                                ("maria@party.test", "CANCEL"),
                                                ("ana@party.test", "REQUEST")]
    accepted = answer_of(world, "ACCEPTED", "maria@party.test", sequence=1)
    assert deliver(db, world, "maria@party.test", accepted,
                   mail_from="maria@party.test") == \
        RsvpOutcome("unchanged", "the invitee was removed from the meeting")


# -- over SMTP -------------------------------------------------------------------------------

def ours(sink: Sink) -> list[Delivered]:
    """What the RSVP handler sent: passed-on mail, summaries and invitations, not the
    scheduler's reports (the cadence warning goes to the same coordinator)."""
    return [d for d in sink.received if d.message[FORWARD_HEADER] is not None
            or d.rcpt != COORDINATOR
            or str(d.message["Subject"]).startswith("New time proposed:")]


# Replies are read in the daemon's process (the tests' default) and in a worker process
# (the shipped default), where every client's message crosses as bytes and comes back read.
IN_DAEMON_OR_WORKER = pytest.mark.parametrize("processes", [0, 1], ids=["in-daemon", "worker"])


@IN_DAEMON_OR_WORKER
async def test_replies_from_every_client_over_smtp(tmp_path: Path, database_url: str,
                                                  sink: Sink, samples: Samples,
                                                  processes: int) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port,
                         router={"processes": processes})
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        port = daemon.ports["smtp"]
        mails = [
            ("ana@party.test", fixture("outlook-reply-accepted.eml", world)),
            ("kofi@party.test", fixture("google-reply-declined.eml", world, "kofi@party.test")),
            ("yann@party.test", samples.message("apple-ical-reply-accepted.eml", world,
                                                "yann@party.test")),
            ("zara@party.test", fixture("thunderbird-reply-tentative.eml", world,
                                        "zara@party.test")),
            ("zara@party.test", fixture("out-of-office.eml", world, "zara@party.test")),
            ("ana@party.test", fixture("spoofed-reply-other-attendee.eml", world)),
            ("yann@party.test", samples.message("apple-ical-reply-no-ics.eml", world,
                                                "yann@party.test")),
        ]
        for address, data in mails:
            await send(port, address, [world.rsvp(address)], data)
        await quiet(daemon)
        states = {a: standing(daemon.db, world, a).partstat for a in world.invitations}
        assert states == {"ana@party.test": "ACCEPTED", "kofi@party.test": "DECLINED",
                          "yann@party.test": "ACCEPTED", "zara@party.test": "TENTATIVE"}
        assert standing(daemon.db, world, "kofi@party.test").comment == \
            "Our party congress is that weekend, sorry."
        passed_on = sorted((d.rcpt, str(d.message[FORWARD_HEADER])) for d in ours(sink))
        assert passed_on == [(COORDINATOR, "no calendar data"),
                             (COORDINATOR, "the REPLY names kofi@party.test, not the invitee "
                                           "ana@party.test")]

        # The Outlook reply again: nothing changes, nothing is sent.
        await send(port, "ana@party.test", [world.rsvp("ana@party.test")], mails[0][1])
        await quiet(daemon)
        assert len(ours(sink)) == 2
        assert len(events(daemon.db)) == 4


@IN_DAEMON_OR_WORKER
async def test_counter_refresh_substitute_and_bounce_over_smtp(tmp_path: Path, sqlite_url: str,
                                                              sink: Sink, samples: Samples,
                                                              processes: int) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         router={"processes": processes})
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        port = daemon.ports["smtp"]
        ana, kofi = world.rsvp("ana@party.test"), world.rsvp("kofi@party.test")
        await send(port, "ana@party.test", [ana], fixture("outlook-counter.eml", world))
        await send(port, "ana@party.test", [ana], fixture("refresh.eml", world))
        await send(port, "", [kofi], samples.message("dsn-bounce-with-ics.eml", world,
                                                     "kofi@party.test"))
        await quiet(daemon)
        by_rcpt = {d.rcpt: d for d in ours(sink)}
        assert sorted(by_rcpt) == ["ana@party.test", COORDINATOR]
        assert by_rcpt[COORDINATOR].message["Subject"].startswith("New time proposed:")
        assert by_rcpt["ana@party.test"].mail_from == ana, "a bounce would name the invitation"
        kofi_now = standing(daemon.db, world, "kofi@party.test")
        assert kofi_now.state == "active" and kofi_now.problem.startswith("5.0.0 on ")

        await send(port, "ana@party.test", [ana],
                   command(world, "ana@party.test", "delegate maria@party.test Maria Lopez"))
        await quiet(daemon)
        [invitation] = [d for d in sink.received if d.rcpt == "maria@party.test"]
        [request] = itip.read(invitation.message).messages
        maria = request.attendee("maria@party.test")
        assert request.method == "REQUEST" and maria is not None
        assert maria.delegated_from == ("ana@party.test",)
        assert standing(daemon.db, world, "ana@party.test").partstat == "DELEGATED"


async def test_after_a_refused_update_the_answer_stands_and_later_mail_still_goes(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        port, ana = daemon.ports["smtp"], world.rsvp("ana@party.test")
        await send(port, "ana@party.test", [ana], fixture("outlook-reply-accepted.eml", world))
        await send(port, "", [ana], fixture("dsn-content-policy-5.7.1.eml", world))
        await quiet(daemon)
        [row] = [r for r in json.loads(cli(path, "meeting", "attendance",
                                           str(world.meeting_id), "--json"))
                 if r["address"] == "ana@party.test"]
        assert (row["partstat"], row["comment"]) == ("ACCEPTED",
                                                     "I will arrive the evening before.")
        assert row["delivery"].startswith("a message failed: 5.7.1 on ")
        table = cli(path, "meeting", "attendance", str(world.meeting_id))
        assert "content policy" in table and "ACCEPTED" in table

        cli(path, "meeting", "update", str(world.meeting_id), "--description", "Agenda: budget")
        cli(path, "meeting", "cancel", str(world.meeting_id))
        await quiet(daemon)
        to_ana = [itip.read(d.message).messages[0] for d in sink.received
                  if d.rcpt == "ana@party.test"]
        assert [(m.method, m.attendee("ana@party.test").partstat)  # type: ignore[union-attr]
                for m in to_ana] == [("REQUEST", "ACCEPTED"), ("CANCEL", "NEEDS-ACTION")]


async def test_words_without_a_calendar_reach_the_coordinators_with_the_meeting_on_top(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        port, ana = daemon.ports["smtp"], world.rsvp("ana@party.test")
        await send(port, "ana@party.test", [ana], fixture("outlook-reply-accepted.eml", world))
        words = mail("Ana Silva <ana@party.test>", ana, "Re: Steering Committee, Nairobi",
                     "I'll come, but late: my flight lands at 11:00.\n")
        await send(port, "ana@party.test", [ana], words)
        await quiet(daemon)
        [note] = ours(sink)
        message = note.message
        assert note.rcpt == COORDINATOR and str(message[FORWARD_HEADER]) == "no calendar data"
        assert str(message["Subject"]) == ("Note from Ana Silva about Steering Committee, "
                                           "Nairobi")
        assert str(message["Reply-To"]) == "ana@party.test"
        summary, attached = message.get_payload()
        text = summary.get_content()
        assert f"(meeting {world.meeting_id})" in text and "Africa/Nairobi" in text
        assert "Invitee:         Ana Silva <ana@party.test>" in text
        assert "Current answer:  ACCEPTED (by mail, " in text
        # the meeting's time and the answer's in words, with the weekday
        assert re.search(r"Meeting: .*\), \w+day, \d{1,2} \w+ \d{4}, \d\d:\d\d–\d\d:\d\d "
                         r"\(Africa/Nairobi, East Africa Time\)", text), text
        assert re.search(r"ACCEPTED \(by mail, \w+day, \d{1,2} \w+ \d{4}, \d\d:\d\d UTC\)",
                         text), text
        assert f"alliance meeting answer {world.meeting_id} ana@party.test" in text
        assert attached.get_content_type() == "message/rfc822"
        assert words in note.data, "the words attached byte for byte"
        assert bare_line_feeds(note.data) == []

        said = cli(path, "meeting", "answer", str(world.meeting_id), "ana@party.test",
                   "Tentative", "--comment", "late, after 11:00")
        assert said == (f"meeting {world.meeting_id}: ana@party.test TENTATIVE, recorded by "
                        "hand\n")
        [row] = [r for r in json.loads(cli(path, "meeting", "attendance",
                                           str(world.meeting_id), "--json"))
                 if r["address"] == "ana@party.test"]
        assert (row["partstat"], row["answered"], row["comment"]) == \
            ("TENTATIVE", "by hand", "late, after 11:00")
        assert "by hand" in cli(path, "meeting", "attendance", str(world.meeting_id))
        assert len(ours(sink)) == 1, "recording an answer sends nothing"

        # Ana's own answer, later, replaces the one given by hand.
        await send(port, "ana@party.test", [ana], fixture("outlook-reply-accepted.eml", world))
        await quiet(daemon)
        [row] = [r for r in json.loads(cli(path, "meeting", "attendance",
                                           str(world.meeting_id), "--json"))
                 if r["address"] == "ana@party.test"]
        assert (row["partstat"], row["answered"]) == ("ACCEPTED", "by mail")


def test_an_answer_by_hand_is_refused_in_one_line_where_it_cannot_be(
        db: Database, world: World, tmp_path: Path, sqlite_url: str) -> None:
    path = config_file(make_config(tmp_path, sqlite_url), tmp_path)
    meeting = str(world.meeting_id)
    assert cli_error(path, "meeting", "answer", meeting, "nobody@party.test", "accepted") == \
        f"nobody@party.test is not invited to meeting {meeting}"
    code, output = run(path, "meeting", "answer", meeting, "ana@party.test", "maybe")
    assert code == 2 and "'maybe' is not one of" in output
    deliver(db, world, "ana@party.test",
            command(world, "ana@party.test", "delegate maria@party.test\n"))
    assert cli_error(path, "meeting", "answer", meeting, "ana@party.test", "declined") == \
        "ana@party.test has sent maria@party.test in their place; record the substitute's " \
        "answer"
    cancel_meeting(db, world)
    assert cli_error(path, "meeting", "answer", meeting, "kofi@party.test", "accepted") == \
        f"meeting {meeting} is cancelled; nothing recorded"
    assert [e[0] for e in events(db)] == ["delegated"]


async def test_an_unknown_or_forged_token_is_refused_at_rcpt(tmp_path: Path, sqlite_url: str,
                                                            sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        forged = f"rsvp+{world.invitations['ana@party.test']}-{'a' * 26}@{DOMAIN}"
        missing = f"rsvp+{ATTENDEE_TOKENS.sign(999_999)}@{DOMAIN}"
        for address in (forged, missing):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await send(daemon.ports["smtp"], "ana@party.test", [address],
                           fixture("outlook-reply-accepted.eml", world))
            assert refused.value.recipients[0].code == 550


async def test_spoofs_bounces_counters_and_a_declining_substitute_over_smtp(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        port = daemon.ports["smtp"]
        ana, kofi = world.rsvp("ana@party.test"), world.rsvp("kofi@party.test")
        await send(port, "mallory@evil.test", [ana], fixture("spoofed-sent-by.eml", world))
        await send(port, "", [ana], fixture("null-sender-broken-from.eml", world))
        await send(port, "ana@party.test", [ana], fixture(
            "outlook-counter.eml", world, **{"SEQUENCE:0": "SEQUENCE:5"}))
        await quiet(daemon)
        assert standing(daemon.db, world, "ana@party.test").partstat == "NEEDS-ACTION"
        passed_on = [(d.rcpt, str(d.message[FORWARD_HEADER])) for d in ours(sink)]
        assert sorted(passed_on) == [
            (COORDINATOR, "a COUNTER to SEQUENCE 5, a version of the meeting that does not "
                          "exist (itip.md R32)"),
            (COORDINATOR, "sent by mallory@evil.test, not the invitee")]
        assert events(daemon.db) == []

        await send(port, "", [kofi], fixture("dsn-user-unknown-5.1.1.eml", world,
                                             "kofi@party.test"))
        await quiet(daemon)
        assert standing(daemon.db, world, "kofi@party.test").problem.startswith("5.1.1 on ")
        await send(port, "kofi@party.test", [kofi],
                   answer_of(world, "ACCEPTED", "kofi@party.test"))
        await quiet(daemon)
        assert standing(daemon.db, world, "kofi@party.test") == \
            Standing("ACCEPTED", "", "active")

        sink.received.clear()
        await send(port, "ana@party.test", [ana],
                   command(world, "ana@party.test", "delegate maria@party.test Maria Lopez"))
        await quiet(daemon)
        world.invitations["maria@party.test"] = daemon.db.query(lambda s: s.scalar(
            select(Invitation.id).where(Invitation.address == "maria@party.test")))
        await send(port, "maria@party.test", [world.rsvp("maria@party.test")],
                   answer_of(world, "DECLINED", "maria@party.test"))
        await quiet(daemon)
        mail = sorted((d.rcpt, m.sequence, m.method) for d in sink.received
                      for m in itip.read(d.message).messages)
        assert mail == [("ana@party.test", 1, "REQUEST"), ("maria@party.test", 0, "REQUEST"),
                        ("maria@party.test", 1, "CANCEL")], "the seat is Ana's again"
        assert standing(daemon.db, world, "maria@party.test").state == "removed"
        assert standing(daemon.db, world, "ana@party.test").partstat == "NEEDS-ACTION"


# -- compat32, as replies are parsed, reads what the modern policy reads ------------------------

CALENDAR = (b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\nUID:m1\r\nSEQUENCE:0\r\n"
            b"DTSTAMP:20250301T100000Z\r\n"
            b"ATTENDEE;PARTSTAT=ACCEPTED:mailto:ana@party.test\r\nEND:VEVENT\r\n"
            b"END:VCALENDAR\r\n")


def crafted(headers: bytes, part_headers: bytes = b"Content-Type: text/calendar\r\n",
            body: bytes = CALENDAR) -> bytes:
    return (b"From: ana@party.test\r\nTo: rsvp+x@lists.example.org\r\nSubject: Re\r\n"
            b"Date: Sat, 01 Mar 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\n" + headers +
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n' + part_headers +
            b"\r\n" + body + b"\r\n--b--\r\n")


CRAFTED = {
    # An Outlook-style attachment named only in Content-Disposition, in an encoded word.
    "encoded filename": crafted(b"", b"Content-Type: application/octet-stream\r\n"
                                     b'Content-Disposition: attachment; filename="=?utf-8?b?'
                                     b'TcO8bGxlci5pY3M=?="\r\n'),
    "encoded Precedence": crafted(b"Precedence: =?us-ascii?q?bulk?=\r\n"),
    "encoded transfer encoding": crafted(
        b"", b"Content-Type: text/calendar\r\nContent-Transfer-Encoding: "
             b"=?us-ascii?q?base64?=\r\n", base64.encodebytes(CALENDAR).replace(b"\n", b"\r\n")),
    "8-bit X-Autoreply": crafted("X-Autoreply: jaé\r\n".encode()),
    "8-bit Auto-Submitted": crafted("Auto-Submitted: auto-replied (café)\r\n".encode()),
}


def both_ways(raw: bytes) -> tuple[Reading, Reading]:
    """What `read` makes of a message parsed as replies are, and with the modern policy."""
    inbound = Inbound(1, 1, Route(Role.RSVP, None, "x"), "rsvp+x@lists.example.org",
                      "ana@party.test", raw)
    return read(dataclasses.replace(inbound, policy=RsvpHandler.options.policy)), read(inbound)


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_compat32_reads_crafted_headers_as_the_modern_policy_does(name: str) -> None:
    light, full = both_ways(CRAFTED[name])
    assert light == full
    assert full.calendars.messages or full.machine, "the case reads as something"


def test_compat32_reads_every_client_message_as_the_modern_policy_does(
        samples: Samples) -> None:
    # The folder holds one message of each shape, nothing missing and nothing more.
    assert sorted(path.name for path in samples.folder.iterdir()
                  if path.suffix in (".eml", ".ics")) == SHAPES
    files = sorted(REPLIES.glob("*.eml")) + sorted(samples.folder.glob("*.eml"))
    assert len(files) > 15
    for path in files:
        light, full = both_ways(crlf(path.read_bytes()))
        assert light == full, path.name


# -- what is not an answer, whatever it looks like (issue 10; reliability.md C06, C07, C18)

def mutated(world: World, change: Callable[[bytes], bytes]) -> bytes:
    """Thunderbird's TENTATIVE reply as one text/calendar part, changed as an attacker or
    a broken client would."""
    raw = fixture("thunderbird-reply-tentative.eml", world)
    start = raw.index(b"BEGIN:VCALENDAR")
    calendar = raw[start:raw.index(b"END:VCALENDAR\r\n", start) + 15]
    head = raw[:raw.index(b"\r\n\r\n")].split(b"\r\n")
    kept = [line for line in head if line.lower().startswith((b"from:", b"to:", b"date:",
                                                               b"subject:", b"message-id:"))]
    return change(b"\r\n".join([*kept, b"MIME-Version: 1.0",
                                 b"Content-Type: text/calendar; method=REPLY; charset=UTF-8",
                                 b"", calendar]))


def second_event(raw: bytes) -> bytes:
    return raw.replace(b"END:VCALENDAR", b"BEGIN:VEVENT\r\nUID:another@elsewhere.test\r\n"
                       b"DTSTAMP:20270302T083000Z\r\nATTENDEE;PARTSTAT=DECLINED:mailto:"
                       b"ana@party.test\r\nEND:VEVENT\r\nEND:VCALENDAR", 1)


def test_the_single_part_reply_these_tests_change_is_applied_as_it_is(
        db: Database, world: World) -> None:
    outcome = deliver(db, world, "ana@party.test", mutated(world, lambda raw: raw))
    assert outcome == RsvpOutcome("applied", "TENTATIVE")


@pytest.mark.parametrize(("change", "why"), [
    (second_event, "an answer about more than one UID"),
    (lambda raw: raw.replace(b"METHOD:REPLY\r\n", b"", 1), "a calendar without METHOD"),
    (lambda raw: raw.replace(b"method=REPLY", b"method=REQUEST", 1),
     "METHOD:REPLY in a part of method=REQUEST"),
], ids=["C18-two-uids", "C06-no-method", "C07-methods-differ"])
def test_a_reply_that_is_not_one_itip_answer_changes_nothing(
        db: Database, world: World, change: Callable[[bytes], bytes], why: str) -> None:
    outcome = deliver(db, world, "ana@party.test", mutated(world, change))
    assert outcome.action == "forward" and why in outcome.reason, outcome
    assert standing(db, world, "ana@party.test").partstat == "NEEDS-ACTION"
