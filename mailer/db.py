"""The database: engines, sessions, migrations, and threads that keep it off the event loop.

SQLAlchemy's sync engine runs in worker threads; the event loop only awaits the result.
Writes go through one writer executor (one thread on SQLite, so writers never contend and
never see "database is locked"); reads use a small pool of their own. SQLite runs in WAL
mode with `synchronous=FULL`, so a commit is on disk before we answer 250 (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailer.models import Setting

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"


def heads(folder: Path = MIGRATIONS / "versions") -> set[str]:
    """The newest revisions, read from the migration files without importing Alembic:
    those that no revision names as its down_revision."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in folder.glob("*.py"):
        source = path.read_text()
        revision = re.search(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", source, re.M)
        down = re.search(r"^down_revision\s*=\s*(.*)$", source, re.M)
        if revision:
            revisions.add(revision[1])
        if down:
            parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down[1]))
    return revisions - parents


def known_revisions(folder: Path = MIGRATIONS / "versions") -> set[str]:
    """Every revision the migration files name."""
    return {found[1] for path in folder.glob("*.py")
            if (found := re.search(r"^revision\s*=\s*['\"]([^'\"]+)['\"]",
                                   path.read_text(), re.M))}


def resolve_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path relative to the config file's folder, and create it.

    >>> resolve_url("postgresql://u@h/db", Path("/srv"))
    'postgresql+psycopg://u@h/db'
    >>> resolve_url("postgres://u@h/db", Path("/srv"))
    'postgresql+psycopg://u@h/db'
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver we ship; SQLAlchemy's bare name means psycopg2, and
        # `postgres://` is the alias libpq, Heroku and many hosts write.
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return parsed.render_as_string(hide_password=False)
    path = Path(parsed.database)
    if not path.is_absolute():
        path = base_dir / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


class DatabaseUnavailable(Exception):
    """The database cannot be opened; one line saying what and what to do."""


class SchemaBehind(DatabaseUnavailable):
    """The schema is not the code's newest and `database.migrate` is manual."""


def open_database(url: str, base_dir: Path = Path("."), *, migrate: bool = True) -> Database:
    """The database at the newest schema, or DatabaseUnavailable in one line (issue 11,
    item 7: a missing folder, a stopped server or a bad URL is no traceback).

    Without `migrate` (`database.migrate = "manual"`) a schema behind the code's is
    SchemaBehind, for the operator to back up and run `alliance db upgrade`.
    """
    try:
        db = Database(url, base_dir)
        if migrate:
            db.upgrade()
        else:
            behind = db.behind()
    except (OSError, SQLAlchemyError, ValueError, TypeError) as error:
        # ValueError and TypeError: what SQLAlchemy raises on a URL it cannot take apart.
        raise DatabaseUnavailable(unavailable(url, error)) from None
    if not migrate and behind:
        db.close()
        raise SchemaBehind(f"{behind} (database.migrate is manual)")
    return db


def unavailable(url: str, error: BaseException) -> str:
    """One line for an error opening `url`: the database, the cause, what to do."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        shown = url
    if isinstance(error, DBAPIError) and error.orig is not None:
        cause = str(error.orig)
    elif isinstance(error, OSError):
        cause = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
    else:
        cause = str(error)
    cause = " ".join(cause.split("\n")[0].split()) or type(error).__name__
    return (f"database {shown}: cannot open it ({cause}); check database.url in the config, "
            "that its folder can be written, and that the server runs")


def _sqlite_pragmas(engine: Engine, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # A writer takes the lock up front: a deferred transaction that reads first and
        # writes later can fail with SQLITE_BUSY without waiting for busy_timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """Engines, session factories and the executors that run database work."""

    def __init__(self, url: str, base_dir: Path = Path(".")) -> None:
        self.url = resolve_url(url, base_dir)
        self.is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.writer = create_engine(self.url, pool_size=1, max_overflow=0)
            self.reader = create_engine(self.url, pool_size=4, max_overflow=0)
            _sqlite_pragmas(self.writer, immediate=True)
            _sqlite_pragmas(self.reader, immediate=False)
            writers = 1
        else:
            self.writer = create_engine(self.url, pool_size=6, max_overflow=2,
                                        pool_pre_ping=True)
            self.reader = self.writer
            writers = 4
        self.write_session = sessionmaker(self.writer, expire_on_commit=False)
        self.read_session = sessionmaker(self.reader, expire_on_commit=False)
        self._write_pool = ThreadPoolExecutor(writers, thread_name_prefix="db-write")
        self._read_pool = ThreadPoolExecutor(4, thread_name_prefix="db-read")

    # -- running work -----------------------------------------------------------------

    def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(session, *args) in one write transaction, here in this thread."""
        with self.write_session.begin() as session:
            return fn(session, *args)

    def query(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(session, *args) read-only, here in this thread."""
        with self.read_session() as session:
            return fn(session, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(session, *args) in one committed transaction on the writer thread.

        A write once handed over always runs to its end, even if the awaiting task is
        cancelled: cancelling must never drop a transaction that is queued but not begun
        (such as the record that deliveries are done).
        """
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(
            self._write_pool, functools.partial(self.transaction, fn, *args)))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(session, *args) on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._read_pool, functools.partial(self.query, fn, *args))

    # -- schema -----------------------------------------------------------------------

    def at_head(self) -> bool:
        """Whether the schema is at the newest revision already (then every command can
        skip Alembic, a tenth of a second of its start-up; issue 11, item 10)."""
        try:
            with self.reader.connect() as connection:
                found = set(connection.execute(text(
                    "SELECT version_num FROM alembic_version")).scalars())
        except Exception:
            return False       # no database yet, or no alembic_version: migrate
        return bool(found) and found == heads()

    def revisions(self) -> set[str]:
        """The schema's revisions as recorded in the database (none for a new one)."""
        with self.reader.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return set()
            return set(connection.execute(text(
                "SELECT version_num FROM alembic_version")).scalars())

    def behind(self) -> str:
        """"" when the schema is the code's newest; else one line saying how it differs
        and what to do."""
        found, newest = self.revisions(), heads()
        if found == newest:
            return ""
        shown = make_url(self.url).render_as_string(hide_password=True)
        at = ", ".join(sorted(found))
        if not found:
            return f"database {shown} has no schema yet: run `alliance db upgrade` to make it"
        if found - known_revisions():
            return (f"database {shown} is at schema {at}, which this version does not know "
                    "(a newer version migrated it?): run that version, or restore a backup")
        return (f"database {shown} is at schema {at}, the code's is "
                f"{', '.join(sorted(newest))}: back it up, then run `alliance db upgrade`")

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision (creating the database)."""
        if self.at_head():
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig

        alembic = AlembicConfig()
        alembic.set_main_option("script_location", str(MIGRATIONS))
        with self.writer.connect() as connection:
            if self.is_sqlite:
                # Batch migrations rebuild tables; SQLite must not check foreign keys
                # half-way through (and the pragma has no effect inside a transaction).
                connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA foreign_keys=OFF")
            try:
                with connection.begin():
                    if not self.is_sqlite:
                        # Two daemons starting together must not both migrate.
                        connection.execute(text("SELECT pg_advisory_xact_lock(74201)"))
                    alembic.attributes["connection"] = connection
                    command.upgrade(alembic, "head")
                    if self.is_sqlite and connection.exec_driver_sql(
                            "PRAGMA foreign_key_check").first() is not None:
                        raise RuntimeError("the migration left rows with broken references")
            finally:
                if self.is_sqlite:
                    connection.connection.driver_connection.execute(  # type: ignore
                        "PRAGMA foreign_keys=ON")

    def secret(self, configured: str) -> bytes:
        """The token key: the configured one, or one made once and kept in the database."""
        if configured:
            return configured.encode()

        def get_or_make(session: Session) -> str:
            row = session.scalar(select(Setting).where(Setting.key == "secret"))
            if row is None:
                row = Setting(key="secret", value=secrets.token_hex(32))
                session.add(row)
            return row.value

        return self.transaction(get_or_make).encode()

    def close(self) -> None:
        self._write_pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)
        self.writer.dispose()
        self.reader.dispose()
