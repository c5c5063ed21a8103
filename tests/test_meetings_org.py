"""The organisation of the charter, run as the coordinators would from the command line."""

from __future__ import annotations

import calendar
import json
from pathlib import Path

from sqlalchemy import func, select

from lists.models import Member
from mailer.db import Database
from meetings.models import Meeting, Party, Seat
from tests.helpers import (
    NEXT_YEAR,
    cli,
    cli_error,
    config_file,
    create_meeting,
    make_config,
    party,
    run,
    seat,
)


def setup(tmp_path: Path, database_url: str | None = None) -> tuple[Path, Database]:
    config = make_config(tmp_path, database_url or f"sqlite:///{tmp_path}/a.sqlite3")
    path = config_file(config, tmp_path)
    db = Database(config.database.url, config.base_dir)
    db.upgrade()
    return path, db


def count(db: Database, table: type) -> int:
    return int(db.query(lambda s: s.scalar(select(func.count()).select_from(table))))


def test_the_charter_bodies_exist_from_the_start_with_their_lists(tmp_path: Path) -> None:
    config, _ = setup(tmp_path)
    bodies = json.loads(cli(config, "body", "list", "--json"))
    assert [(b["slug"], b["max_parties"], b["one_per_party"], b["per_year"])
            for b in bodies] == [("board", 30, False, 1), ("steering", "", True, 2),
                                 ("conference", "", False, 1)]
    policies = {name: json.loads(cli(config, "list", "show", name, "--json"))["subscription_policy"]
                for name in ("board", "steering", "conference")}
    assert policies == {"board": "closed", "steering": "confirm", "conference": "closed"}
    assert json.loads(cli(config, "body", "list", "--json")) == bodies, "made only once"

    cli(config, "body", "add", "women-network", "--name", "Women's Network")
    shown = json.loads(cli(config, "list", "show", "women-network", "--json"))
    assert shown["subscription_policy"] == "closed"


def test_a_body_has_a_name_in_each_language(tmp_path: Path) -> None:
    config, _ = setup(tmp_path)
    steering = json.loads(cli(config, "body", "list", "--json"))[1]
    assert steering["names"] == ("de Lenkungsausschuss; es Comité Directivo; "
                                 "fr Comité directeur; pt Comitê Diretor"), "the charter's own"
    assert cli(config, "body", "name", "steering", "FR", "Comité de pilotage") == \
        "body steering in fr: Comité de pilotage\n"
    assert cli(config, "body", "name", "steering", "de", "") == \
        "body steering in de: Steering Committee (its English name)\n"
    steering = json.loads(cli(config, "body", "list", "--json"))[1]
    assert steering["names"] == "es Comité Directivo; fr Comité de pilotage; pt Comitê Diretor"
    assert cli(config, "body", "name", "board", "en", "Council") == "body board in en: " \
        "Council (its English name)\n"
    assert cli_error(config, "body", "name", "board", "en", "steering  committee") == \
        "body 'Steering Committee' already exists"
    assert "'xx' is not one of" in run(config, "body", "name", "board", "xx", "Rat")[1]
    assert json.loads(cli(config, "body", "list", "--json"))[0]["name"] == "Council"


def test_a_delegate_is_subscribed_to_the_body_list(tmp_path: Path) -> None:
    config, db = setup(tmp_path)
    party(config, "Parti Socialiste")
    assert seat(config, "Ana@Party.example", "Ana Silva", "parti socialiste", "board", "fr") \
        == "Ana@Party.example: delegate of parti socialiste in board\n"
    members = json.loads(cli(config, "list", "members", "board", "--json"))
    assert [(m["address"], m["name"], m["language"]) for m in members] == \
        [("ana@party.example", "Ana Silva", "fr")]
    roster = json.loads(cli(config, "delegate", "list", "--body", "board", "--json"))
    assert roster == [{"body": "board", "address": "ana@party.example", "name": "Ana Silva",
                       "party": "Parti Socialiste", "seat": "delegate", "language": "fr"}]

    assert cli(config, "delegate", "remove", "ana@party.example", "--body", "board") == \
        "ana@party.example has no seat in board any more; off the board list\n"
    assert json.loads(cli(config, "list", "members", "board", "--json")) == [], \
        "the seat made the membership: unseating ends it"
    assert count(db, Member) == 0
    db.close()


def test_the_board_holds_at_most_thirty_parties(tmp_path: Path) -> None:
    config, db = setup(tmp_path)
    db.transaction(lambda s: s.add_all(Party(name=f"Party {n:02d}", country="DE",
                                              region="europe", created_at=0.0)
                                        for n in range(31)))
    for n in range(30):
        seat(config, f"d{n}@party{n}.example", f"Delegate {n}", f"Party {n:02d}", "board")
    seat(config, "second@party0.example", "Second of party 0", "Party 00", "board")

    assert cli_error(config, "delegate", "add", "d30@party30.example", "--name", "Late",
                     "--party", "Party 30", "--body", "board") == \
        "the Board holds at most 30 parties; Party 30 would be number 31"
    assert count(db, Seat) == 31
    assert json.loads(cli(config, "list", "show", "board", "--json"))["members"] == 31
    db.close()


def test_the_steering_committee_takes_one_delegate_per_party_and_a_substitute(
        tmp_path: Path) -> None:
    config, db = setup(tmp_path)
    party(config, "ODM", "KE", "africa")
    seat(config, "ama@odm.example", "Ama Owino", "ODM", "steering")
    assert cli_error(config, "delegate", "add", "kofi@odm.example", "--name", "Kofi",
                     "--party", "ODM", "--body", "steering") == \
        "the Steering Committee takes one delegate per party; ODM already has " \
        "ama@odm.example (name a substitute with --substitute)"
    seat(config, "kofi@odm.example", "Kofi", "ODM", "steering", "en", "--substitute")
    assert cli_error(config, "delegate", "add", "wanjiru@odm.example", "--name", "W",
                     "--party", "ODM", "--body", "steering", "--substitute") == \
        "the Steering Committee takes one named substitute per party; ODM already has " \
        "kofi@odm.example"
    roles = db.query(lambda s: sorted(s.scalars(select(Seat.role))))
    assert roles == ["delegate", "substitute"]
    db.close()


def last_sunday(year: int, month: int) -> str:
    """The day of the month when clocks change in the European Union: its last Sunday."""
    return f"{max(week[calendar.SUNDAY] for week in calendar.monthcalendar(year, month)):02d}"


def test_bad_meetings_are_refused_with_one_line_and_nothing_stored(tmp_path: Path) -> None:
    config, db = setup(tmp_path)
    spring, autumn = last_sunday(NEXT_YEAR, 3), last_sunday(NEXT_YEAR, 10)
    party(config, "SPD", "DE")
    good = {"--body": "board", "--title": "Board", "--start": f"{NEXT_YEAR}-03-14T09:00",
            "--end": f"{NEXT_YEAR}-03-14T17:00", "--tz": "Europe/Berlin"}
    cases = [
        ({"--end": f"{NEXT_YEAR}-03-14T08:00"},
         f"the meeting would end ({NEXT_YEAR}-03-14 08:00 Europe/Berlin) before it starts "
         f"({NEXT_YEAR}-03-14 09:00 Europe/Berlin)"),
        ({"--tz": "Mars/Olympus_Mons"},
         "unknown time zone 'Mars/Olympus_Mons'; use an IANA name such as Europe/Berlin"),
        ({"--tz": "Paris"}, "unknown time zone 'Paris'; did you mean Europe/Paris?"),
        ({"--tz": "new york"}, "unknown time zone 'new york'; did you mean America/New_York?"),
        ({"--tz": "CET"}, "'CET' is not the time zone of a place (its rules may not be those "
                          "of yours); use an IANA name such as Europe/Paris"),
        ({"--tz": "US/Eastern"}, "'US/Eastern' is not the time zone of a place (its rules may "
                                 "not be those of yours); use an IANA name such as "
                                 "America/New_York"),
        ({"--start": f"{NEXT_YEAR}-03-14"},
         f"start: {NEXT_YEAR}-03-14 has no time; give one, such as {NEXT_YEAR}-03-14T09:00 "
         "(delegates in other zones need it)"),
        ({"--body": "senate"}, "no body named 'senate'"),
        ({"--host": "Tories"}, "no party named 'Tories'"),
        ({"--start": "2001-03-14T09:00", "--end": "2001-03-14T17:00"},
         "the start (2001-03-14 09:00 Europe/Berlin) is in the past"),
        ({"--start": "next tuesday"},
         "start: not a date and time (YYYY-MM-DDTHH:MM): 'next tuesday'"),
        ({"--start": f"{NEXT_YEAR}-03-{spring}T02:30"},
         f"start: {NEXT_YEAR}-03-{spring} 02:30 Europe/Berlin does not exist (the clocks "
         f"go forward); choose another time"),
        ({"--start": f"{NEXT_YEAR}-10-{autumn}T02:30", "--end": f"{NEXT_YEAR}-10-{autumn}T09:00"},
         f"start: {NEXT_YEAR}-10-{autumn} 02:30 Europe/Berlin happens twice (the clocks go "
         f"back); choose another time"),
        ({"--end": f"{NEXT_YEAR}-03-14T17:00+02:00"},
         f"end: the offset of '{NEXT_YEAR}-03-14T17:00+02:00' is not that of Europe/Berlin "
         f"at that time (+0100); give the local time without one"),
    ]
    for change, message in cases:
        options = {**good, **change}
        args = [item for pair in options.items() for item in pair]
        assert cli_error(config, "meeting", "create", *args) == message, change
    assert count(db, Meeting) == 0
    meeting_id = create_meeting(config, "board", "--host", "spd")
    assert db.query(lambda s: s.get(Meeting, meeting_id).host_party_id) is not None
    assert cli_error(config, "meeting", "reschedule", str(meeting_id), "--start",
                     f"{NEXT_YEAR}-03-{spring}T02:00", "--end", f"{NEXT_YEAR}-03-{spring}T09:00") \
        == f"start: {NEXT_YEAR}-03-{spring} 02:00 Europe/Berlin does not exist (the clocks " \
           f"go forward); choose another time"
    assert create_meeting(config, "board", start=f"{NEXT_YEAR}-03-14T09:00+01:00")
    db.close()


def test_cadence_report_counts_each_body_against_the_charter(tmp_path: Path) -> None:
    config, _ = setup(tmp_path)
    create_meeting(config, "board")
    create_meeting(config, "steering", start=f"{NEXT_YEAR}-05-01T09:00",
                   end=f"{NEXT_YEAR}-05-01T12:00")
    cancelled = create_meeting(config, "steering", start=f"{NEXT_YEAR}-09-01T09:00",
                               end=f"{NEXT_YEAR}-09-01T12:00")
    cli(config, "meeting", "cancel", str(cancelled))
    create_meeting(config, "conference", draft=True)
    report = json.loads(cli(config, "cadence", str(NEXT_YEAR), "--json"))
    # Meetings still to come are planned, not held; a draft is neither (issue 11, item 10).
    assert [(r["body"], r["held"], r["planned"], r["drafts"], r["required"], r["status"])
            for r in report] == [
        ("board", 0, 1, 0, 1, "1 planned"), ("steering", 0, 1, 0, 2, "1 missing"),
        ("conference", 0, 0, 1, 1, "1 missing")]
    table = cli(config, "cadence", str(NEXT_YEAR))
    assert table.splitlines()[0].split() == ["body", "year", "held", "planned", "drafts",
                                             "required", "status"]


def test_a_meeting_counts_in_the_year_of_its_local_start(tmp_path: Path) -> None:
    config, _ = setup(tmp_path)
    # New Year's morning in Auckland is still the old year in UTC.
    create_meeting(config, "board", "--tz", "Pacific/Auckland",
                   start=f"{NEXT_YEAR + 1}-01-01T09:00", end=f"{NEXT_YEAR + 1}-01-01T12:00")
    planned = {year: json.loads(cli(config, "cadence", str(year), "--json"))[0]["planned"]
               for year in (NEXT_YEAR, NEXT_YEAR + 1)}
    assert planned == {NEXT_YEAR: 0, NEXT_YEAR + 1: 1}
