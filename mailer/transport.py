"""Outbound transports: how one message reaches one recipient.

`Transport` is the protocol the delivery engine speaks. Two real implementations: SMTP to a
smarthost through a pool of reused aiosmtplib connections, and a Maildir (one file per
delivery) for a machine with no mail server. Tests pass their own transports in through the
constructor of the delivery engine; nothing here is switched by a flag.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiosmtplib

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HopReply:
    """What the next hop said: an SMTP code and its text."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class Transport(Protocol):
    async def send(self, sender: str, recipient: str, data: bytes) -> HopReply:
        """Hand one message to one recipient; never raises for delivery problems."""
        ...

    async def close(self) -> None:
        ...


class SmtpTransport:
    """A bounded pool of long-lived SMTP connections to one smarthost."""

    def __init__(self, host: str, port: int, *, connections: int, timeout: float,
                 local_hostname: str) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(connections)

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=self.timeout,
                                 local_hostname=self.local_hostname, start_tls=False)
        await client.connect()
        return client

    async def send(self, sender: str, recipient: str, data: bytes) -> HopReply:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                _, reply = await client.sendmail(sender, [recipient], data)
                self._idle.append(client)
                return HopReply(250, reply)
            except aiosmtplib.SMTPRecipientsRefused as refused:
                error = refused.recipients[0]
                await self._recycle(client)
                return HopReply(error.code, error.message)
            except aiosmtplib.SMTPResponseException as error:
                await self._recycle(client)
                return HopReply(error.code, error.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                await self._discard(client)
                return HopReply(451, f"smarthost {self.host}:{self.port} unreachable: {error}")

    async def _recycle(self, client: aiosmtplib.SMTP | None) -> None:
        """After a refusal the session is still good once reset; keep it if RSET works."""
        if client is None:
            return
        try:
            await client.rset()
            self._idle.append(client)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await self._discard(client)

    async def _discard(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None:
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


class MaildirTransport:
    """Writes each delivery as one file in a Maildir (tmp, fsync, rename into new)."""

    _counter = itertools.count()

    def __init__(self, path: Path) -> None:
        self.path = path
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")

    def _write(self, sender: str, recipient: str, data: bytes) -> None:
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self._counter)}.{self._host}"
        envelope = f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode()
        tmp = self.path / "tmp" / name
        with open(tmp, "wb") as handle:
            handle.write(envelope + data.replace(b"\r\n", b"\n"))
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, self.path / "new" / name)
        directory = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def send(self, sender: str, recipient: str, data: bytes) -> HopReply:
        try:
            await asyncio.to_thread(self._write, sender, recipient, data)
        except OSError as error:
            return HopReply(451, f"maildir {self.path}: {error.strerror or error}")
        return HopReply(250, "written")

    async def close(self) -> None:
        return None


def from_url(url: str, *, base: Path, connections: int, timeout: float,
             local_hostname: str) -> Transport:
    """The transport an `outbound.url` names: maildir:PATH or smtp://host:port."""
    scheme, _, rest = url.partition(":")
    if scheme == "maildir":
        path = Path(rest)
        return MaildirTransport(path if path.is_absolute() else base / path)
    parts = urlsplit(url)
    return SmtpTransport(parts.hostname or "127.0.0.1", parts.port or 25,
                         connections=connections, timeout=timeout,
                         local_hostname=local_hostname)
