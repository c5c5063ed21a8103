"""Shared pytest fixtures: a recording smarthost and the databases each test runs on.

Helpers (configs, running daemons, mail, the command line, the sites) are in
tests/helpers.py; this module holds only what pytest injects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mailer.db import Database
from tests.helpers import Sink, postgres_database


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    smarthost = Sink()
    await smarthost.start()
    yield smarthost
    await smarthost.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/alliance.sqlite3"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/alliance.sqlite3"


@pytest.fixture
def db(sqlite_url: str, tmp_path: Path) -> Iterator[Database]:
    """An upgraded SQLite database, for calling domain functions in one transaction."""
    database = Database(sqlite_url, tmp_path)
    database.upgrade()
    yield database
    database.close()
