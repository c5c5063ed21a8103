"""Migrations: an old database keeps its data on upgrade; ids signed into tokens stay unique."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from lists import service
from mailer.db import Database, resolve_url
from tests.helpers import upgrade_to


def test_upgrading_from_the_first_schema_keeps_lists_and_members(database_url: str) -> None:
    upgrade_to(database_url, "0001")
    engine = create_engine(resolve_url(database_url, Path(".")))
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO lists (name, display_name, description, "
                                "subscription_policy, posting_policy, created_at) "
                                "VALUES ('steering', 'Steering', '', 'confirm', 'members', 0)"))
        connection.execute(text("INSERT INTO members (list_id, address, display_name, "
                                "language, delivery, joined_at) "
                                "VALUES (1, 'ana@example.org', 'Ana', 'fr', 'regular', 0)"))
    engine.dispose()
    db = Database(database_url)
    db.upgrade()
    try:
        member = db.query(lambda s: service.member(s, 1, "ana@example.org"))
        names = {index["name"] for index in inspect(db.writer).get_indexes("members")}
    finally:
        db.close()
    assert member is not None
    assert (member.role, member.language, member.enabled, member.digest_format) == \
        ("member", "fr", True, "mime")
    assert "ix_members_list_role" in names


def test_a_departed_members_id_is_never_given_again(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    try:
        def first(session: object) -> int:
            made = service.create(session, "steering")  # type: ignore[arg-type]
            service.add_members(session, made, ["a@example.org", "b@example.org"])  # type: ignore
            return made.id

        list_id = db.transaction(first)
        gone = db.transaction(lambda s: service.remove_member(
            s, service.find(s, "steering"), "b@example.org").id)
        db.transaction(lambda s: service.add_members(s, service.find(s, "steering"),
                                                     ["c@example.org"]))
        new = db.query(lambda s: service.member(s, list_id, "c@example.org"))
    finally:
        db.close()
    assert new is not None and new.id > gone


def test_an_invitation_cut_off_by_one_bounce_gets_mail_again(database_url: str) -> None:
    upgrade_to(database_url, "0007")
    engine = create_engine(resolve_url(database_url, Path(".")))
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO bodies (id, slug, name, kind, one_delegate_per_party, "
            "meetings_per_year, created_at) VALUES (1, 'board', 'Board', 'board', false, 1, 0)"))
        connection.execute(text(
            "INSERT INTO meetings (id, uid, body_id, title, description, location, tz, "
            "start_local, end_local, starts_at, ends_at, alongside, agenda_url, send_at, "
            "status, sequence, created_at, updated_at) VALUES (1, 'm1', 1, 'Board', '', '', "
            "'UTC', '2027-03-14T09:00:00', '2027-03-14T17:00:00', 0, 0, '', '', 0, "
            "'CONFIRMED', 0, 0, 0)"))
        connection.execute(text(
            "INSERT INTO invitations (id, meeting_id, address, name, language, state, "
            "partstat, comment, reset_sequence, delegated_to, reminded) VALUES "
            "(1, 1, 'ana@party.test', 'Ana', 'en', 'undeliverable', 'ACCEPTED', '', 0, '', '')"))
    engine.dispose()
    db = Database(database_url)
    db.upgrade()
    try:
        row = db.query(lambda s: s.execute(text(
            "SELECT state, partstat, bounce_score, problem, by_hand FROM invitations")).one())
    finally:
        db.close()
    assert tuple(row) == ("active", "ACCEPTED", 1.0,
                          "a hard bounce, recorded before details were kept", False)


def test_names_get_their_keys_and_seat_memberships_their_origin(database_url: str) -> None:
    upgrade_to(database_url, "0008")
    engine = create_engine(resolve_url(database_url, Path(".")))
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO lists (id, name, display_name, description, subscription_policy, "
            "posting_policy, created_at) VALUES (1, 'steering', 'Steering', '', 'confirm', "
            "'members', 0)"))
        connection.execute(text(
            "INSERT INTO bodies (id, slug, name, kind, list_id, one_delegate_per_party, "
            "meetings_per_year, created_at) VALUES (1, 'steering', 'Steering Committee', "
            "'steering', 1, true, 2, 0)"))
        # SQLite's lower() let both in before keys were kept.
        connection.execute(text(
            "INSERT INTO parties (id, name, country, region, created_at) VALUES "
            "(1, 'SPÖ', 'AT', 'europe', 0), (2, 'spö', 'AT', 'europe', 0)"))
        connection.execute(text(
            "INSERT INTO delegates (id, address, name, party_id, language, created_at) VALUES "
            "(1, 'eva@spoe.example', 'Eva', 1, 'de', 0), "
            "(2, 'karl@spoe.example', 'Karl', 1, 'de', 0)"))
        connection.execute(text(
            "INSERT INTO seats (id, body_id, delegate_id, party_id, role, created_at) VALUES "
            "(1, 1, 1, 1, 'delegate', 100), (2, 1, 2, 1, 'substitute', 100)"))
        # Eva was subscribed by her seat; Karl had joined the list before he was seated.
        connection.execute(text(
            "INSERT INTO members (list_id, address, role, display_name, language, delivery, "
            "digest_format, joined_at, enabled, disabled_reason, bounce_score) VALUES "
            "(1, 'eva@spoe.example', 'member', 'Eva', 'de', 'regular', 'mime', 100, true, "
            "'', 0), (1, 'karl@spoe.example', 'member', 'Karl', 'de', 'regular', 'mime', 50, "
            "true, '', 0)"))
    engine.dispose()
    db = Database(database_url)
    db.upgrade()
    try:
        keys = db.query(lambda s: s.execute(text(
            "SELECT name_key FROM parties ORDER BY id")).scalars().all())
        body_key = db.query(lambda s: s.scalar(text("SELECT name_key FROM bodies")))
        origins = db.query(lambda s: s.execute(text(
            "SELECT address, joined_by FROM members ORDER BY address")).all())
    finally:
        db.close()
    assert keys == ["spö", "spö #2"]
    assert body_key == "steering committee"
    assert [tuple(row) for row in origins] == [("eva@spoe.example", "seat"),
                                               ("karl@spoe.example", "")]


def test_the_charter_bodies_get_their_names_in_every_language(database_url: str) -> None:
    upgrade_to(database_url, "0010")
    engine = create_engine(resolve_url(database_url, Path(".")))
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO lists (id, name, display_name, description, subscription_policy, "
            "posting_policy, created_at) VALUES (1, 'steering', 'Steering', '', 'confirm', "
            "'members', 0), (2, 'board', 'Board', '', 'closed', 'members', 0)"))
        # The Board was renamed by its coordinator: its own name is all it keeps.
        connection.execute(text(
            "INSERT INTO bodies (id, slug, name, name_key, kind, list_id, "
            "one_delegate_per_party, meetings_per_year, created_at) VALUES "
            "(1, 'steering', 'Steering Committee', 'steering committee', 'steering', 1, "
            "true, 2, 0), (2, 'board', 'Council', 'council', 'board', 2, false, 1, 0)"))
    engine.dispose()
    db = Database(database_url)
    db.upgrade()
    try:
        names = db.query(lambda s: dict(s.execute(text(
            "SELECT slug, names FROM bodies")).all()))
    finally:
        db.close()
    steering = names["steering"] if isinstance(names["steering"], dict) \
        else json.loads(names["steering"])
    assert steering == {"fr": "Comité directeur", "es": "Comité Directivo",
                        "de": "Lenkungsausschuss", "pt": "Comitê Diretor"}
    assert names["board"] is None
