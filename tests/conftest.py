"""Shared fixtures: a recording smarthost, databases, configs and running daemons.

Everything is real: the daemon listens on port 0 in the test's own event loop, the sink is
an aiosmtpd server on port 0, and the databases are SQLite files and PostgreSQL databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aiosmtplib
import psycopg
import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import func, select

from lists import service
from mailer.config import Config, from_dict
from mailer.daemon import Daemon, build
from mailer.db import Database
from mailer.models import Delivery, Work

DOMAIN = "lists.example.org"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- the smarthost --------------------------------------------------------------------

@dataclass
class Delivered:
    mail_from: str
    rcpt: str
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=default_policy).parsebytes(self.data.replace(b"\r\n", b"\n"))
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Sink:
    """A smarthost that records every delivery and answers as a test tells it to."""

    port: int = 0
    received: list[Delivered] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)   # recipient -> RCPT reply
    tempfail_data: int = 0                                  # answer DATA with 451 n times
    delay: float = 0.0                                      # seconds before each DATA reply
    server: asyncio.Server | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.tempfail_data > 0:
            self.tempfail_data -= 1
            return "451 4.3.0 Try again later"
        for rcpt in envelope.rcpt_tos:
            self.received.append(Delivered(envelope.mail_from, rcpt,
                                           envelope.original_content))
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test"), "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    @property
    def recipients(self) -> Counter[str]:
        return Counter(d.rcpt for d in self.received)

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Delivered]:
        """Wait until `count` deliveries have arrived (or fail the test)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"sink got {len(self.received)} of {count} deliveries")
            await asyncio.sleep(0.02)
        return self.received


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    smarthost = Sink()
    await smarthost.start()
    yield smarthost
    await smarthost.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- databases ------------------------------------------------------------------------

def _postgres_or_skip() -> None:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI needs PostgreSQL on 127.0.0.1:5432: {error}") from error
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({error})")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    _postgres_or_skip()
    name = f"alliance_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


# -- configs and daemons ----------------------------------------------------------------

def make_config(base: Path, database_url: str, *, smarthost_port: int | None = None,
                **sections: dict[str, Any]) -> Config:
    """A config for tests: port-0 listeners, quick retries, the given smarthost."""
    data: dict[str, dict[str, Any]] = {
        "site": {"domain": DOMAIN, "secret": "test-secret"},
        "database": {"url": database_url},
        "smtp": {"listen": "127.0.0.1:0"},
        "http": {"listen": "127.0.0.1:0", "base_url": "https://lists.example.org"},
        # No test depends on outside DNS: nothing answers here, so DMARC look-ups end
        # quickly with "no policy" unless a test starts its own DNS server.
        "dns": {"nameserver": "127.0.0.1:9", "timeout": 0.05},
        "lmtp": {"listen": "127.0.0.1:0"},
        "outbound": {"url": f"smtp://127.0.0.1:{smarthost_port}" if smarthost_port
                     else "maildir:outbox",
                     "retry_initial": 0.2, "retry_max": 0.5, "connections": 4},
        # Replies are read in the daemon's own process, where the tests' clock and fakes
        # reach; test_workers.py runs the worker processes.
        "router": {"processes": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(data, base)


def config_file(config: Config, folder: Path) -> Path:
    """The same site and database as a config file, for the command line."""
    path = folder / "cli.toml"
    path.write_text(f'[site]\ndomain = "{config.site.domain}"\nsecret = "test-secret"\n'
                    f'[database]\nurl = "{config.database.url}"\n')
    return path


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Daemon]:
    """A started daemon, stopped at the end of the block."""
    daemon = build(config, poll=0.1, **kwargs)
    await daemon.start()
    try:
        yield daemon
    finally:
        if not daemon.stopped.is_set():
            await daemon.stop(grace=5)


async def quiet(daemon: Daemon, timeout: float = 15.0) -> None:
    """Wait until every received message is handled and every delivery has an outcome."""
    def busy(session: Any) -> int:
        work = session.scalar(select(func.count()).select_from(Work).where(
            Work.state.in_(("pending", "working"))))
        sending = session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.state.in_(("pending", "sending"))))
        return int(work or 0) + int(sending or 0)
    deadline = time.monotonic() + timeout
    while await daemon.db.read(busy):
        assert time.monotonic() < deadline, "the daemon did not settle"
        await asyncio.sleep(0.05)


def make_list(config: Config, name: str, members: list[str], **options: Any) -> None:
    """Create a list with members, as an owner would with the CLI."""
    db = Database(config.database.url, config.base_dir)
    db.upgrade()
    try:
        def create(session: Any) -> None:
            made = service.create(session, name, **options)
            service.add_members(session, made, members)
        db.transaction(create)
    finally:
        db.close()


def members(count: int) -> list[str]:
    return [f"m{n:05d}@members.test" for n in range(1, count + 1)]


def mail(sender: str, to: str, subject: str = "Hello", body: str = "Hello, list.\n",
         **headers: str) -> bytes:
    """A small, well-formed message as a mail client would send it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@client.test>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes(policy=default_policy.clone(linesep="\r\n"))


async def send(port: int, sender: str, recipients: list[str], data: bytes) -> Any:
    """Send one message over SMTP; returns aiosmtplib's (refusals, reply)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                               timeout=10) as client:
        return await client.sendmail(sender, recipients, data)


class Clock:
    """A clock a test can move forward; handed to the daemon through build()."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float = 0, seconds: float = 0) -> None:
        self.now += days * 86_400 + seconds


def reply_to(robot_mail: Delivered, sender: str, body: str = "",
             **headers: str) -> tuple[str, bytes]:
    """(address, bytes) of a person's reply to a robot's message: quoted, Re: subject."""
    original = robot_mail.message
    target = str(original.get("reply-to") or original["from"])
    address = target.split("<")[-1].rstrip(">").strip()
    quoted = "\n".join("> " + line for line in original.get_content().splitlines()[:5])
    data = mail(sender, address, subject=f"Re: {original['subject']}",
                body=(body + "\n\n" if body else "") + quoted + "\n",
                In_Reply_To=str(original["message-id"]), **headers)
    return address, data


async def wait_quiet(sink: Sink, count: int, settle: float = 0.3) -> list[Delivered]:
    """Wait for `count` deliveries, then a moment more to see that no others follow."""
    await sink.wait_for(count)
    await asyncio.sleep(settle)
    assert len(sink.received) == count, [d.message["Subject"] for d in sink.received]
    return sink.received
