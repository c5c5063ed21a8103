"""Names in any script (issue 11, item 6): parties and bodies as a secretariat names them,
on SQLite and PostgreSQL, from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
from sqlalchemy import func, select

from mailer.cli import main
from meetings.models import Party, Seat
from tests.helpers import cli, cli_error, organisation_cli, party, seat


def parties(config: Path) -> list[tuple[str, str, str]]:
    return [(p["name"], p["country"], p["region"])
            for p in json.loads(cli(config, "party", "list", "--json"))]


def test_a_name_is_found_in_any_case_of_any_script(tmp_path: Path, database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "SPÖ", "AT")
    party(config, "ΣΥΡΙΖΑ", "GR")
    seat(config, "eva@spoe.example", "Eva Maier", "spö", "board")
    seat(config, "nikos@syriza.example", "Nikos", "σύριζα".replace("ύ", "υ"), "board")
    seat(config, "karl@spoe.example", "Karl", "SPO\u0308", "board")  # Ö as O + U+0308

    assert cli_error(config, "party", "add", "spö", "--country", "AT", "--region",
                     "europe") == "party 'SPÖ' already exists"
    assert cli_error(config, "party", "add", "  ΣΥΡΙΖΑ ", "--country", "GR", "--region",
                     "europe") == "party 'ΣΥΡΙΖΑ' already exists"
    assert parties(config) == [("SPÖ", "AT", "europe"), ("ΣΥΡΙΖΑ", "GR", "europe")]
    roster = json.loads(cli(config, "delegate", "list", "--json"))
    assert sorted((r["address"], r["party"]) for r in roster) == [
        ("eva@spoe.example", "SPÖ"), ("karl@spoe.example", "SPÖ"),
        ("nikos@syriza.example", "ΣΥΡΙΖΑ")]
    db.close()


def test_near_duplicates_are_refused_with_a_hint(tmp_path: Path, database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "Parti Socialiste")
    assert cli_error(config, "party", "add", "Parti socialiste ", "--country", "FR",
                     "--region", "europe") == "party 'Parti Socialiste' already exists"
    for near in ("Parti-Socialiste", "Parti Sócialiste", "PartiSocialiste."):
        assert cli_error(config, "party", "add", near, "--country", "FR", "--region",
                         "europe") == \
            f"party {near!r} differs from 'Parti Socialiste' only by accents, spaces or " \
            "punctuation: did you mean 'Parti Socialiste'?"
    assert cli_error(config, "delegate", "add", "ana@ps.example", "--name", "Ana",
                     "--party", "Parti-Socialiste", "--body", "board") == \
        "no party named 'Parti-Socialiste'; did you mean 'Parti Socialiste'?"
    assert cli_error(config, "delegate", "add", "ana@ps.example", "--name", "Ana",
                     "--party", "Parti Socialist", "--body", "board") == \
        "no party named 'Parti Socialist'; did you mean 'Parti Socialiste'?"
    assert cli_error(config, "body", "add", "committee", "--name", "steering committee") == \
        "body 'Steering Committee' already exists"
    assert cli_error(config, "body", "add", "sc", "--name", "Steering-Committee") == \
        "body 'Steering-Committee' differs from 'Steering Committee' only by accents, " \
        "spaces or punctuation: did you mean 'Steering Committee'?"
    assert parties(config) == [("Parti Socialiste", "FR", "europe")]
    assert cli_error(config, "party", "add", "ß" * 150, "--country", "DE", "--region",
                     "europe") == "a party's name cannot be used: it is longer than 200 " \
        "characters"
    db.close()


def test_a_party_is_renamed_and_removed_only_without_seats(tmp_path: Path,
                                                           database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "SPÖ", "AT")
    party(config, "Die Linke", "DE")
    seat(config, "eva@spoe.example", "Eva Maier", "SPÖ", "board")

    assert cli(config, "party", "rename", "spö", "SPÖ Bundespartei") == \
        "party spö is now called SPÖ Bundespartei\n"
    assert cli_error(config, "party", "rename", "spö bundespartei", "DIE LINKE") == \
        "party 'Die Linke' already exists"
    assert cli_error(config, "party", "rename", "SPÖ", "X") == \
        "no party named 'SPÖ'; did you mean 'SPÖ Bundespartei'?"
    [row] = json.loads(cli(config, "delegate", "list", "--body", "board", "--json"))
    assert row["party"] == "SPÖ Bundespartei"

    assert cli_error(config, "party", "remove", "SPÖ Bundespartei") == \
        "SPÖ Bundespartei still has 1 seat(s); take them first " \
        "(alliance delegate remove ADDRESS --body BODY)"
    cli(config, "delegate", "remove", "eva@spoe.example", "--body", "board")
    assert cli(config, "party", "remove", "spö bundespartei") == \
        "removed party SPÖ Bundespartei\n"
    assert cli(config, "party", "remove", "Die Linke") == "removed party Die Linke\n"
    assert parties(config) == []
    assert db.query(lambda s: s.scalar(select(func.count()).select_from(Seat))) == 0
    party(config, "SPÖ", "AT")  # the name is free again
    db.close()


def test_a_party_that_coordinated_stays(tmp_path: Path, database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    party(config, "ODM", "KE", "africa")
    cli(config, "coordination", "handover", "odm")
    assert cli_error(config, "party", "remove", "ODM") == \
        "ODM has a record (meetings, invitations or a coordination term) and stays; " \
        "`party rename` can change its name"
    db.close()


def test_country_codes_are_iso_3166_and_choices_take_any_case(tmp_path: Path,
                                                              database_url: str) -> None:
    config, db = organisation_cli(tmp_path, database_url)
    for code in ("XX", "FRA", "F", "XK", "1A"):
        assert cli_error(config, "party", "add", "Parti Socialiste", "--country", code,
                         "--region", "europe") == \
            f"unknown country {code!r}: give its ISO 3166-1 two-letter code, such as FR, " \
            "KE or BR"
    cli(config, "party", "add", "Parti Socialiste", "--country", "fr", "--region", "Europe")
    cli(config, "party", "add", "Frente Amplio", "--country", "uy",
        "--region", "LATIN-AMERICA")
    cli(config, "party", "add", "die Linke", "--country", "DE", "--region", "europe")
    assert parties(config) == [("die Linke", "DE", "europe"),
                               ("Frente Amplio", "UY", "latin-america"),
                               ("Parti Socialiste", "FR", "europe")], "one order on both"
    cli(config, "body", "add", "forum", "--name", "Forum", "--subscription", "Confirm")
    shown = json.loads(cli(config, "list", "show", "forum", "--json"))
    assert shown["subscription_policy"] == "confirm"
    seat(config, "ana@ps.example", "Ana", "Parti Socialiste", "forum", "FR")
    [row] = json.loads(cli(config, "delegate", "list", "--body", "forum", "--json"))
    assert row["language"] == "fr"
    assert db.query(lambda s: s.scalar(select(Party.country).where(
        Party.name == "Parti Socialiste"))) == "FR"
    db.close()


def test_every_choice_of_every_command_takes_any_case() -> None:
    def choices(command: click.Command, path: str) -> Iterator[tuple[str, bool]]:
        for param in command.params:
            if isinstance(param.type, click.Choice):
                yield f"{path} {param.name}", param.type.case_sensitive
        if isinstance(command, click.Group):    # the main group loads its groups lazily
            context = click.Context(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None, name
                yield from choices(sub, f"{path} {name}")
    found = dict(choices(main, "alliance"))
    assert "alliance meeting update status" in found, "the walk reaches every command"
    assert [name for name, sensitive in found.items() if sensitive] == []


def test_list_choices_and_settings_take_any_case(tmp_path: Path, sqlite_url: str) -> None:
    config, db = organisation_cli(tmp_path, sqlite_url)
    cli(config, "list", "create", "forum", "--subscription", "CLOSED", "--posting", "Anyone")
    cli(config, "list", "set", "forum", "language", "FR")
    cli(config, "list", "set", "forum", "dmarc_mode", "Always")
    cli(config, "list", "add", "forum", "ana@ps.example", "--role", "Owner")
    shown = json.loads(cli(config, "list", "show", "forum", "--json"))
    assert (shown["subscription_policy"], shown["posting_policy"], shown["language"],
            shown["dmarc_mode"]) == ("closed", "anyone", "fr", "always")
    assert cli_error(config, "list", "set", "forum", "language", "xx") == \
        "language takes one of: en, fr, es, de, pt"
    db.close()
