"""Migrations: an old database keeps its data on upgrade; ids signed into tokens stay unique."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, inspect, text

from lists import service
from mailer.db import MIGRATIONS, Database, resolve_url


def upgrade_to(url: str, revision: str) -> None:
    engine = create_engine(resolve_url(url, Path(".")))
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, revision)
    engine.dispose()


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
