"""Intake: the SMTP and LMTP listeners (aiosmtpd) and the durable inbox behind them.

Each RCPT is resolved at once against the address table; an address we do not serve is
refused before any body is sent. After DATA the raw bytes and the envelope are committed,
and only then do we answer 250 (LMTP: one status per recipient, RFC 2033 §4.2). Messages
arriving together are committed together (group commit), so durability costs one disk
flush per batch, not per message. Nothing else happens before the 250 (RFC 1047).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import errno
import hashlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import insert

from mailer import events, logs, screen, smtp_replies
from mailer.addresses import AddressError, Route, normalize, resolve
from mailer.config import IntakeSection
from mailer.db import Database
from mailer.models import Message, Work

log = logging.getLogger(__name__)

SCREEN_INLINE = 256 * 1024   # messages smaller than this are screened on the event loop
LARGE_BODY = 1024 * 1024      # a body past this size waits for one of LARGE_BODIES turns
LARGE_BODIES = 4


@dataclass(frozen=True)
class Arrival:
    """A message as the client handed it over, before it is stored."""

    protocol: str
    peer: str
    helo: str
    mail_from: str
    recipients: tuple[str, ...]
    raw: bytes
    tls: bool = False           # the session had done STARTTLS


def _store(session: Any, arrivals: list[Arrival], domain: str, hostname: str) -> list[int]:
    """Insert the arrivals and their recipients in bulk; returns the message ids, in order."""
    now = time.time()
    rows = []
    for arrival in arrivals:
        raw = _trace(arrival, hostname) + arrival.raw
        rows.append({"received_at": now, "protocol": arrival.protocol,
                     "peer": arrival.peer[:100], "mail_from": arrival.mail_from,
                     "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw})
    ids = list(session.execute(insert(Message).returning(Message.id,
                                                         sort_by_parameter_order=True),
                               rows).scalars())
    work = []
    for arrival, message_id in zip(arrivals, ids, strict=True):
        for recipient in arrival.recipients:
            route = resolve(recipient, domain)
            assert route is not None, "recipients were resolved at RCPT time"
            work.append({"message_id": message_id, "recipient": recipient.lower(),
                         "role": route.role.value, "list_name": route.list,
                         "token": route.token, "state": "pending", "attempts": 0,
                         "due_at": now})
    session.execute(insert(Work), work)
    events.note(session, "received", "stored", len(ids))
    return ids


def received(arrival: Arrival, stored_id: int) -> None:
    """The log line of a message taken in: committed, and about to be answered 250."""
    if log.isEnabledFor(logging.INFO):
        log.info("received message %d from %s for %s", stored_id, arrival.mail_from or "<>",
                 ", ".join(arrival.recipients),
                 extra={"event": "received", "message_id": logs.message_id(arrival.raw),
                        "stored_id": stored_id, "recipients": list(arrival.recipients),
                        "outcome": "stored"})


def _trace(arrival: Arrival, hostname: str) -> bytes:
    """The Received: header we add (RFC 5321 §4.4); it also feeds hop counting. A session
    over STARTTLS says `with ESMTPS` (RFC 3848 §2)."""
    helo = "".join(c for c in arrival.helo if c.isalnum() or c in ".-[]:")[:100] or "unknown"
    stamp = email.utils.formatdate(localtime=False)
    protocol = "ESMTPS" if arrival.tls else arrival.protocol.upper()
    return (f"Received: from {helo} ({arrival.peer})\r\n\tby {hostname} with "
            f"{protocol}; {stamp}\r\n").encode("ascii", "replace")


class Arrivals:
    """How many messages arrived in the last second: while they keep coming, the
    delivery engine yields to intake. One post alone is no burst: its fan-out starts at
    full speed."""

    WINDOW = 1.0      # seconds
    BURST = 3         # arrivals within WINDOW that make intake busy

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def note(self) -> None:
        self._times.append(time.monotonic())
        self._forget()

    def busy(self) -> bool:
        """Whether BURST messages or more arrived in the last WINDOW seconds."""
        self._forget()
        return len(self._times) >= self.BURST

    def _forget(self) -> None:
        old = time.monotonic() - self.WINDOW
        while self._times and self._times[0] < old:
            self._times.popleft()


class Inbox:
    """Commits arrivals to the database in groups; each waiter learns its message id."""

    def __init__(self, db: Database, domain: str, hostname: str,
                 on_stored: Callable[[], None], arrivals: Arrivals | None = None) -> None:
        self._db = db
        self.arrivals = arrivals or Arrivals()
        self._domain = domain
        self._hostname = hostname
        self._on_stored = on_stored
        self._pending: list[tuple[Arrival, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inbox")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, waiter in self._pending:
            waiter.cancel()

    async def store(self, arrival: Arrival) -> int:
        """Store one arrival durably; returns its message id once it is committed."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.arrivals.note()
        self._pending.append((arrival, waiter))
        self._wake.set()
        return await waiter

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending[:200], self._pending[200:]
            if self._pending:
                self._wake.set()
            if not batch:
                continue
            try:
                ids = await self._db.write(_store, [a for a, _ in batch], self._domain,
                                           self._hostname)
            except Exception as error:  # every waiter answers 451; nothing was committed
                log.exception("storing %d message(s) failed", len(batch))
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            for (arrival, waiter), message_id in zip(batch, ids, strict=True):
                if not waiter.done():
                    waiter.set_result(message_id)
                received(arrival, message_id)
            self._on_stored()


class Gate:
    """Tracks open sessions and work in progress, so that shutdown can drain them."""

    def __init__(self) -> None:
        self.draining = False
        self.sessions: set[Listener] = set()
        self.clients: collections.Counter[str] = collections.Counter()  # SMTP, by address
        self.large_bodies = asyncio.Semaphore(LARGE_BODIES)
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.busy += 1
        self.idle.clear()

    def leave(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            self.idle.set()

    async def drain(self, grace: float) -> None:
        """Refuse new sessions, let stored-in-progress messages finish, then hang up."""
        self.draining = True
        try:
            await asyncio.wait_for(self.idle.wait(), grace)
        except TimeoutError:
            log.warning("%d message(s) still being stored at shutdown", self.busy)
        for session in list(self.sessions):
            session.hang_up()


def storage_fault_reply(error: BaseException) -> str:
    """452 4.3.1 when storage is full (RFC 3463 §3.4), else 451 4.3.0: both temporary.

    >>> storage_fault_reply(OSError(errno.ENOSPC, "No space left on device"))[:9]
    '452 4.3.1'
    >>> storage_fault_reply(RuntimeError("database is locked"))[:9]
    '451 4.3.0'
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return smtp_replies.INSUFFICIENT_STORAGE
        if "full" in str(current).lower() and ("disk" in str(current).lower()
                                               or "database" in str(current).lower()):
            return smtp_replies.INSUFFICIENT_STORAGE   # SQLite: "database or disk is full"
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return smtp_replies.TEMPORARY_FAILURE


class Handler:
    """aiosmtpd hooks: refuse at RCPT what we do not serve; commit, then answer DATA."""

    def __init__(self, *, protocol: str, domain: str, limits: IntakeSection, inbox: Inbox,
                 accepts: Callable[[Route], Awaitable[bool]], gate: Gate,
                 latency: Callable[[float], None] = lambda seconds: None) -> None:
        self.protocol = protocol
        self.latency = latency      # told, for each message stored, end of DATA to 250
        self.domain = domain.lower()
        self.limits = limits
        self.inbox = inbox
        self.accepts = accepts
        self.gate = gate
        self.screen_limits = screen.Limits(
            header_size=limits.max_header_size, header_count=limits.max_header_count,
            mime_depth=limits.max_mime_depth, mime_parts=limits.max_mime_parts,
            encoded_words=limits.max_encoded_words)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if address not in ("", "<>"):
            try:
                address = normalize(address)
            except AddressError:
                return smtp_replies.BAD_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return smtp_replies.MAIL_OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.lower() == "postmaster":
            # RFC 5321 §4.1.1.3: "RCPT TO:<Postmaster>", with no domain, must be taken.
            address = f"postmaster@{self.domain}"
        try:
            address = normalize(address)
        except AddressError:
            return smtp_replies.BAD_ADDRESS
        if address in envelope.rcpt_tos:
            return smtp_replies.RCPT_OK  # the same list twice gets one copy, not two
        if len(envelope.rcpt_tos) >= self.limits.max_recipients:
            return smtp_replies.TOO_MANY_RECIPIENTS
        route = resolve(address, self.domain)
        if route is None:
            local_domain = address.rpartition("@")[2] == self.domain
            return smtp_replies.UNKNOWN_ADDRESS if local_domain else smtp_replies.NO_RELAY
        if not await self.accepts(route):
            return smtp_replies.UNKNOWN_ADDRESS
        envelope.rcpt_tos.append(address)
        return smtp_replies.RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.monotonic()
        raw = envelope.original_content or b""
        refusal = await self.screen(raw)
        if refusal is not None:
            log.info("message from %s refused at DATA: %s", envelope.mail_from, refusal)
            return self._per_recipient(envelope, refusal)
        arrival = Arrival(protocol=self.protocol, peer=str(session.peer[0] if session.peer
                                                           else "unknown"),
                          helo=session.host_name or "",
                          mail_from="" if envelope.mail_from in (None, "<>")
                          else envelope.mail_from,
                          recipients=tuple(envelope.rcpt_tos), raw=raw,
                          tls=session.ssl is not None)
        self.gate.enter()
        try:
            await self.inbox.store(arrival)
            status = smtp_replies.OK
            self.latency(time.monotonic() - started)
        except Exception as error:
            status = storage_fault_reply(error)
        finally:
            self.gate.leave()
        return self._per_recipient(envelope, status)

    def _per_recipient(self, envelope: Envelope, status: str) -> str:
        """LMTP answers DATA once per recipient (RFC 2033 §4.2); SMTP once."""
        if self.protocol == "lmtp":
            return "\r\n".join(status for _ in envelope.rcpt_tos)
        return status

    async def screen(self, raw: bytes) -> str | None:
        """The refusal of a message over a cap (mailer.screen), or None. Large messages
        are screened on a thread, so that the event loop goes on serving the others."""
        if len(raw) < SCREEN_INLINE:
            return screen.check(raw, self.screen_limits)
        return await asyncio.to_thread(screen.check, raw, self.screen_limits)

    async def handle_exception(self, error: Exception) -> str:
        log.error("intake fault: %r", error, exc_info=error)
        return smtp_replies.TEMPORARY_FAILURE


# Calls of one command per session. An MTA in front reuses its connection for thousands of
# messages, so MAIL, RCPT and DATA are generous; commands that only probe or stall are not.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"\s*<({_ATOM}(?:\.{_ATOM})*)@({_ATOM}(?:\.{_ATOM})*)>\s*([^(]*)",
                         re.DOTALL)


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) of `<local@domain> PARAMS` when both halves are dot-atoms,
    as nearly every client sends them, else None.

    This is what aiosmtpd's full parser (the email package's) returns for such a path, at
    a tenth of its cost; anything else (quoted local parts, address literals, comments)
    is left to that parser.

    >>> plain_path(" <ana.silva+x@ps.example> SIZE=1200 BODY=8BITMIME")
    ('ana.silva+x@ps.example', 'SIZE=1200 BODY=8BITMIME')
    >>> plain_path('<"ana silva"@ps.example>') is None
    True
    """
    found = _PLAIN_PATH.fullmatch(arg)
    return (f"{found.group(1)}@{found.group(2)}", found.group(3)) if found else None


CALL_LIMITS = {"NOOP": 100, "RSET": 1000, "VRFY": 20, "EXPN": 20, "HELP": 20, "*": 100_000}


class Listener(SMTP):
    """aiosmtpd's SMTP session with our limits, strict envelope addresses and drain.

    Beyond aiosmtpd's own limits: sessions at once (all, and per client address on SMTP),
    a deadline for a session that completes no message, a cut-off after `max_errors`
    refusals without a message delivered (Postfix's smtpd_hard_error_limit), and a 421
    before any close (RFC 5321 §4.2.2, §3.8)."""

    def __init__(self, handler: Handler, limits: IntakeSection, hostname: str, *,
                 tls: ssl.SSLContext | None = None, require_tls: bool = False) -> None:
        # +1 for the transparency dot (RFC 5321 §4.5.2), as aiosmtpd's own default does.
        self.line_length_limit = limits.max_line_length + 1
        self.local_part_limit = 64
        super().__init__(handler, data_size_limit=limits.max_message_size,
                         hostname=hostname, ident="Alliance Mail", timeout=limits.timeout,
                         command_call_limit=CALL_LIMITS, tls_context=tls,
                         require_starttls=require_tls)
        self.gate = handler.gate
        self.limits = limits
        self.counted = handler.protocol == "smtp"   # an MTA in front (LMTP) is not capped
        self.client = ""
        self.errors = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        starttls = self._original_transport is not None
        super().connection_made(transport)
        if starttls:
            return  # the same session, now over TLS (RFC 3207 §4.2): counted once
        self.gate.sessions.add(self)
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "unknown"
        if self.counted:
            self.gate.clients[self.client] += 1
        self._restart_deadline()

    def connection_lost(self, error: Exception | None) -> None:
        if self in self.gate.sessions and self.counted:
            self.gate.clients[self.client] -= 1
            if self.gate.clients[self.client] <= 0:
                del self.gate.clients[self.client]
        self.gate.sessions.discard(self)
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        refusal = smtp_replies.SHUTTING_DOWN if self.gate.draining else self._over_capacity()
        if refusal is not None:
            await self.push(refusal)
            self.hang_up(say_goodbye=False)
            return
        await super()._handle_client()

    def _over_capacity(self) -> str | None:
        if len(self.gate.sessions) > self.limits.max_connections:
            return smtp_replies.TOO_MANY_CONNECTIONS
        if self.counted and self.gate.clients[self.client] > \
                self.limits.max_connections_per_client:
            log.warning("too many sessions from %s", self.client)
            return smtp_replies.TOO_MANY_FROM_CLIENT
        return None

    async def push(self, status: AnyStr) -> None:
        """Our reply texts where aiosmtpd has its own; count 5xx refusals; a delivered message
        restarts the session's deadline and forgives earlier refusals."""
        if isinstance(status, bytes):
            await super().push(status)
            return
        if status.startswith("500 Error: strict ASCII mode"):
            status = smtp_replies.NON_ASCII_ADDRESS   # RFC 6531 §3.5
        if status.startswith(smtp_replies.OK):
            self.errors = 0
            self._restart_deadline()
        elif status[:1] == "5":
            self.errors += 1        # the client's mistakes; never our own 4xx troubles
        await super().push(status)
        if self.errors >= self.limits.max_errors:
            log.warning("session from %s closed after %d errors", self.client, self.errors)
            self.hang_up(smtp_replies.TOO_MANY_ERRORS)

    def _timeout_cb(self) -> None:
        """Silent for `intake.timeout` seconds (RFC 5321 §4.5.3.2): say so, then close."""
        self.hang_up(smtp_replies.TIMEOUT)

    def _restart_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = asyncio.get_running_loop().call_later(
            self.limits.session_deadline, self.hang_up, smtp_replies.SESSION_TOO_LONG)

    def hang_up(self, say_goodbye: bool | str = True) -> None:
        """Close the session, first with a 421 (SHUTTING_DOWN, or the text given)."""
        # Duck-typed: uvloop's transports (what `alliance serve` runs on) are not
        # asyncio.WriteTransport instances, and must be closed all the same.
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            return
        if say_goodbye:
            text = say_goodbye if isinstance(say_goodbye, str) else smtp_replies.SHUTTING_DOWN
            transport.write(text.encode() + b"\r\n")
        transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        """DATA as aiosmtpd reads it (RFC 5321 §4.1.1.4, §4.5.2), into one buffer rather
        than an object per line, and with at most LARGE_BODIES bodies past LARGE_BODY
        bytes read at once: twenty 10 MB messages arriving together cost one buffer each,
        a few at a time, not twenty lists of lines."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        async with contextlib.AsyncExitStack() as large:
            body, refusal = await self._read_body(large)
            if refusal is not None:
                self.envelope = self._create_envelope()
                await self.push(refusal)
                return
            self.envelope.content = self.envelope.original_content = bytes(body)
            del body
            status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push(status)

    async def _read_body(self, large: contextlib.AsyncExitStack) -> tuple[bytearray, str | None]:
        """The body up to the lone dot, unstuffed; or the refusal, once it is all read
        (RFC 5321 §4.2.5: the reply waits for the end of data)."""
        body = bytearray()
        refusal: str | None = None
        waited = False
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as error:
                refusal = refusal or smtp_replies.LINE_TOO_LONG
                await self._reader.read(error.consumed)
                body.clear()
                continue
            if line == b".\r\n":
                break
            if refusal is None and len(body) + len(line) > (self.data_size_limit or 1 << 62):
                refusal = smtp_replies.MESSAGE_TOO_LARGE
                body = bytearray()
            if refusal is not None:
                continue
            if len(line) > self.line_length_limit:
                refusal = smtp_replies.LINE_TOO_LONG
                body = bytearray()
                continue
            body += line[1:] if line.startswith(b".") else line
            if not waited and len(body) > LARGE_BODY:
                waited = True
                await large.enter_async_context(self.gate.large_bodies)
        return body, refusal

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Refuse what CPython's parser would silently rewrite (encoded words, routes)."""
        raw = arg.strip()
        if raw.startswith("<"):
            raw = raw[1:raw.find(">")] if ">" in raw else raw[1:]
        else:
            raw = raw.split(" ", 1)[0]
        if "=?" in raw or raw.startswith("@") or any(ord(c) < 33 for c in raw):
            return None, None
        plain = plain_path(arg)
        if plain is not None and not (self.local_part_limit and
                                      len(plain[0].rpartition("@")[0]) > self.local_part_limit):
            return plain
        try:
            address, params = super()._getaddr(arg)
        except (IndexError, ValueError):    # CPython's parser trips on some paths (`"`)
            return None, None
        if address == "<>" and raw == "":
            return address, params  # the null sender of bounces (RFC 5321 §4.5.5)
        if address and address != raw:
            return None, None
        return address, params


class LmtpListener(Listener, LMTP):
    """The same session speaking LMTP (RFC 2033): LHLO, and a status per recipient."""
