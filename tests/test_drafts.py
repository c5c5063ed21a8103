"""Drafts (issue 11, item 2): a meeting is sent by nobody's surprise.

`meeting create` makes a draft unless given --send-at; a draft is shown, previewed and
deleted from the command line, and neither the scheduler nor the reminders ever mail
about it; `meeting invite` sends it, and from then on it can only be cancelled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import func, select

from mailer.db import Database
from mailer.models import Delivery
from meetings.models import Invitation, Meeting
from tests.helpers import (
    ANA,
    JORG,
    NEXT_YEAR,
    Clock,
    Sink,
    board_of_two,
    cli,
    cli_error,
    config_file,
    create_meeting,
    days_from_now,
    make_config,
    organisation_cli,
    running,
    wait_quiet,
)


def queued(db: Database) -> int:
    return db.query(lambda s: s.scalar(select(func.count()).select_from(Delivery)))


def create(config: Path, *extra: str) -> str:
    return cli(config, "meeting", "create", "--body", "board", "--title", "Board meeting",
               "--start", f"{NEXT_YEAR}-03-14T09:00", "--end", f"{NEXT_YEAR}-03-14T17:00",
               "--tz", "Europe/Berlin", "--location", "Rotes Rathaus, Berlin", *extra)


def test_create_makes_a_draft_and_says_what_comes_next(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    board_of_two(config)
    assert create(config) == (
        "meeting 1 created as a draft: nothing is sent. Check it with `alliance meeting "
        "show 1`, then send the invitations with `alliance meeting invite 1` (--dry-run to "
        "preview them)\n")
    assert create(config, "--send-at", f"{NEXT_YEAR}-03-01T10:00") == (
        f"meeting 2 created: invitations to 2 delegates at {NEXT_YEAR}-03-01 09:00 UTC "
        "(`alliance meeting show 2` shows it all)\n")
    assert db.query(lambda s: s.get(Meeting, 1).send_at) is None
    assert queued(db) == 0
    db.close()


def test_show_prints_everything_and_who_will_be_invited_then_who_was(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    board_of_two(config)
    create(config, "--description", "Budget, then campaigns.", "--host", "SPD")
    shown = cli(config, "meeting", "show", "1")
    assert shown.splitlines()[0] == "meeting 1: Board meeting (draft)"
    for line in (f"start:       {NEXT_YEAR}-03-14 09:00 Europe/Berlin",
                 f"start utc:   {NEXT_YEAR}-03-14 08:00 UTC",
                 f"end utc:     {NEXT_YEAR}-03-14 16:00 UTC",
                 "location:    Rotes Rathaus, Berlin", "host:        SPD",
                 "description: Budget, then campaigns.", "will be invited (2):"):
        assert line in shown, line
    assert ANA in shown and JORG in shown
    cli(config, "meeting", "invite", "1")
    as_json = json.loads(cli(config, "meeting", "show", "1", "--json"))
    assert as_json["state"] == "sent" and as_json["send_at"].endswith(" UTC")
    assert [(p["address"], p["partstat"]) for p in as_json["invited"]] == \
        [(ANA, "NEEDS-ACTION"), (JORG, "NEEDS-ACTION")]
    assert "invited (2):" in cli(config, "meeting", "show", "1")
    db.close()


def test_a_dry_run_shows_each_message_and_sends_nothing(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    board_of_two(config)
    create(config)
    preview = cli(config, "meeting", "invite", "1", "--dry-run")
    assert preview.splitlines()[0] == ("meeting 1: a dry run, nothing is sent; `alliance "
                                       "meeting invite 1` would queue 2 invitation(s):")
    assert re.search(rf"^Ana Silva <{ANA}> +fr +Invitation : Board meeting", preview, re.M)
    assert "Einladung: Board meeting (" in preview and f"14. März {NEXT_YEAR})" in preview
    assert f"--- the text to {JORG} (de) ---" in preview and "Rotes Rathaus" in preview
    assert queued(db) == 0
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Invitation))) == 0
    assert cli(config, "meeting", "show", "1").splitlines()[0].endswith("(draft)")
    assert cli(config, "meeting", "invite", "1") == "meeting 1: 2 invitation(s) queued\n"
    assert queued(db) == 2
    db.close()


def test_delete_removes_an_unsent_meeting_and_refuses_a_sent_one(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    board_of_two(config)
    create(config)
    create(config, "--send-at", f"{NEXT_YEAR}-03-01T10:00")
    create(config)
    cli(config, "meeting", "invite", "3")
    assert cli(config, "meeting", "delete", "1") == \
        "meeting 1 (Board meeting) deleted; nothing had been sent\n"
    assert cli(config, "meeting", "delete", "2").startswith("meeting 2 (Board meeting) deleted")
    assert cli_error(config, "meeting", "delete", "3") == \
        "meeting 3: invitations went out; cancel it instead (alliance meeting cancel 3)"
    assert cli_error(config, "meeting", "delete", "1") == "no meeting with id 1"
    assert db.query(lambda s: list(s.scalars(select(Meeting.id)))) == [3]
    db.close()


async def test_neither_the_scheduler_nor_the_reminders_send_a_draft(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path = config_file(config, tmp_path)
    board_of_two(path)
    draft = create_meeting(path, "board", start=days_from_now(20), end=days_from_now(20.25),
                           draft=True)
    clock = Clock()
    async with running(config, clock=clock) as daemon:
        await daemon.scheduler.run_due()
        clock.advance(days=6, seconds=600)     # 14 days before: a reminder's time
        daemon.scheduler.wake()
        await daemon.scheduler.run_due()
        clock.advance(days=11)                 # 3 days before
        daemon.scheduler.wake()
        await daemon.scheduler.run_due()
        await wait_quiet(sink, 0)
        assert [d for d in sink.received if d.rcpt in (ANA, JORG)] == []
        assert cli(path, "meeting", "invite", str(draft)) == \
            f"meeting {draft}: 2 invitation(s) queued\n"
        delivered = await sink.wait_for(2)
    assert {d.rcpt for d in delivered if d.rcpt in (ANA, JORG)} == {ANA, JORG}


def test_list_attendance_and_cadence_tell_drafts_from_meetings(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    board_of_two(config)
    create(config)
    create(config, "--send-at", "now")
    rows = json.loads(cli(config, "meeting", "list", "--json"))
    assert [(r["zone"], r["place"], r["state"]) for r in rows] == \
        [("Europe/Berlin", "Rotes Rathaus, Berlin", "draft"),
         ("Europe/Berlin", "Rotes Rathaus, Berlin", "scheduled")]
    cli(config, "meeting", "invite", "2")
    assert json.loads(cli(config, "meeting", "list", "--json"))[1]["state"] == "sent"
    cli(config, "meeting", "answer", "2", ANA, "accepted")
    assert cli(config, "meeting", "attendance", "2").splitlines()[-1] == \
        "meeting 2: sent; accepted 1, tentative 0, declined 0, no answer 1"
    assert cli(config, "meeting", "attendance", "1").splitlines()[-1] == \
        "meeting 1: draft; accepted 0, tentative 0, declined 0, no answer 0"
    [board] = [r for r in json.loads(cli(config, "cadence", str(NEXT_YEAR), "--json"))
               if r["body"] == "board"]
    assert (board["held"], board["planned"], board["drafts"], board["status"]) == \
        (0, 1, 1, "1 planned")
    db.close()


def test_cadence_counts_a_meeting_held_once_it_is_over(tmp_path: Path) -> None:
    config, db = organisation_cli(tmp_path, f"sqlite:///{tmp_path}/a.sqlite3")
    board_of_two(config)
    create(config, "--send-at", "now")
    create(config)

    def move_to_the_past(session: object) -> None:
        for meeting in session.scalars(select(Meeting)):  # type: ignore[attr-defined]
            meeting.starts_at -= 2 * 365 * 86_400.0
            meeting.ends_at -= 2 * 365 * 86_400.0     # over; the local date stays
    db.transaction(move_to_the_past)
    [board] = [r for r in json.loads(cli(config, "cadence", str(NEXT_YEAR), "--json"))
               if r["body"] == "board"]
    assert (board["held"], board["planned"], board["drafts"], board["status"]) == \
        (1, 0, 1, "ok"), "a draft whose day has passed was never held"
    db.close()
