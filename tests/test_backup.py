"""Back up and upgrade (issue 12, item 7): `alliance backup` while the daemon serves,
`alliance restore`, and `database.migrate = "manual"` with `alliance db upgrade [--check]`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from lists.models import Member
from mailer.config import ConfigError, from_dict
from mailer.db import Database
from tests.helpers import (
    DOMAIN,
    Sink,
    cli,
    cli_error,
    http,
    mail,
    make_config,
    make_list,
    quiet,
    run,
    running,
    send,
    upgrade_to,
)

LIST = f"steering@{DOMAIN}"
ROOT = Path(__file__).resolve().parent.parent


def config_toml(folder: Path, database_url: str, **database: str) -> Path:
    """A config file for the command line, on the given database."""
    path = folder / "config.toml"
    extra = "".join(f'{key} = "{value}"\n' for key, value in database.items())
    path.write_text(f'[site]\ndomain = "{DOMAIN}"\n'
                    f'[database]\nurl = "{database_url}"\n{extra}')
    return path


def message_ids(path: Path) -> list[str]:
    """The Message-ID of every message stored in the SQLite database at `path`, by id."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT m.id, m.raw, count(w.id) FROM messages m "
                          "LEFT JOIN work w ON w.message_id = m.id GROUP BY m.id ORDER BY m.id")
        found = []
        for number, (ident, raw, units) in enumerate(rows, start=1):
            assert ident == number, "the messages in a backup have no gap"
            assert units == 1, "each message has its unit of work: committed together"
            found.append(re.search(rb"Message-ID: (<[^>]+>)", raw)[1].decode())  # type: ignore
        return found


async def test_a_backup_taken_while_mail_arrives_holds_every_message_committed_before_it(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url, site={"admin": "admin@site.test"})
    settings = config_toml(tmp_path, sqlite_url)
    acknowledged: list[str] = []
    backup = tmp_path / "backup.sqlite3"
    enough = asyncio.Event()

    async def client(port: int) -> None:
        """Sends one message after another until told it is enough."""
        while not enough.is_set():
            data = mail("a@example.com", f"postmaster@{DOMAIN}",
                        subject=f"n{len(acknowledged)}")
            await send(port, "a@example.com", [f"postmaster@{DOMAIN}"], data)
            acknowledged.append(re.search(rb"Message-ID: (<[^>]+>)", data)[1].decode())  # type: ignore

    async with running(config) as daemon:
        sending = asyncio.create_task(client(daemon.ports["smtp"]))
        while len(acknowledged) < 20:
            await asyncio.sleep(0.01)
        before = list(acknowledged)
        output = await asyncio.to_thread(cli, settings, "backup", str(backup))
        after = list(acknowledged)
        while len(acknowledged) < len(after) + 10:      # mail goes on after it, too
            await asyncio.sleep(0.01)
        enough.set()
        await sending
        await quiet(daemon)
    assert "the site secret is in it" not in output, "the tests' secret is in the config"
    saved = message_ids(backup)
    assert saved == acknowledged[:len(saved)], "a backup holds what was committed, in order"
    assert set(before) <= set(saved) and len(saved) <= len(after) + 1


async def test_a_restore_brings_back_a_working_service_whose_links_still_work(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    # No site.secret in the config: the token key is made and kept in the database.
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port, site={"secret": ""})
    settings = config_toml(tmp_path, sqlite_url)
    make_list(config, "steering", ["ana@example.com", "kofi@example.com"])
    backup = tmp_path / "saved" / "backup.sqlite3"
    backup.parent.mkdir()
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "ana@example.com", [LIST],
                   mail("ana@example.com", LIST, subject="Agenda"))
        await sink.wait_for(2)
        await quiet(daemon)
        output = cli(settings, "backup", str(backup))
        # A running daemon's database is never written over, even with --force.
        refused = cli_error(settings, "restore", str(backup), "--force")
    assert "the site secret is in it" in output
    assert refused.startswith("a daemon is serving ")
    kofi = next(d for d in sink.received if d.rcpt == "kofi@example.com")
    link = re.search(r"<https://lists\.example\.org(/unsubscribe/[^>]+)>",
                     str(kofi.message["list-unsubscribe"]))
    assert link is not None

    database = Path(sqlite_url.removeprefix("sqlite:///"))
    assert cli_error(settings, "restore", str(backup)).startswith(f"{database} exists: --force")
    for lost in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        lost.unlink(missing_ok=True)        # the disk is gone
    restored = cli(settings, "restore", str(backup))
    assert restored.startswith(f"{backup} restored to {database}: 1 messages")

    async with running(config) as daemon:
        status, _, page = await http(daemon.ports["http"], "POST", link[1],
                                     b"List-Unsubscribe=One-Click")
        left = await daemon.db.read(lambda s: s.scalars(select(Member.address)).all())
    assert status == 200, page
    assert left == ["ana@example.com"]


def test_backup_and_restore_say_what_is_wrong_in_one_line(tmp_path: Path,
                                                          sqlite_url: str) -> None:
    settings = config_toml(tmp_path, sqlite_url)
    assert cli_error(settings, "backup", str(tmp_path / "b.sqlite3")).startswith(
        "no database at ")
    cli(settings, "db", "upgrade")
    taken = tmp_path / "b.sqlite3"
    cli(settings, "backup", str(taken))
    assert cli_error(settings, "backup", str(taken)) == \
        f"{taken} exists: choose another file, or --force to write over it"
    cli(settings, "backup", str(taken), "--force")
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    assert cli_error(settings, "restore", str(junk)).startswith(f"{junk} is not a backup of ours")
    assert cli_error(settings, "restore", str(tmp_path / "none")) == \
        f"no backup at {tmp_path / 'none'}"
    lock = tmp_path / "alliance.sqlite3-serving.lock"
    lock.mkdir()            # a lock that cannot be opened, as one another user made
    assert cli_error(settings, "restore", str(taken), "--force") == (
        f"cannot open {lock}: Is a directory (run the command as the service's user)")
    postgres = config_toml(tmp_path, "postgresql://postgres@127.0.0.1:5432/alliance")
    assert cli_error(postgres, "backup", str(tmp_path / "x")) == (
        "database.url is PostgreSQL: back it up with pg_dump (the README's Operating part "
        "gives the steps)")
    assert cli_error(postgres, "restore", str(taken)) == (
        "database.url is PostgreSQL: restore with pg_restore (the README's Operating part "
        "gives the steps)")


def test_database_migrate_is_auto_or_manual() -> None:
    assert from_dict({}).database.migrate == "auto"
    with pytest.raises(ConfigError) as error:
        from_dict({"database": {"migrate": "sometimes"}})
    assert str(error.value) == 'database.migrate: expected "auto" or "manual", got \'sometimes\''


def test_manual_migration_stops_serve_and_db_upgrade_migrates(tmp_path: Path,
                                                              database_url: str) -> None:
    upgrade_to(database_url, "0001")
    settings = config_toml(tmp_path, database_url, migrate="manual")
    code, output = run(settings, "db", "upgrade", "--check")
    assert code == 1
    [line] = output.strip().splitlines()
    assert re.fullmatch(r"Error: database .* is at schema 0001, the code's is \d{4}: back it "
                        r"up, then run `alliance db upgrade`", line), line
    serve = subprocess.run([sys.executable, "-m", "mailer", "--config", str(settings), "serve"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert serve.returncode == 1
    [refusal] = serve.stderr.strip().splitlines()
    assert refusal.startswith("Error: database ") and \
        refusal.endswith("then run `alliance db upgrade` (database.migrate is manual)")
    # Other commands do not migrate behind the operator's back either.
    assert cli_error(settings, "queue").endswith("(database.migrate is manual)")

    assert re.fullmatch(r"database at the newest schema: .* \(0001 -> \d{4}\)\n",
                        cli(settings, "db", "upgrade"))
    assert re.fullmatch(r"database at the newest schema: .* \(\d{4}\)\n",
                        cli(settings, "db", "upgrade", "--check"))
    db = Database(database_url, tmp_path)
    try:
        assert db.behind() == ""
    finally:
        db.close()
