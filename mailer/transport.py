"""Outbound transports: how one message reaches one recipient.

`Transport` is the protocol the delivery engine speaks. Two real implementations: SMTP to a
smarthost through a pool of reused connections (opened by aiosmtplib, each transaction then
pipelined when the smarthost offers it: mailer.pipelining), and a Maildir (one file per
delivery) for a machine with no mail server. Tests pass their own transports in through the
constructor of the delivery engine; nothing here is switched by a flag.

A connection to the smarthost is made secure once, when it is opened (STARTTLS or implicit
TLS, then AUTH), and then carries many messages. Whatever goes wrong while opening it (no
STARTTLS where it is required, a certificate that does not check, a refused password) is
the hop's trouble, not the recipient's: a deferral (451) with one log line, never a bounce.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import aiosmtplib

from mailer.config import Config
from mailer.pipelining import Pipe, SessionLost
from mailer.tls import Smarthost, smarthost

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


class HopUnusable(Exception):
    """The smarthost could not be used for any message: the text says why, in one line."""


class SmtpTransport:
    """A bounded pool of long-lived SMTP connections to one smarthost."""

    def __init__(self, smarthost: Smarthost, *, connections: int, timeout: float,
                 local_hostname: str) -> None:
        self.smarthost = smarthost
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._idle: list[Session] = []
        self._slots = asyncio.Semaphore(connections)
        self._trouble = ""      # the last problem logged; said once, not once per message

    async def _connect(self) -> Session:
        """A new session, made secure and logged in as `outbound` says, or HopUnusable;
        pipelined when the smarthost offers PIPELINING."""
        hop = self.smarthost
        client = aiosmtplib.SMTP(hostname=hop.host, port=hop.port, timeout=self.timeout,
                                 local_hostname=self.local_hostname, use_tls=hop.implicit_tls,
                                 start_tls=False, tls_context=hop.tls)
        try:
            await client.connect()
            if not hop.implicit_tls:
                await self._starttls(client)
            if hop.credentials is not None:
                await self._login(client)
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
        except HopUnusable:
            client.close()
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            client.close()
            raise HopUnusable(_reason(error)) from None
        if self._trouble:
            log.info("smarthost %s: connected again", hop.name)
            self._trouble = ""
        if client.supports_extension("pipelining") and client.transport is not None:
            return Pipe(cast(asyncio.Transport, client.transport),
                        size=client.supports_extension("size"),
                        smtputf8=client.supports_extension("smtputf8"))
        return client

    async def _starttls(self, client: aiosmtplib.SMTP) -> None:
        """STARTTLS when offered (RFC 3207); when `starttls=required`, never go on in clear."""
        await client.ehlo()
        if client.supports_extension("starttls"):
            await client.starttls()
        elif self.smarthost.require_starttls:
            raise HopUnusable("offers no STARTTLS and the URL says starttls=required: "
                              "nothing is sent in clear")

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        """AUTH (RFC 4954), only over TLS: a password is never sent in clear."""
        credentials = self.smarthost.credentials
        assert credentials is not None
        if client.get_transport_info("sslcontext") is None:
            raise HopUnusable("offers no STARTTLS: the AUTH password is not sent in clear")
        try:
            await client.login(credentials.user, credentials.password)
        except aiosmtplib.SMTPAuthenticationError as error:
            raise HopUnusable(f"refused AUTH as {credentials.user!r} ({error.code} "
                              f"{error.message}): check the credentials") from None

    def _unusable(self, problem: str) -> HopReply:
        """The deferral of a message the smarthost could not take; logged once a problem."""
        text = f"smarthost {self.smarthost.name} {problem}"
        if problem != self._trouble:
            self._trouble = problem
            log.warning("%s; deliveries are deferred", text,
                        extra={"event": "smarthost", "outcome": "deferred"})
        return HopReply(451, text)

    async def send(self, sender: str, recipient: str, data: bytes) -> HopReply:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is None or not usable(client):
                    if client is not None:
                        client.close()
                    client = await self._connect()
                if isinstance(client, Pipe):
                    return await self._pipelined(client, sender, recipient, data)
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
            except HopUnusable as problem:
                return self._unusable(str(problem))
            except SessionLost as lost:
                await self._discard(client)
                return HopReply(451, f"smarthost {self.smarthost.name} {lost}")
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                await self._discard(client)
                return HopReply(451, f"smarthost {self.smarthost.name} unreachable: {error}")

    async def _pipelined(self, pipe: Pipe, sender: str, recipient: str,
                         data: bytes) -> HopReply:
        reply, reusable = await pipe.send(sender, recipient, data, self.timeout)
        if reusable:
            self._idle.append(pipe)
        else:
            pipe.close()
        return HopReply(reply.code, reply.text)

    async def _recycle(self, client: Session | None) -> None:
        """After a refusal the session is still good once reset; keep it if RSET works."""
        if client is None:
            return
        assert isinstance(client, aiosmtplib.SMTP)   # a Pipe resets itself
        try:
            await client.rset()
            self._idle.append(client)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await self._discard(client)

    async def _discard(self, client: Session | None) -> None:
        if client is not None:
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            if isinstance(client, Pipe):
                await client.quit(2)
                continue
            try:
                await asyncio.wait_for(client.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


Session = aiosmtplib.SMTP | Pipe


def usable(session: Session) -> bool:
    """Whether an idle session can carry the next message."""
    return session.usable if isinstance(session, Pipe) else session.is_connected


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


NAME_MISMATCH = (62, 64)   # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH


def _reason(error: BaseException) -> str:
    """What went wrong while opening a session, in words an operator can act on."""
    found = error if isinstance(error, ssl.SSLError) else error.__cause__
    if isinstance(found, ssl.SSLCertVerificationError):
        hint = ("put a name its certificate holds in outbound.url"
                if found.verify_code in NAME_MISMATCH else "give its CA in outbound.tls_ca_file")
        return f"failed the TLS certificate check ({found.verify_message}): {hint}"
    if isinstance(found, ssl.SSLError):
        return f"TLS failed: {found}"
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return f"refused the session: {error.code} {error.message}"
    return f"unreachable: {error}"


def from_config(config: Config, local_hostname: str) -> Transport:
    """The transport `outbound.url` names: maildir:PATH, or a smarthost (smtp://, smtps://)
    with its CA file and credentials read now (a problem stops start-up in one line)."""
    outbound = config.outbound
    if outbound.url.startswith("maildir:"):
        return MaildirTransport(config.path(outbound.url.removeprefix("maildir:")))
    return SmtpTransport(smarthost(config), connections=outbound.connections,
                         timeout=outbound.timeout, local_hostname=local_hostname)
