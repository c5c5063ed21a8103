"""Invitations as delegates' mail clients receive them: one iMIP message each, over SMTP.

Each invitation is taken apart at the sink part by part (reference/itip.md §2.2) and
parsed twice: by `icalendar` and by ical.js, Thunderbird's own parser.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar
from sqlalchemy import select

from mailer.db import Database
from mailer.models import Work
from mailer.templates import LANGUAGES, environment
from meetings import ical
from meetings.models import Invitation, Meeting, RsvpEvent
from tests.helpers import (
    ANA,
    DOMAIN,
    INVITE,
    JORG,
    NEXT_YEAR,
    Clock,
    Delivered,
    Sink,
    bare_line_feeds,
    board_of_two,
    calendars,
    cli,
    cli_error,
    config_file,
    create_meeting,
    days_from_now,
    event_of,
    icaljs,
    mail,
    make_config,
    party,
    running,
    seat,
    send,
    wait_quiet,
)

# Weekdays as French and German write them, Monday first (for the dates of NEXT_YEAR).
FR_DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
PT_DAYS = ("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira",
           "sábado", "domingo")
DE_DAYS = ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag")


def invitations(db: Database) -> dict[str, Invitation]:
    return db.query(lambda s: {i.address: i for i in s.scalars(select(Invitation))})


def odm_and_anc(path: Path, ama_body: str = "steering", thabo: tuple[str, ...] = (
        "thabo@anc.example", "Thabo", "steering")) -> None:
    """Two African parties, Ama Owino of ODM and a delegate of the ANC."""
    party(path, "ODM", "KE", "africa")
    party(path, "ANC", "ZA", "africa")
    seat(path, "ama@odm.example", "Ama Owino", "ODM", ama_body)
    seat(path, thabo[0], thabo[1], "ANC", thabo[2])


def by_rcpt(delivered: list[Delivered]) -> dict[str, Delivered]:
    return {d.rcpt: d for d in delivered}


def check_invitation(delivery: Delivered, *, method: str, organizer_cn: str) -> Any:
    """The MIME tree and both calendars of one invitation; returns the VEVENT."""
    message = delivery.message
    assert message["To"].addresses[0].addr_spec == delivery.rcpt
    sender = message["From"].addresses[0].addr_spec
    assert sender.startswith("rsvp+") and sender.endswith(f"@{DOMAIN}")
    assert delivery.mail_from == sender == str(message["Reply-To"])
    assert message["Auto-Submitted"] == "auto-generated"
    assert bare_line_feeds(delivery.data) == [], "text parts end lines in CRLF"
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = message.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, html, inline = alternative.get_payload()
    assert [plain.get_content_type(), html.get_content_type(), inline.get_content_type()] == \
        ["text/plain", "text/html", "text/calendar"]
    assert inline.get_param("method") == method
    assert b"method=" + method.encode() in delivery.data, "written bare, as Outlook does"
    assert (attachment.get_content_type(), attachment.get_filename()) == \
        ("application/ics", "invite.ics")
    data, copy = calendars(message)
    assert data == copy
    calendar, event = event_of(data)
    assert calendar["METHOD"] == method
    assert str(event["ORGANIZER"]) == f"mailto:{sender}"
    assert event["ORGANIZER"].params["CN"] == organizer_cn
    attendee = event["ATTENDEE"] if not isinstance(event["ATTENDEE"], list) \
        else event["ATTENDEE"][0]
    assert str(attendee) == f"mailto:{delivery.rcpt}"
    assert [t["TZID"] for t in calendar.walk("VTIMEZONE")] == ["Europe/Berlin"]
    assert event["DTSTART"].params["TZID"] == "Europe/Berlin"
    found = icaljs(data)
    assert found["method"] == method and found["timezones"] == ["Europe/Berlin"]
    [seen] = found["events"]
    assert seen["start_utc"] == int(event.start.timestamp()), "the VTIMEZONE is right"
    assert seen["organizer"] == {"value": f"mailto:{sender}", "params": {"CN": organizer_cn}}
    assert seen["uid"] == str(event["UID"]) and seen["sequence"] == event["SEQUENCE"]
    return event


async def test_one_invitation_per_delegate_built_as_itip_says(tmp_path: Path,
                                                              database_url: str,
                                                              sink: Sink) -> None:
    config = make_config(tmp_path, database_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board", "--description", "Budget, then campaigns.",
                                "--agenda-url", "https://example.org/agenda.pdf")
    async with running(config) as daemon:
        await wait_quiet(sink, 2)   # send-at defaults to now: the scheduler sends them
        assert cli(path, "meeting", "invite", str(meeting_id)) == \
            f"meeting {meeting_id}: 0 invitation(s) queued\n"
        await wait_quiet(sink, 2)   # and sending twice never invites twice
        rows = invitations(daemon.db)
    delivered = by_rcpt(sink.received)
    assert set(delivered) == {ANA, JORG}
    tokens = {check_invitation(delivered[a], method="REQUEST",
                               organizer_cn="Progressive Alliance")["ORGANIZER"]
              for a in (ANA, JORG)}
    assert len(tokens) == 2, "each invitee has their own reply address"

    ana = delivered[ANA].message
    assert ana["From"].addresses[0].display_name == "Progressive Alliance", "not twice"
    # Dates in the invitee's language with the weekday, in the meeting's zone and in UTC
    # (Berlin in March is UTC+1); the body by its name in that language.
    weekday = date(NEXT_YEAR, 3, 14).weekday()
    assert ana["Subject"] == \
        f"Invitation : Board meeting ({FR_DAYS[weekday][:3]}. 14 mars {NEXT_YEAR})"
    text = ana.get_body(("plain",)).get_content()
    assert "Bonjour Ana Silva" in text
    assert "Board meeting (Conseil)" in text
    assert f"Quand :       {FR_DAYS[weekday]} 14 mars {NEXT_YEAR}, 09:00–17:00\r\n" \
           "                (Europe/Berlin, heure normale d’Europe centrale)\r\n" \
           f"                {FR_DAYS[weekday]} 14 mars {NEXT_YEAR}, 08:00–16:00 UTC\r\n" in text
    html = ana.get_body(("html",)).get_content()
    assert "Board meeting (Conseil)" in html and "08:00–16:00 UTC" in html
    jorg = delivered[JORG].message
    assert jorg["Subject"] == \
        f"Einladung: Board meeting ({DE_DAYS[weekday][:2]}., 14. März {NEXT_YEAR})"
    assert f"{DE_DAYS[weekday]}, 14. März {NEXT_YEAR}, 09:00–17:00" in \
        jorg.get_body(("plain",)).get_content()
    assert "Board meeting (Vorstand)" in jorg.get_body(("plain",)).get_content()
    assert str(jorg["To"]) == f'"Jörg \\"Jo\\" Müller" <{JORG}>'
    _, event = event_of(calendars(jorg)[0])
    attendee = event["ATTENDEE"]
    assert attendee.params == {"CN": 'Jörg "Jo" Müller', "CUTYPE": "INDIVIDUAL",
                               "ROLE": "REQ-PARTICIPANT", "PARTSTAT": "NEEDS-ACTION",
                               "RSVP": "TRUE"}
    assert event["SEQUENCE"] == 0 and event["STATUS"] == "CONFIRMED"
    assert [str(a["TRIGGER"].dt) for a in event.walk("VALARM")] == ["-1 day, 23:30:00"]
    assert str(event["URL"]) == "https://example.org/agenda.pdf"
    assert icaljs(calendars(jorg)[0])["events"][0]["attendees"][0]["params"]["CN"] == \
        'Jörg "Jo" Müller'
    assert {i.sent_sequence for i in rows.values()} == {0}


async def test_reschedule_cancel_and_minor_fixes(tmp_path: Path, sqlite_url: str,
                                                 sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board")
    async with running(config) as daemon:
        await wait_quiet(sink, 2)
        uid = str(event_of(calendars(sink.received[0].message)[0])[1]["UID"])

        def answered(session: Any) -> None:
            for invitation in session.scalars(select(Invitation)):
                invitation.partstat = "ACCEPTED"
        daemon.db.transaction(answered)

        sink.received.clear()
        cli(path, "meeting", "update", str(meeting_id), "--description", "Typo fixed.")
        fixed = by_rcpt(await wait_quiet(sink, 2))
        event = check_invitation(fixed[ANA], method="REQUEST",
                                 organizer_cn="Progressive Alliance")
        assert event["SEQUENCE"] == 0 and str(event["DESCRIPTION"]) == "Typo fixed."
        assert event["ATTENDEE"].params["PARTSTAT"] == "ACCEPTED", "the answer stands"
        assert {i.partstat for i in invitations(daemon.db).values()} == {"ACCEPTED"}

        sink.received.clear()
        assert cli(path, "meeting", "reschedule", str(meeting_id), "--start",
                   f"{NEXT_YEAR}-03-15T10:00", "--end", f"{NEXT_YEAR}-03-15T18:00") == \
            f"meeting {meeting_id} rescheduled; 2 update(s) queued\n"
        moved = by_rcpt(await wait_quiet(sink, 2))
        event = check_invitation(moved[JORG], method="REQUEST",
                                 organizer_cn="Progressive Alliance")
        assert moved[JORG].message["Subject"].startswith("Aktualisiert: Board meeting")
        assert moved[ANA].message["Subject"].startswith("Mise à jour : Board meeting")
        assert (str(event["UID"]), event["SEQUENCE"]) == (uid, 1)
        assert event["DTSTART"].dt.isoformat() == f"{NEXT_YEAR}-03-15T10:00:00+01:00"
        assert event["ATTENDEE"].params["PARTSTAT"] == "NEEDS-ACTION"
        said = moved[JORG].message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        # old → new, each with its weekday in German, in the meeting's zone
        old_day, new_day = (DE_DAYS[date(NEXT_YEAR, 3, day).weekday()] for day in (14, 15))
        assert ("Was sich geändert hat:\n"
                f"  Wann: {old_day}, 14. März {NEXT_YEAR}, 09:00–17:00 (Europe/Berlin, "
                f"Mitteleuropäische Normalzeit) → {new_day}, 15. März {NEXT_YEAR}, "
                "10:00–18:00 (Europe/Berlin, Mitteleuropäische Normalzeit)\n") in said
        rows = invitations(daemon.db)
        assert {(i.partstat, i.reset_sequence, i.sent_sequence) for i in rows.values()} == \
            {("NEEDS-ACTION", 1, 1)}

        sink.received.clear()
        assert cli(path, "meeting", "reschedule", str(meeting_id), "--start",
                   f"{NEXT_YEAR}-03-15T10:00", "--end", f"{NEXT_YEAR}-03-15T18:00") == \
            f"meeting {meeting_id}: nothing changed (the same times); no updates\n"
        await wait_quiet(sink, 0)
        assert daemon.db.query(lambda s: s.get(Meeting, meeting_id).sequence) == 1

        sink.received.clear()
        cli(path, "meeting", "update", str(meeting_id), "--location", "Willy-Brandt-Haus")
        relocated = by_rcpt(await wait_quiet(sink, 2))
        assert event_of(calendars(relocated[ANA].message)[0])[1]["SEQUENCE"] == 2
        said = relocated[ANA].message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert "Ce qui a changé :\n  Lieu : " in said and "→ Willy-Brandt-Haus\n" in said
        assert "→ <strong>Willy-Brandt-Haus</strong>" in \
            relocated[ANA].message.get_body(("html",)).get_content()

        sink.received.clear()
        assert cli(path, "meeting", "cancel", str(meeting_id), "--reason",
                   "The hall is closed\nfor works.") == \
            f"meeting {meeting_id} cancelled; 2 cancellation(s) queued\n"
        cancelled = by_rcpt(await wait_quiet(sink, 2))
        event = check_invitation(cancelled[ANA], method="CANCEL",
                                 organizer_cn="Progressive Alliance")
        assert cancelled[ANA].message["Subject"].startswith("Annulé : Board meeting")
        assert (event["STATUS"], event["SEQUENCE"]) == ("CANCELLED", 3)
        assert str(event["COMMENT"]) == "The hall is closed for works."
        assert "Motif : The hall is closed for works." in \
            cancelled[ANA].message.get_body(("plain",)).get_content()
        assert not event.walk("VALARM"), "RFC 5546 §3.2.5: no VALARM in a CANCEL"
        assert cli_error(path, "meeting", "invite", str(meeting_id)) == \
            f"meeting {meeting_id} is cancelled"


async def test_a_late_delegate_is_invited_and_a_leaving_one_is_uninvited(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board")
    async with running(config) as daemon:
        await wait_quiet(sink, 2)
        sink.received.clear()
        party(path, "PSOE", "ES")
        assert seat(path, "lucia@psoe.example", "Lucía", "PSOE", "board", "es") == \
            "lucia@psoe.example: delegate of PSOE in board; invited to 1 meeting(s)\n"
        [late] = await wait_quiet(sink, 1)
        assert late.rcpt == "lucia@psoe.example"
        event = check_invitation(late, method="REQUEST", organizer_cn="Progressive Alliance")
        assert event["ATTENDEE"].params["RSVP"] == "TRUE"
        assert late.message["Subject"].startswith("Invitación: Board meeting")

        sink.received.clear()
        assert cli(path, "delegate", "remove", JORG, "--body", "board") == \
            f"{JORG} has no seat in board any more; off the board list; " \
            "1 invitation(s) cancelled\n"
        [gone] = await wait_quiet(sink, 1)
        event = check_invitation(gone, method="CANCEL", organizer_cn="Progressive Alliance")
        assert gone.rcpt == JORG and "STATUS" not in event, "an uninvite, not a cancel"
        assert event["SEQUENCE"] == 1
        assert gone.message["Subject"].startswith("Einladung zurückgezogen: Board meeting")
        assert invitations(daemon.db)[JORG].state == "removed"
        assert daemon.db.query(lambda s: s.get(Meeting, meeting_id).sequence) == 1


async def test_invitations_wait_for_their_send_at_time(tmp_path: Path, sqlite_url: str,
                                                       sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    create_meeting(path, "board", "--send-at", days_from_now(2))
    clock = Clock()
    async with running(config, clock=clock) as daemon:
        await daemon.scheduler.run_due()
        await wait_quiet(sink, 0)
        clock.advance(days=1)
        daemon.scheduler.wake()
        await wait_quiet(sink, 0)
        clock.advance(days=1, seconds=120)
        daemon.scheduler.wake()
        delivered = await wait_quiet(sink, 2)
    assert {d.rcpt for d in delivered} == {ANA, JORG}


async def test_reminders_at_fourteen_and_three_days_only_to_those_who_have_not_answered(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    create_meeting(path, "board", start=days_from_now(20), end=days_from_now(20.25))
    clock = Clock()
    async with running(config, clock=clock) as daemon:
        await wait_quiet(sink, 2)
        sink.received.clear()

        def ana_accepts(session: Any) -> None:
            session.scalar(select(Invitation).where(Invitation.address == ANA)).partstat = \
                "ACCEPTED"
        daemon.db.transaction(ana_accepts)

        clock.advance(days=6, seconds=600)     # 14 days before
        daemon.scheduler.wake()
        [first] = await wait_quiet(sink, 1)
        assert first.rcpt == JORG
        assert first.message["Subject"].startswith("Erinnerung: Board meeting")
        event = check_invitation(first, method="REQUEST", organizer_cn="Progressive Alliance")
        assert event["SEQUENCE"] == 0 and event["ATTENDEE"].params["RSVP"] == "TRUE"
        assert "in 13 Tagen" in first.message.get_body(("plain",)).get_content()

        daemon.scheduler.wake()
        await wait_quiet(sink, 1)               # once only
        clock.advance(days=11)                  # 3 days before
        daemon.scheduler.wake()
        second = (await wait_quiet(sink, 2))[1]
        assert second.rcpt == JORG
        daemon.scheduler.wake()
        await wait_quiet(sink, 2)
    assert invitations(daemon.db)[JORG].reminded == "14,3"


async def test_attendance_and_one_daily_summary_for_the_coordinators(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    cli(path, "coordination", "handover", "SPD", "--contact", "office@spd.example")
    meeting_id = create_meeting(path, "board")
    clock = Clock()
    async with running(config, clock=clock) as daemon:
        await wait_quiet(sink, 3)       # two invitations, and the cadence warning
        sink.received.clear()

        def replies(session: Any) -> None:
            for invitation in session.scalars(select(Invitation)):
                partstat = "ACCEPTED" if invitation.address == ANA else "DECLINED"
                invitation.partstat, invitation.replied_at = partstat, clock.now
                invitation.comment = "Avec plaisir" if partstat == "ACCEPTED" else ""
                session.add(RsvpEvent(meeting_id=meeting_id, invitation_id=invitation.id,
                                      kind="reply", partstat=partstat,
                                      detail=invitation.comment, at=clock.now))
        daemon.db.transaction(replies)
        daemon.scheduler.wake()
        await daemon.scheduler.run_due()
        await wait_quiet(sink, 0)               # not a day old yet
        clock.advance(days=1, seconds=60)
        daemon.scheduler.wake()
        await daemon.scheduler.run_due()
        [summary] = [d for d in await sink.wait_for(1)
                     if "Antworten" in str(d.message["Subject"])]
        daemon.scheduler.wake()
        await daemon.scheduler.run_due()
        await wait_quiet(sink, len(sink.received))
    assert [d.rcpt for d in sink.received if d.message["Subject"] == summary.message["Subject"]] \
        == ["office@spd.example"]
    text = summary.message.get_content()
    assert summary.message["Subject"] == "Antworten auf Einladungen: 2 Änderungen"
    assert f"{ANA}> hat geantwortet: ACCEPTED (Avec plaisir)" in text
    assert f"{JORG}> hat geantwortet: DECLINED" in text

    table = cli(path, "meeting", "attendance", str(meeting_id))
    assert table.splitlines()[0].split() == ["name", "party", "address", "partstat",
                                             "answered", "comment", "replied_at",
                                             "delivery"]
    rows = json.loads(cli(path, "meeting", "attendance", str(meeting_id), "--json"))
    assert [(r["name"], r["party"], r["address"], r["partstat"], r["comment"]) for r in rows] \
        == [("Ana Silva", "Parti Socialiste", ANA, "ACCEPTED", "Avec plaisir"),
            ('Jörg "Jo" Müller', "SPD", JORG, "DECLINED", "")]
    assert rows[0]["replied_at"].endswith("Z")
    parsed = list(csv.DictReader(io.StringIO(cli(path, "meeting", "attendance",
                                                 str(meeting_id), "--csv"))))
    assert [r["partstat"] for r in parsed] == ["ACCEPTED", "DECLINED"]


async def test_handover_renames_the_organizer_and_coordination_mail_reaches_the_contact(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    create_meeting(path, "board")
    async with running(config) as daemon:
        first = await wait_quiet(sink, 2)
        check_invitation(first[0], method="REQUEST", organizer_cn="Progressive Alliance")
        assert cli(path, "coordination", "handover", "Parti Socialiste", "--contact",
                   "bureau@ps.example") == \
            "Parti Socialiste coordinates from now on; coordination@ reaches " \
            "bureau@ps.example\n"
        second_id = create_meeting(path, "board", start=f"{NEXT_YEAR}-06-01T09:00",
                                   end=f"{NEXT_YEAR}-06-01T17:00")
        cli(path, "meeting", "invite", str(second_id))
        later = [d for d in await sink.wait_for(4) if d.rcpt in (ANA, JORG)][2:]
        for delivery in later:
            check_invitation(delivery, method="REQUEST", organizer_cn="Parti Socialiste")
            assert str(delivery.message["From"]).startswith("Parti Socialiste via ")

        sink.received.clear()
        target = f"coordination@{DOMAIN}"
        await send(daemon.ports["smtp"], "kofi@odm.example", [target],
                   mail("kofi@odm.example", target, subject="Hosting in Nairobi"))
        await send(daemon.ports["smtp"], "", [target],
                   mail("mailer-daemon@mx.example", target, subject="Undelivered"))
        forwarded = await wait_quiet(sink, 1)
        await daemon.router.stop()
        states = daemon.db.query(lambda s: list(s.scalars(select(Work.state))))
    assert states == ["done", "done"], "the bounce was handled: dropped, not forwarded"
    assert [d.rcpt for d in forwarded] == ["bureau@ps.example"]
    subjects = [str(d.message["Subject"]) for d in forwarded]
    assert subjects.count("Hosting in Nairobi") == 1 and "Undelivered" not in subjects
    hosting = next(d for d in forwarded if d.message["Subject"] == "Hosting in Nairobi")
    assert hosting.message["Delivered-To"] == target
    assert hosting.message["From"] == "kofi@odm.example"


async def test_a_substitute_gets_a_request_with_delegated_from(tmp_path: Path,
                                                               sqlite_url: str,
                                                               sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    odm_and_anc(path)
    meeting_id = create_meeting(path, "steering")
    async with running(config) as daemon:
        await wait_quiet(sink, 2)
        sink.received.clear()
        assert cli_error(path, "meeting", "delegate", str(meeting_id), "ama@odm.example",
                         "thabo@anc.example") == "thabo@anc.example is already invited to " \
                                                 f"meeting {meeting_id}"
        seat(path, "zuma@anc.example", "Zuma", "ANC", "board")
        assert cli_error(path, "meeting", "delegate", str(meeting_id), "ama@odm.example",
                         "zuma@anc.example") == "zuma@anc.example is a delegate of ANC; " \
                                                "a substitute speaks for ODM, and no party " \
                                                "may have a second voice"
        assert cli(path, "meeting", "delegate", str(meeting_id), "ama@odm.example",
                   "wanjiru@odm.example", "--name", "Wanjiru") == \
            f"meeting {meeting_id}: wanjiru@odm.example invited in place of ama@odm.example\n"
        [substitute] = await wait_quiet(sink, 1)
        assert cli_error(path, "meeting", "delegate", str(meeting_id), "ama@odm.example",
                         "otieno@odm.example") == "ama@odm.example has already sent " \
                                                  "wanjiru@odm.example"
        rows = invitations(daemon.db)
    assert substitute.rcpt == "wanjiru@odm.example"
    event = check_invitation(substitute, method="REQUEST", organizer_cn="Progressive Alliance")
    own, delegator = event["ATTENDEE"]
    assert own.params["DELEGATED-FROM"] == "mailto:ama@odm.example"
    assert (str(delegator), delegator.params["PARTSTAT"], delegator.params["DELEGATED-TO"]) \
        == ("mailto:ama@odm.example", "DELEGATED", "mailto:wanjiru@odm.example")
    assert event["SEQUENCE"] == 0, "RFC 5546 §2.1.4: a delegation keeps SEQUENCE"
    found = icaljs(calendars(substitute.message)[0])["events"][0]["attendees"]
    assert found[0]["params"]["DELEGATED-FROM"] == "mailto:ama@odm.example"
    assert (rows["ama@odm.example"].partstat, rows["ama@odm.example"].delegated_to) == \
        ("DELEGATED", "wanjiru@odm.example")
    assert rows["wanjiru@odm.example"].delegated_from_id == rows["ama@odm.example"].id
    attendance = json.loads(cli(path, "meeting", "attendance", str(meeting_id), "--json"))
    assert {r["address"]: r["party"] for r in attendance}["wanjiru@odm.example"] == "ODM"


async def test_a_brazilian_delegate_is_invited_in_portuguese(tmp_path: Path, sqlite_url: str,
                                                            sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    party(path, "Partido dos Trabalhadores", "BR", "latin-america")
    seat(path, "gleisi@pt.example", "Gleisi Hoffmann", "Partido dos Trabalhadores", "board",
         "pt")
    create_meeting(path, "board")
    async with running(config):
        [invitation] = await wait_quiet(sink, 1)
    message = invitation.message
    assert invitation.rcpt == "gleisi@pt.example"
    assert message["Subject"].startswith("Convite: Board meeting")
    text = message.get_body(("plain",)).get_content()
    assert "Prezado(a) Gleisi Hoffmann," in text
    assert "Progressive Alliance convida você para esta reunião:" in text
    assert "    delegate ENDEREÇO NOME" in text
    day = PT_DAYS[date(NEXT_YEAR, 3, 14).weekday()]
    assert f"Quando:      {day}, 14 de março de {NEXT_YEAR}, 09:00–17:00\r\n" in text
    assert "Board meeting (Conselho)" in text, "the body by its Portuguese name"
    html = message.get_body(("html",)).get_content()
    assert '<html lang="pt">' in html and "Aceitar, Talvez ou Recusar" in html


async def test_coordinators_are_warned_once_when_a_year_falls_short(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    party(path, "SPD", "DE")
    cli(path, "coordination", "handover", "SPD", "--contact", "office@spd.example")
    async with running(config) as daemon:
        [warning] = await wait_quiet(sink, 1)
        daemon.scheduler.wake()
        await daemon.scheduler.run_due()
        await wait_quiet(sink, 1)
    assert warning.rcpt == "office@spd.example"
    assert warning.message["Subject"] == "Charter cadence: meetings missing"
    assert str(warning.message["To"]) == f"coordination@{DOMAIN}"
    assert "- Board, " in warning.message.get_content()


ZONE_RULES = {
    "Europe/Berlin": {("DAYLIGHT", "FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3"),
                      ("STANDARD", "FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10")},
    "America/New_York": {("DAYLIGHT", "FREQ=YEARLY;BYDAY=2SU;BYMONTH=3"),
                         ("STANDARD", "FREQ=YEARLY;BYDAY=1SU;BYMONTH=11")},
    "Australia/Sydney": {("STANDARD", "FREQ=YEARLY;BYDAY=1SU;BYMONTH=4"),
                         ("DAYLIGHT", "FREQ=YEARLY;BYDAY=1SU;BYMONTH=10")},
    # Irregular: Morocco's clocks follow Ramadan; Israel's summer time starts on the
    # Friday before the last Sunday of March, which no one BYDAY names.
    "Africa/Casablanca": set(),
    "Asia/Jerusalem": {("STANDARD", "FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10")},
}


@pytest.mark.parametrize("tz", sorted(ZONE_RULES))
def test_a_time_zone_is_written_as_a_yearly_rule_where_it_has_one(tz: str) -> None:
    """Outlook reads only RRULE in a VTIMEZONE (MS-OXCICAL 2.1.3.1.1.19.2.2); where the
    zone follows no rule it can state, RDATE. Thunderbird resolves every hour right."""
    zone = ZoneInfo(tz)
    starts = [datetime(year, month, day, 9, 0, tzinfo=zone) for year in (NEXT_YEAR,
              NEXT_YEAR + 1) for month in range(1, 13) for day in (1, 10, 20, 28)]
    stamp = datetime.now(UTC)
    data = ical.publish([ical.Occasion(f"{n}@{DOMAIN}", 0, "Board", start,
                                       start + timedelta(hours=2), stamp)
                         for n, start in enumerate(starts)],
                        name="Board", organizer=ical.Person(f"board@{DOMAIN}"))
    [timezone] = Calendar.from_ical(data).walk("VTIMEZONE")
    observances = timezone.subcomponents
    rules = {(o.name, o["RRULE"].to_ical().decode()) for o in observances if "RRULE" in o}
    assert rules == ZONE_RULES[tz]
    assert all("RDATE" not in o for o in observances if "RRULE" in o), "never both"
    irregular = [o for o in observances if "RRULE" not in o and "RDATE" in o]
    assert bool(irregular) == (tz in ("Africa/Casablanca", "Asia/Jerusalem"))
    assert not any(line.startswith(b"RDATE") and b"," in line for line in data.split(b"\r\n")), \
        "one RDATE a line: ical.js reads only the first of a list"
    seen = icaljs(data)["events"]
    assert [e["start_utc"] for e in seen] == [int(start.timestamp()) for start in starts]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("mailing", ["invitation", "invitation_update", "invitation_cancel",
                                     "reminder", "invitation_answered"])
def test_the_html_part_renders_in_every_language(language: str, mailing: str) -> None:
    html = environment().get_template(f"{language}/invitation.html").render(
        {**INVITE, "site_name": "Progressive Alliance", "mailing": mailing,
         "subject": "Invitation", "invitee": {"name": "<Ana>", "address": ANA}})
    assert "&lt;Ana&gt;" in html and "<Ana>" not in html, "autoescaped"
    assert "KICC, Nairobi" in html


async def test_a_coordinating_party_with_an_accented_name_and_a_broken_meeting(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    """The organiser's name is RFC 2047-encoded and folded by the email policy; a meeting
    that cannot be sent holds back no other (each has its own savepoint)."""
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    prd = "Partido de la Revolución Democrática"
    party(path, prd, "MX", "latin-america")
    cli(path, "coordination", "handover", prd, "--contact", "enlace@prd.example")
    broken = create_meeting(path, "board", start=f"{NEXT_YEAR}-02-01T09:00",
                            end=f"{NEXT_YEAR}-02-01T17:00")
    meeting_id = create_meeting(path, "board")

    def unknown_zone(session: Any) -> None:
        session.get(Meeting, broken).tz = "Atlantis/Poseidonis"
    Database(config.database.url, config.base_dir).transaction(unknown_zone)
    async with running(config) as daemon:
        await sink.wait_for(2)
        await asyncio.sleep(0.5)    # time for the broken meeting to send, were it to
        rows = daemon.db.query(lambda s: [(i.meeting_id, i.sent_sequence) for i in
                                          s.scalars(select(Invitation))])
    # The coordinators may also get the charter's cadence warning (from October on).
    assert [d for d in sink.received if d.rcpt not in (ANA, JORG)
            and "cadence" not in str(d.message["Subject"]).lower()] == []
    delivered = by_rcpt([d for d in sink.received if d.rcpt in (ANA, JORG)])
    assert len(delivered) == len([d for d in sink.received if d.rcpt in (ANA, JORG)])
    assert set(delivered) == {ANA, JORG}
    for delivery in delivered.values():
        check_invitation(delivery, method="REQUEST", organizer_cn=prd)
        sender = delivery.message["From"]
        assert sender.addresses[0].display_name == f"{prd} via Progressive Alliance"
        assert b"=?utf-8?" in delivery.data.split(b"\r\n\r\n")[0], "RFC 2047"
    assert sorted(rows) == [(meeting_id, 0), (meeting_id, 0)], "nothing of the broken one"


async def test_a_delegator_gets_updates_and_takes_their_substitute_along_when_unseated(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    odm_and_anc(path)
    meeting_id = create_meeting(path, "steering")
    async with running(config) as daemon:
        await wait_quiet(sink, 2)
        cli(path, "meeting", "delegate", str(meeting_id), "ama@odm.example",
            "wanjiru@odm.example", "--name", "Wanjiru")
        await wait_quiet(sink, 3)
        sink.received.clear()
        assert cli(path, "meeting", "reschedule", str(meeting_id), "--start",
                   f"{NEXT_YEAR}-03-15T10:00", "--end", f"{NEXT_YEAR}-03-15T18:00") == \
            f"meeting {meeting_id} rescheduled; 3 update(s) queued\n"
        updates = by_rcpt(await wait_quiet(sink, 3))
        event = check_invitation(updates["ama@odm.example"], method="REQUEST",
                                 organizer_cn="Progressive Alliance")
        ama = event["ATTENDEE"]
        assert (ama.params["PARTSTAT"], ama.params["RSVP"], ama.params["DELEGATED-TO"]) == \
            ("DELEGATED", "FALSE", "mailto:wanjiru@odm.example"), "RFC 5546 §3.2.2.3"
        assert event["SEQUENCE"] == 1
        assert invitations(daemon.db)["ama@odm.example"].reset_sequence == 1

        sink.received.clear()
        assert cli(path, "delegate", "remove", "ama@odm.example", "--body", "steering") == \
            "ama@odm.example has no seat in steering any more; off the steering list; " \
            "2 invitation(s) cancelled\n"
        gone = by_rcpt(await wait_quiet(sink, 2))
        assert set(gone) == {"ama@odm.example", "wanjiru@odm.example"}
        for delivery in gone.values():
            event = check_invitation(delivery, method="CANCEL",
                                     organizer_cn="Progressive Alliance")
            assert "STATUS" not in event and event["SEQUENCE"] == 2
        rows = invitations(daemon.db)
    assert {a: i.state for a, i in rows.items()} == {
        "ama@odm.example": "removed", "wanjiru@odm.example": "removed",
        "thabo@anc.example": "active"}, "ODM keeps no voice through the substitute"


def test_no_delegate_of_another_party_stands_in_on_the_board(tmp_path: Path,
                                                              sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    path = config_file(config, tmp_path)
    odm_and_anc(path, "board", ("zuma@anc.example", "Zuma", "conference"))
    meeting_id = create_meeting(path, "board")
    cli(path, "meeting", "invite", str(meeting_id))
    assert cli_error(path, "meeting", "delegate", str(meeting_id), "ama@odm.example",
                     "zuma@anc.example") == "zuma@anc.example is a delegate of ANC; a " \
                                            "substitute speaks for ODM, and no party may " \
                                            "have a second voice"


def test_attendance_csv_never_carries_a_formula(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    path = config_file(config, tmp_path)
    board_of_two(path)
    meeting_id = create_meeting(path, "board")
    cli(path, "meeting", "invite", str(meeting_id))

    def comments(session: Any) -> None:
        for invitation in session.scalars(select(Invitation)):
            invitation.partstat = "ACCEPTED"
            invitation.comment = '=HYPERLINK("http://evil.example","ok")' \
                if invitation.address == ANA else "@SUM(A1:A9)"
    Database(config.database.url, config.base_dir).transaction(comments)
    rows = list(csv.DictReader(io.StringIO(cli(path, "meeting", "attendance",
                                               str(meeting_id), "--csv"))))
    assert [r["comment"] for r in rows] == ["\'=HYPERLINK(\"http://evil.example\",\"ok\")",
                                            "\'@SUM(A1:A9)"]
    as_json = json.loads(cli(path, "meeting", "attendance", str(meeting_id), "--json"))
    assert as_json[0]["comment"].startswith("="), "only the CSV is for spreadsheets"
