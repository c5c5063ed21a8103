"""The daemon's database, read-only, while it runs and after: a SQLite file in the trial's
folder (the stdlib's sqlite3), or a PostgreSQL database made for the trial (`--database
postgresql://...`: psycopg, the daemon's own driver), created before and dropped after.

The harness's SQL is the common ground of both engines: no placeholders, no booleans
summed, `||` for text.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from .common import HarnessError, log

Row = tuple[Any, ...]


class Cursor(Protocol):
    """What the harness uses of a DB-API cursor (sqlite3's and psycopg's)."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the harness uses of a DB-API connection (sqlite3's and psycopg's)."""

    def execute(self, sql: str) -> Cursor: ...
    def close(self) -> None: ...


class Store(Protocol):
    """Where one trial's database is, and how the harness reads it."""

    url: str            # database.url in the trial's config
    engine: str         # "sqlite" or "postgresql"

    def create(self) -> None: ...
    def drop(self) -> None: ...
    def connect(self) -> Connection: ...


class SqliteStore:
    """The trial's SQLite file, read with the stdlib in read-only mode (WAL: also while
    the daemon writes)."""

    engine = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def create(self) -> None:
        """Nothing: the daemon's first command makes the file."""

    def drop(self) -> None:
        """Nothing: the file goes with the trial's folder."""

    def connect(self) -> Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)


class PostgresStore:
    """A database of the trial's own on a PostgreSQL server (`--database URL`): CREATE
    DATABASE with a unique name before, DROP DATABASE after (`drop`, called on every
    trial's way out)."""

    engine = "postgresql"

    def __init__(self, server: str, label: str) -> None:
        parts = urllib.parse.urlsplit(server)
        # The database the URL names (else `postgres`) is where CREATE DATABASE is said.
        self.admin = parts._replace(path="/" + (parts.path.strip("/") or "postgres")
                                    ).geturl()
        self.name = f"alliance_bench_{re.sub(r'[^a-z0-9]+', '_', label.lower())}_" \
                    f"{secrets.token_hex(3)}"
        self.url = parts._replace(path="/" + self.name).geturl()
        self.created = False

    def _admin(self) -> Connection:
        import psycopg  # the daemon's own driver (a dependency); only PostgreSQL runs need it

        try:
            return psycopg.connect(self.admin, autocommit=True, connect_timeout=10)
        except psycopg.Error as error:
            raise HarnessError(f"PostgreSQL at {self.admin}: "
                               + " ".join(str(error).split())) from None

    def create(self) -> None:
        """CREATE DATABASE, or HarnessError."""
        with contextlib.closing(self._admin()) as db:
            db.execute(f'CREATE DATABASE "{self.name}"')
        self.created = True

    def drop(self) -> None:
        """DROP DATABASE, closing whatever is still connected to it (safe to call again)."""
        if not self.created:
            return
        try:
            with contextlib.closing(self._admin()) as db:
                db.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False
        except Exception as error:  # noqa: BLE001 (teardown: say it, go on)
            log(f"could not drop database {self.name}: {error}")

    def connect(self) -> Connection:
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                               options="-c default_transaction_read_only=on")


def make_store(url: str | None, folder: Path, label: str) -> Store:
    """The trial's store: SQLite in `folder` without `url`, else a PostgreSQL database
    of its own on the server `url` names."""
    if not url or url.startswith("sqlite"):
        return SqliteStore(folder / "alliance.sqlite3")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, label)
    raise HarnessError(f"--database {url}: only postgresql://... (or SQLite, the default)")


@contextlib.contextmanager
def reading(store: Store) -> Iterator[Connection]:
    """A read-only connection to the store, closed after."""
    db = store.connect()
    try:
        yield db
    finally:
        db.close()


def database_counts(store: Store) -> dict[str, dict[str, int]]:
    """Rows by state, read after the daemon stopped."""
    found: dict[str, dict[str, int]] = {}
    try:
        with reading(store) as db:
            for table in ("deliveries", "work"):
                found[table] = dict(db.execute(
                    f"SELECT state, count(*) FROM {table} GROUP BY state").fetchall())
            found["outgoing"] = dict(db.execute(
                "SELECT kind, count(*) FROM outgoing GROUP BY kind").fetchall())
            found["messages"] = {"stored": db.execute(
                "SELECT count(*) FROM messages").fetchone()[0]}
            found["archive"] = {"posts": db.execute(
                "SELECT count(*) FROM archive").fetchone()[0]}
    except Exception as error:  # noqa: BLE001 (sqlite3.Error or psycopg.Error: a finding)
        found["error"] = {str(error).strip(): 1}
    return found


def read_database(store: Store, sql: str, limit: float = 15.0) -> list[Row]:
    """Rows of one query, read-only, also while the daemon writes."""
    deadline = time.monotonic() + limit
    while True:
        try:
            with reading(store) as db:
                return [tuple(row) for row in db.execute(sql).fetchall()]
        except Exception as error:  # noqa: BLE001 (sqlite3.Error or psycopg.Error)
            if time.monotonic() > deadline:
                raise HarnessError(f"reading the database: {error}") from None
            time.sleep(0.05)


class DbWatcher(threading.Thread):
    """Polls one query on the daemon's database, read-only, every `interval` s.

    `marks` name (column, minimum) pairs; `reached[name]` is the monotonic time the query
    first showed that column at or above that minimum. Stops when every mark is reached.
    """

    def __init__(self, store: Store, sql: str, marks: dict[str, tuple[int, int]],
                 limit: float, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="db-watcher")
        self.store = store
        self.sql = sql
        self.marks = marks
        self.limit = limit
        self.interval = interval
        self.reached: dict[str, float] = {}
        self.last: Row = ()
        self.done = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        with reading(self.store) as db:
            while not self.halt.is_set() and time.monotonic() < deadline:
                try:
                    row = db.execute(self.sql).fetchone() or ()
                except Exception:  # noqa: BLE001 (a busy moment: read again)
                    row = ()
                self.note(tuple(row), time.monotonic())
                if len(self.reached) == len(self.marks):
                    self.done.set()
                    return
                self.halt.wait(self.interval)

    def note(self, row: Row, now: float) -> None:
        """Keep the last row read, and the time each mark it shows was first reached."""
        if row:
            self.last = row
        for name, (column, minimum) in self.marks.items():
            if name not in self.reached and row and (row[column] or 0) >= minimum:
                self.reached[name] = now
