"""What every `alliance` command needs: the config, the database, output, one-line errors.

The command groups of the domain packages (lists.cli, meetings.cli) build on this module;
the entry point (mailer.cli) adds them to the main group. Nothing here starts the daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mailer.config import Config, ConfigError, load

if TYPE_CHECKING:
    import jinja2

    from mailer.db import Database

T = TypeVar("T")


class Context:
    """What every command needs: the config, and the database opened on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._db: Database | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load(self.config_path)
            except ConfigError as error:
                raise click.ClickException(f"config: {error}") from None
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            # Imported here: SQLAlchemy and Alembic are most of a command's start-up, and
            # `alliance --help` needs neither (issue 11, item 10).
            from mailer.db import DatabaseUnavailable, open_database

            try:
                self._db = open_database(self.config.database.url, self.config.base_dir,
                                         migrate=self.config.database.migrate == "auto")
            except DatabaseUnavailable as error:
                raise click.ClickException(str(error)) from None
        return self._db

    def close(self) -> None:
        """Close the database, if the command opened it."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def secret(self) -> bytes:
        """The key of the site's signed tokens (made and kept in the database if need be)."""
        return self.db.secret(self.config.site.secret)

    @property
    def templates(self) -> jinja2.Environment:
        """The one template environment, as the daemon makes it."""
        from mailer import templates

        return templates.environment(self.config.templates_folder or templates.TEMPLATES)

    def transaction(self, fn: Callable[..., T], *args: Any,
                    mistakes: tuple[type[Exception], ...] = ()) -> T:
        """fn(session, *args) in one transaction; the `mistakes` become one line.

        A unique key that another command took between this one's check and its commit
        (two `party add SPÖ` at once) is tried once more: the second try sees the other's
        row and says why in one line, as if the two had come one after the other.
        """
        try:
            try:
                return self.db.transaction(fn, *args)
            except Exception as error:
                from sqlalchemy.exc import IntegrityError

                if not isinstance(error, IntegrityError):
                    raise
                return self.db.transaction(fn, *args)
        except mistakes as error:
            raise click.ClickException(str(error)) from None
        except Exception as error:
            # A server that stops answering half-way is one line too (issue 11, item 7).
            from sqlalchemy.exc import OperationalError

            if not isinstance(error, OperationalError):
                raise
            from mailer.db import unavailable

            raise click.ClickException(unavailable(self.config.database.url, error)) from None


pass_context = click.make_pass_decorator(Context)


def emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    """Print rows as JSON, or as an aligned table."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(w)
                             for c, w in zip(columns, widths, strict=True)).rstrip())


def when(stamp: float | None, *, seconds: bool = True) -> str:
    """A UTC time for people ("" for none).

    >>> when(0), when(0, seconds=False), when(None)
    ('1970-01-01 00:00:00', '1970-01-01 00:00', '')
    """
    if stamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M",
                         time.gmtime(stamp))
