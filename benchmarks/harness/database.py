"""The daemon's SQLite database, read-only with the stdlib, while it runs and after."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .common import HarnessError


def database_counts(path: Path) -> dict[str, dict[str, int]]:
    """Rows by state, read with the stdlib after the daemon stopped."""
    found: dict[str, dict[str, int]] = {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            for table in ("deliveries", "work"):
                found[table] = dict(db.execute(
                    f"SELECT state, count(*) FROM {table} GROUP BY state").fetchall())
            found["outgoing"] = dict(db.execute(
                "SELECT kind, count(*) FROM outgoing GROUP BY kind").fetchall())
            found["messages"] = {"stored": db.execute(
                "SELECT count(*) FROM messages").fetchone()[0]}
            found["archive"] = {"posts": db.execute(
                "SELECT count(*) FROM archive").fetchone()[0]}
    except sqlite3.Error as error:
        found["error"] = {str(error): 1}
    return found


def read_database(path: Path, sql: str, limit: float = 15.0) -> list[tuple[Any, ...]]:
    """Rows of one query, read-only with the stdlib, also while the daemon writes (WAL)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                return db.execute(sql).fetchall()
        except sqlite3.Error as error:
            if time.monotonic() > deadline:
                raise HarnessError(f"reading {path.name}: {error}") from None
            time.sleep(0.05)


class DbWatcher(threading.Thread):
    """Polls one query on the daemon's SQLite database, read-only, every `interval` s.

    `marks` name (column, minimum) pairs; `reached[name]` is the monotonic time the query
    first showed that column at or above that minimum. Stops when every mark is reached.
    """

    def __init__(self, path: Path, sql: str, marks: dict[str, tuple[int, int]],
                 limit: float, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="db-watcher")
        self.path = path
        self.sql = sql
        self.marks = marks
        self.limit = limit
        self.interval = interval
        self.reached: dict[str, float] = {}
        self.last: tuple[Any, ...] = ()
        self.done = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                                timeout=5)) as db:
            while not self.halt.is_set() and time.monotonic() < deadline:
                try:
                    row = db.execute(self.sql).fetchone() or ()
                except sqlite3.Error:
                    row = ()
                self.note(tuple(row), time.monotonic())
                if len(self.reached) == len(self.marks):
                    self.done.set()
                    return
                self.halt.wait(self.interval)

    def note(self, row: tuple[Any, ...], now: float) -> None:
        """Keep the last row read, and the time each mark it shows was first reached."""
        if row:
            self.last = row
        for name, (column, minimum) in self.marks.items():
            if name not in self.reached and row and (row[column] or 0) >= minimum:
                self.reached[name] = now
