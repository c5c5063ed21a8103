"""The README's "Deploying" step for PostgreSQL: a role that owns its database and nothing
more (no superuser) is all the service needs."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from tests.helpers import PG_ADMIN, cli, postgres_database, run


def test_a_role_that_owns_its_database_is_all_the_service_needs(tmp_path: Path) -> None:
    role = f"alliance_{uuid.uuid4().hex[:10]}"
    with postgres_database():    # skips without PostgreSQL (in CI it must be there)
        pass
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        # The README's steps: createuser --pwprompt alliance; createdb -O alliance alliance
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'secret' NOSUPERUSER NOCREATEDB "
                      "NOCREATEROLE")
        admin.execute(f'CREATE DATABASE "{role}" OWNER {role}')
    try:
        config = tmp_path / "config.toml"
        config.write_text('[site]\ndomain = "lists.example.org"\n[database]\n'
                          f'url = "postgresql://{role}:secret@127.0.0.1:5432/{role}"\n'
                          'migrate = "manual"\n')
        code, said = run(config, "db", "upgrade", "--check")
        assert code == 1 and "alliance db upgrade" in said, "a new database is behind"
        cli(config, "db", "upgrade")
        cli(config, "party", "add", "SPD", "--country", "DE", "--region", "europe")
        assert "SPD" in cli(config, "party", "list")
        with psycopg.connect(PG_ADMIN.replace("/postgres", f"/{role}")) as check:
            owners = {owner for (owner,) in check.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        assert owners == {role}, "every table belongs to the service's role"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)')
            admin.execute(f"DROP ROLE IF EXISTS {role}")
