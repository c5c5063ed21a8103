"""Seats and lists in step (issue 11, item 4): unseating, a person's name and language,
a seated delegate who leaves the body's list, and seats from a CSV file."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import service, subscriptions
from lists.models import Member, Pending
from mailer.db import Database
from mailer.tokens import Signer
from meetings.models import Delegate, Invitation, Seat
from tests.helpers import (
    DOMAIN,
    SECRET,
    Sink,
    cli,
    cli_error,
    create_meeting,
    http,
    list_site,
    mail,
    make_config,
    organisation_cli,
    party,
    reply_to,
    run,
    running,
    seat,
    send,
    wait_quiet,
)


def members(config: Path, name: str) -> list[tuple[str, str, str]]:
    return [(m["address"], m["name"], m["language"])
            for m in json.loads(cli(config, "list", "members", name, "--json"))]


def join_by_confirmation(db: Database, name: str, address: str) -> None:
    """Join a list as a person does by mail: a request, then the confirmation."""
    site = list_site()

    def ask(session: Session) -> None:
        subscriptions.request_join(session, site, service.find(session, name), address)

    def confirm(session: Session) -> None:
        pending = session.scalars(select(Pending).where(Pending.address == address)).one()
        subscriptions.confirm(session, site, service.find(session, name), pending)

    db.transaction(ask)
    db.transaction(confirm)


def test_unseating_ends_the_membership_the_seat_made_and_only_that(
        tmp_path: Path, database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "ODM", "KE", "africa")
    cli(config, "body", "list")  # the charter's bodies and lists, made at first use
    join_by_confirmation(db, "steering", "kofi@odm.example")
    cli(config, "list", "add", "steering", "wanjiru@odm.example")
    seat(config, "ama@odm.example", "Ama Owino", "ODM", "steering")
    seat(config, "kofi@odm.example", "Kofi", "ODM", "steering", "en", "--substitute")
    seat(config, "wanjiru@odm.example", "Wanjiru", "ODM", "board")
    cli(config, "list", "add", "board", "wanjiru@odm.example")  # already there: no change
    # Ama, subscribed by her seat, joins the steering list on her own as well.
    join_by_confirmation(db, "steering", "ama@odm.example")

    seat(config, "ana@odm.example", "Ana", "ODM", "conference")
    assert cli(config, "delegate", "remove", "ana@odm.example", "--body", "conference") == \
        "ana@odm.example has no seat in conference any more; off the conference list\n"
    assert cli(config, "delegate", "remove", "kofi@odm.example", "--body", "Steering "
               "Committee") == "kofi@odm.example has no seat in Steering Committee any " \
        "more; stays on the steering list (joined it on their own)\n"
    assert cli(config, "delegate", "remove", "ama@odm.example", "--body", "steering") == \
        "ama@odm.example has no seat in steering any more; stays on the steering list " \
        "(joined it on their own)\n"
    assert cli(config, "delegate", "remove", "wanjiru@odm.example", "--body", "board") == \
        "wanjiru@odm.example has no seat in board any more; off the board list\n"
    assert [m[0] for m in members(config, "steering")] == [
        "ama@odm.example", "kofi@odm.example", "wanjiru@odm.example"]
    assert members(config, "board") == members(config, "conference") == []
    db.close()


def test_a_persons_name_and_language_change_with_delegate_set(tmp_path: Path,
                                                              database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "Parti Socialiste")
    seat(config, "ana@ps.example", "Ana Silva", "Parti Socialiste", "board", "fr")
    seat(config, "ana@ps.example", "Ana Silva", "Parti Socialiste", "steering", "fr")

    assert cli(config, "delegate", "set", "ANA@ps.example", "--name", "Ana Silva-Costa",
               "--language", "ES") == "ana@ps.example: Ana Silva-Costa, es\n"
    assert members(config, "board") == members(config, "steering") == \
        [("ana@ps.example", "Ana Silva-Costa", "es")]
    roster = json.loads(cli(config, "delegate", "list", "--json"))
    assert [(r["body"], r["name"], r["language"]) for r in roster] == \
        [("board", "Ana Silva-Costa", "es"), ("steering", "Ana Silva-Costa", "es")]
    assert cli_error(config, "delegate", "set", "bo@ps.example", "--name", "Bo") == \
        "bo@ps.example is not a delegate"
    assert cli_error(config, "delegate", "set", "ana@ps.example") == \
        "say what to change: --name, --language or both"
    db.close()


def test_a_conflicting_add_says_what_differs_and_changes_nothing(tmp_path: Path,
                                                                 database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "Parti Socialiste")
    seat(config, "ana@ps.example", "Ana Silva", "Parti Socialiste", "board", "fr")

    assert cli_error(config, "delegate", "add", "ana@ps.example", "--name", "Ana S.",
                     "--party", "Parti Socialiste", "--body", "steering",
                     "--language", "en") == \
        "ana@ps.example differs from the stored delegate in name 'Ana S.' (stored: " \
        "'Ana Silva') and language 'en' (stored: 'fr'); nothing changed (alliance " \
        "delegate set ana@ps.example changes a person)"
    assert cli_error(config, "delegate", "add", "ana@ps.example", "--party",
                     "Parti Socialiste", "--body", "steering", "--language", "de") == \
        "ana@ps.example differs from the stored delegate in language 'de' (stored: 'fr'); " \
        "nothing changed (alliance delegate set ana@ps.example changes a person)"
    assert members(config, "steering") == []
    assert members(config, "board") == [("ana@ps.example", "Ana Silva", "fr")]

    # The same person as stored (or no name and language at all) takes the second seat.
    cli(config, "delegate", "add", "ana@ps.example", "--party", "Parti Socialiste",
        "--body", "steering")
    seat(config, "ana@ps.example", "Ana Silva", "parti socialiste", "conference", "FR")
    assert members(config, "steering") == members(config, "conference") == \
        [("ana@ps.example", "Ana Silva", "fr")]
    assert cli_error(config, "delegate", "add", "new@ps.example", "--party",
                     "Parti Socialiste", "--body", "board") == \
        "new@ps.example is a new delegate: give their --name"
    db.close()


async def test_a_seated_delegate_who_leaves_the_list_is_reported_to_the_coordinators(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    path, db = organisation_cli(tmp_path, sqlite_url)
    db.close()
    party(path, "ODM", "KE", "africa")
    cli(path, "coordination", "handover", "ODM", "--contact", "sec@odm.example")
    seat(path, "ama@odm.example", "Ama Owino", "ODM", "steering")
    seat(path, "kofi@odm.example", "Kofi Mensah", "ODM", "board")
    cli(path, "list", "add", "steering", "reader@odm.example")
    async with running(config) as daemon:
        # The scheduler's first round tells the new coordinators of last year's meetings.
        [cadence] = await wait_quiet(sink, 1)
        assert cadence.message["Subject"] == "Charter cadence: meetings missing"
        sink.received.clear()

        # Ama leaves the Steering Committee's list by mail, and confirms.
        leave = f"steering-leave@{DOMAIN}"
        await send(daemon.ports["smtp"], "ama@odm.example", [leave],
                   mail("ama@odm.example", leave, subject="leave"))
        [confirmation] = await wait_quiet(sink, 1)
        target, data = reply_to(confirmation, "ama@odm.example")
        await send(daemon.ports["smtp"], "ama@odm.example", [target], data)
        goodbye, notice = sorted((await wait_quiet(sink, 3))[1:], key=lambda d: d.rcpt)
        assert goodbye.rcpt == "ama@odm.example"
        assert notice.rcpt == "sec@odm.example"
        assert notice.message["Subject"] == \
            "A delegate left the Steering Committee list: Ama Owino"
        text = notice.message.get_content()
        assert "Ama Owino <ama@odm.example>, delegate of ODM in the Steering Committee" in text
        assert f"steering@{DOMAIN}" in text and "--body steering" in text

        # Kofi leaves the Board's list with the one-click link of a list message; a
        # reader with no seat leaves the steering list so: no notice for them.
        sink.received.clear()
        signer = Signer(SECRET, "unsubscribe")
        ids = daemon.db.query(lambda s: {a: i for a, i in s.execute(
            select(Member.address, Member.id))})
        for address in ("kofi@odm.example", "reader@odm.example"):
            status, _, _ = await http(daemon.ports["http"], "POST",
                                      f"/unsubscribe/{signer.sign(ids[address])}",
                                      b"List-Unsubscribe=One-Click")
            assert status == 200
        received = await wait_quiet(sink, 3)
    [notice] = [d for d in received if d.rcpt == "sec@odm.example"]
    assert notice.message["Subject"] == "A delegate left the Board list: Kofi Mensah"
    assert sorted(d.rcpt for d in received) == ["kofi@odm.example", "reader@odm.example",
                                                "sec@odm.example"]


def test_delegate_list_shows_every_body_without_body(tmp_path: Path, sqlite_url: str) -> None:
    config, db = organisation_cli(tmp_path, sqlite_url)
    party(config, "ODM", "KE", "africa")
    seat(config, "ama@odm.example", "Ama Owino", "ODM", "steering")
    seat(config, "ama@odm.example", "Ama Owino", "ODM", "board")
    output = cli(config, "delegate", "list")
    assert output.splitlines() == [
        "body      address          name       party  seat      language",
        "board     ama@odm.example  Ama Owino  ODM    delegate  en",
        "steering  ama@odm.example  Ama Owino  ODM    delegate  en"]
    db.close()


SEATS = """address,name,party,body,language
ama@odm.example,Ama Owino,ODM,steering,en
ama@odm.example,Ama Owino,odm,board,en
eva@spoe.example,Eva Maier,SPÖ,Board,DE

kofi@odm.example,Kofi Mensah,ODM,conference,
"""


def test_seats_are_imported_from_a_csv_file(tmp_path: Path, database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "ODM", "KE", "africa")
    party(config, "SPÖ", "AT")
    source = tmp_path / "seats.csv"
    source.write_text(SEATS, encoding="utf-8")
    assert cli(config, "delegate", "import", str(source)) == \
        "seated 4, already seated 0\n"
    roster = json.loads(cli(config, "delegate", "list", "--json"))
    assert [(r["body"], r["address"], r["party"], r["language"]) for r in roster] == [
        ("board", "ama@odm.example", "ODM", "en"), ("board", "eva@spoe.example", "SPÖ", "de"),
        ("steering", "ama@odm.example", "ODM", "en"),
        ("conference", "kofi@odm.example", "ODM", "en")]
    assert [m[0] for m in members(config, "board")] == ["ama@odm.example",
                                                        "eva@spoe.example"]
    assert cli(config, "delegate", "import", str(source)) == \
        "seated 0, already seated 4\n", "a file imported twice changes nothing"
    db.close()


BAD_SEATS = """address,name,party,body,language
ama@odm.example,Ama Owino,ODM,steering,en
not an address,Someone,ODM,board,en
bo@odm.example,Bo,Parti-Socialiste,board,en
cy@odm.example,Cy,ODM,senate,en
dee@odm.example,Dee,ODM,board,it
wanjiru@odm.example,Wanjiru,ODM,steering,en
eve@odm.example,Eve,ODM,board
ama@odm.example,Ama O.,ODM,board,en
fine@odm.example,Fine,ODM,conference,en
"""


def test_a_csv_file_with_bad_rows_names_each_and_applies_none(tmp_path: Path,
                                                              database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "ODM", "KE", "africa")
    party(config, "Parti Socialiste")
    source = tmp_path / "seats.csv"
    source.write_text(BAD_SEATS, encoding="utf-8")
    code, output = run(config, "delegate", "import", str(source))
    assert code == 1
    lines = output.strip().splitlines()
    assert lines[:-1] == [
        "line 3: not an address: 'not an address'",
        "line 4: no party named 'Parti-Socialiste'; did you mean 'Parti Socialiste'?",
        "line 5: no body named 'senate'",
        "line 6: unknown language 'it'; choose one of en, fr, es, de, pt",
        "line 7: the Steering Committee takes one delegate per party; ODM already has "
        "ama@odm.example (name a substitute with --substitute)",
        "line 8: 4 cells, not 5 (address,name,party,body,language)",
        "line 9: ama@odm.example differs from the stored delegate in name 'Ama O.' "
        "(stored: 'Ama Owino'); nothing changed (alliance delegate set ama@odm.example "
        "changes a person)"], output
    assert lines[-1] == "Error: 7 bad row(s); nothing imported"
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Seat))) == 0
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Delegate))) == 0
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Member))) == 0

    source.write_text("email,name\nama@odm.example,Ama\n")
    assert cli_error(config, "delegate", "import", str(source)) == \
        "line 1 must be the header address,name,party,body,language, not email,name"
    source.write_bytes(b"address,name,party,body,language\nj@spd.example,J\xf6rg,ODM,board,de\n")
    assert cli_error(config, "delegate", "import", str(source)) == \
        "the file is not UTF-8 text; save it as CSV UTF-8"
    source.write_text("address,name,party,body,language\nj@spd.example,J" + "o" * 200_000
                      + ",ODM,board,de\n")
    assert cli_error(config, "delegate", "import", str(source)) == \
        "line 2: not CSV (field larger than field limit (131072))"
    db.close()


def test_a_new_seat_from_a_file_is_invited_and_a_changed_person_is_invited_as_changed(
        tmp_path: Path, sqlite_url: str) -> None:
    config, db = organisation_cli(tmp_path, sqlite_url)
    party(config, "ODM", "KE", "africa")
    seat(config, "ama@odm.example", "Ama Owino", "ODM", "board")
    meeting = create_meeting(config, "board")
    cli(config, "meeting", "invite", str(meeting))
    source = tmp_path / "seats.csv"
    source.write_text("address,name,party,body,language\n"
                      "kofi@odm.example,Kofi Mensah,ODM,board,fr\n")
    assert cli(config, "delegate", "import", str(source)) == \
        "seated 1, already seated 0; 1 invitation(s) queued\n"

    cli(config, "delegate", "set", "ama@odm.example", "--name", "Ama Owino-Otieno",
        "--language", "de")
    invited = db.query(lambda s: sorted(tuple(row) for row in s.execute(
        select(Invitation.address, Invitation.name, Invitation.language))))
    assert invited == [("ama@odm.example", "Ama Owino-Otieno", "de"),
                       ("kofi@odm.example", "Kofi Mensah", "fr")]
    db.close()
