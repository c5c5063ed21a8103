"""Backups of a SQLite database, taken while the daemon serves, and their restore.

A backup is SQLite's online backup (`sqlite3.Connection.backup`) in one step: one read
transaction copies the database as of one commit, while the daemon goes on writing beside it
(WAL). It is written to a temporary file, checked (`PRAGMA integrity_check`), made one file
(no WAL beside it), synced, then renamed into place. The site secret that keys every token
is a row of the database (settings) unless `site.secret` is set in the config: then the
config file must be kept with the backup.

A restore refuses to write over the database of a running daemon: each daemon holds a
shared lock on `<database>-serving.lock` while it serves, and a restore needs it alone.
PostgreSQL is backed up with pg_dump (the README's Operating part).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import make_url

from mailer.db import resolve_url


class BackupError(Exception):
    """A backup or restore that cannot be done, in one line."""


@dataclass(frozen=True)
class Summary:
    """What a backup holds: messages received, the schema, and whether the secret is in."""

    messages: int
    schema: str
    secret: bool


def sqlite_file(url: str, base_dir: Path) -> Path | None:
    """The file of a SQLite `database.url` (relative to the config's folder), else None.

    >>> sqlite_file("sqlite:///var/a.sqlite3", Path("/srv"))
    PosixPath('/srv/var/a.sqlite3')
    >>> sqlite_file("postgresql://u@h/db", Path("/srv")) is None
    True
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if not Path(parsed.database).is_absolute():
        parsed = make_url(resolve_url(url, base_dir))
    return Path(str(parsed.database))


def lock_file(database: Path) -> Path:
    return database.with_name(database.name + "-serving.lock")


@contextlib.contextmanager
def serving(database: Path) -> Iterator[None]:
    """Held by a daemon while it serves the database: no restore can write over it."""
    handle = _lock(database, fcntl.LOCK_SH,
                   f"{database} is being restored: start the daemon once the restore is done")
    try:
        yield
    finally:
        handle.close()


def _lock(database: Path, kind: int, busy: str) -> BinaryIO:
    try:
        handle = open(lock_file(database), "a+b")  # noqa: SIM115 -- held until released
    except OSError as error:
        raise BackupError(f"cannot open {lock_file(database)}: {error.strerror or error} "
                          "(run the command as the service's user)") from None
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BackupError(busy) from None
    return handle


def backup(source: Path, destination: Path, *, force: bool = False) -> Summary:
    """Copy the database at `source` to `destination`, consistent as of one commit."""
    if not source.exists():
        raise BackupError(f"no database at {source}: check database.url in the config")
    if destination.exists() and not force:
        raise BackupError(f"{destination} exists: choose another file, or --force to "
                          "write over it")
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        with contextlib.closing(sqlite3.connect(source, timeout=30)) as live, \
                contextlib.closing(sqlite3.connect(partial)) as copy:
            live.backup(copy)            # pages=-1: in one step, one read transaction
            copy.execute("PRAGMA journal_mode=DELETE")
            summary = check(copy, partial)
        _sync(partial)
        os.replace(partial, destination)
        _sync(destination.parent)
    except sqlite3.Error as error:
        raise BackupError(f"cannot back up {source} to {destination}: {error}") from None
    except OSError as error:
        raise BackupError(f"cannot write {destination}: {error.strerror or error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return summary


def restore(source: Path, target: Path, *, force: bool = False) -> Summary:
    """Put the backup at `source` in place of the database at `target` (stopped)."""
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as found:
            summary = check(found, source)
    except sqlite3.DatabaseError as error:
        raise BackupError(f"{source} is not a backup of ours ({error})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = _lock(target, fcntl.LOCK_EX,
                   f"a daemon is serving {target}: stop it first (systemctl stop alliance-mail)")
    try:
        if target.exists() and target.stat().st_size > 0 and not force:
            raise BackupError(f"{target} exists: --force to put the backup in its place "
                              "(what is in it now is lost)")
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) \
                    as backup_file, contextlib.closing(sqlite3.connect(partial)) as copy:
                backup_file.backup(copy)
            _sync(partial)
            # An old WAL beside the new file would be replayed into it: it goes first.
            for stale in (Path(f"{target}-wal"), Path(f"{target}-shm")):
                stale.unlink(missing_ok=True)
            os.replace(partial, target)
            _sync(target.parent)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as error:
        raise BackupError(f"cannot write {target}: {error.strerror or error}") from None
    finally:
        handle.close()
    return summary


def check(connection: sqlite3.Connection, path: Path) -> Summary:
    """The summary of a database of ours that passes SQLite's integrity check."""
    verdict = connection.execute("PRAGMA integrity_check").fetchone()[0]
    if verdict != "ok":
        raise BackupError(f"{path} fails SQLite's integrity check: {verdict}")
    try:
        schema = ", ".join(sorted(row[0] for row in connection.execute(
            "SELECT version_num FROM alembic_version")))
        messages = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
        secret = connection.execute(
            "SELECT count(*) FROM settings WHERE key = 'secret'").fetchone()[0] > 0
    except sqlite3.OperationalError:
        raise BackupError(f"{path} is not an Alliance Mail database") from None
    return Summary(int(messages), schema, secret)


def _sync(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
