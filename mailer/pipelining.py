"""SMTP transactions in two round trips (PIPELINING, RFC 2920) on a session aiosmtplib opened.

aiosmtplib opens the session to the smarthost (EHLO, STARTTLS, AUTH) but sends one command
and waits for its reply before the next: MAIL, RCPT, DATA and the message are four round
trips and four writes a copy, and with one copy per member that was most of the daemon's
time in a fan-out. When the smarthost offers PIPELINING (Postfix always does), `Pipe` takes
the session's transport over and sends MAIL, RCPT and DATA in one write, then the message
in a second (RFC 2920 §3.1: DATA is the last command of a group).

The message is made ready for the wire with C-speed passes over it: line ends made CRLF
only where one is not (RFC 5321 §2.3.8), dot-stuffing by one replace (§4.5.2).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import NamedTuple

REPLY_LIMIT = 64 * 1024   # a reply longer than this is no smarthost's (RFC 5321 §4.5.3.1.5)
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_UNQUOTED = re.compile(r"[\x00-\x20<>\x7f]")
_GOOD = ((250,), (250, 251), (354,))   # what MAIL, RCPT and DATA answer when all is well


class Reply(NamedTuple):
    """One SMTP reply: its code and its text (the lines of a multi-line reply joined)."""

    code: int
    text: str


class SessionLost(Exception):
    """The session ended or said something that is no SMTP reply: it cannot be used again."""


def wire(message: bytes) -> tuple[bytes, int]:
    """The DATA of a message: CRLF line ends, a CRLF at the end, leading dots doubled and the
    final dot line; and its size as RFC 1870 counts it (before the dots).

    >>> wire(b"a\\n.b\\r\\n..c")
    (b'a\\r\\n..b\\r\\n...c\\r\\n.\\r\\n', 12)
    """
    ends = message.count(b"\r\n")
    if message.count(b"\n") != ends or message.count(b"\r") != ends:
        message = _LINE_ENDS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    size = len(message)
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n", size


def path(address: str, utf8: bool) -> bytes | None:
    """`<address>` for MAIL FROM or RCPT TO, or None if it cannot be written there: a
    control character, a space or an angle bracket (no command can be smuggled in), or
    non-ASCII where the smarthost has no SMTPUTF8 (RFC 6531)."""
    if _UNQUOTED.search(address):
        return None
    try:
        return b"<" + address.encode("utf-8" if utf8 else "ascii") + b">"
    except UnicodeEncodeError:
        return None


class Pipe(asyncio.Protocol):
    """An SMTP session, after EHLO (and STARTTLS, AUTH), that pipelines each transaction.

    It reads replies as they come, however the server cuts them into packets. Anything the
    server says between transactions (a 421 before it hangs up on an idle session) makes the
    session unusable, so that the next transaction opens another.
    """

    def __init__(self, transport: asyncio.Transport, *, size: bool, smtputf8: bool) -> None:
        self.transport = transport
        self.size = size
        self.smtputf8 = smtputf8
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        self._lost: SessionLost | None = None
        transport.set_protocol(self)

    @property
    def usable(self) -> bool:
        """Idle, connected and with nothing said out of turn."""
        return self._lost is None and not self._replies and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        if self._lost is not None:
            return
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end + 1])
            start = end + 1
            if not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                self._fail(f"said {line[:80]!r}, which is no SMTP reply")
                return
            self._lines.append(line[4:].strip().decode("utf-8", "replace"))
            if line[3:4] != b"-":
                self._replies.append(Reply(int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        del self._buffer[:start]
        if len(self._buffer) + sum(map(len, self._lines)) > REPLY_LIMIT:
            self._fail("sent a reply longer than any SMTP reply")
        elif len(self._replies) >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self._fail("closed the session")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"closed the session ({exc})" if exc else "closed the session")

    def _fail(self, why: str) -> None:
        if self._lost is None:
            self._lost = SessionLost(why)
        self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _read(self, count: int, timeout: float, partial: bool = False) -> list[Reply]:
        """The next `count` replies, or SessionLost (also when none came in `timeout` s:
        one timer, cheaper than asyncio.timeout at four replies a copy). `partial`: when
        the session ended after some of them, those (a 421 is followed by a hang-up)."""
        if len(self._replies) < count and self._lost is None:
            loop = asyncio.get_running_loop()
            self._wanted = count
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, self._fail, f"did not answer in {timeout:g} s")
            try:
                await waiter
            except asyncio.CancelledError:   # given up mid-transaction: never used again
                self._fail("was left mid-transaction")
                raise
            finally:
                timer.cancel()
                self._waiter = None
                self._wanted = 0
        if len(self._replies) < count and not (partial and self._replies):
            raise self._lost or SessionLost("ended without a reply")
        return [self._replies.popleft() for _ in range(min(count, len(self._replies)))]

    async def send(self, sender: str, recipient: str, message: bytes,
                   timeout: float) -> tuple[Reply, bool]:
        """One transaction: the reply that decides the message (the final one, or the first
        refusal) and whether the session can carry another. Once a refusal is read, it is
        the answer, whatever becomes of the session after it."""
        utf8 = self.smtputf8 and not (sender + recipient).isascii()
        mail_from, rcpt_to = path(sender, utf8), path(recipient, utf8)
        if mail_from is None or rcpt_to is None:
            bad = sender if mail_from is None else recipient
            why = ("holds a space, a control character or an angle bracket"
                   if _UNQUOTED.search(bad) else
                   "is not ASCII and the smarthost offers no SMTPUTF8 (RFC 6531)")
            return Reply(553, f"5.1.3 {bad!r} {why}"), True
        data, size = wire(message)
        options = (b" SIZE=%d" % size if self.size else b"") + (b" SMTPUTF8" if utf8 else b"")
        self.transport.write(b"MAIL FROM:" + mail_from + options + b"\r\nRCPT TO:" + rcpt_to
                             + b"\r\nDATA\r\n")
        replies = await self._read(3, timeout, partial=True)
        refusal = next((reply for reply, good in zip(replies, _GOOD, strict=False)
                        if reply.code not in good), None)
        if refusal is None:
            if len(replies) < 3:
                raise self._lost or SessionLost("ended without a reply")
            self.transport.write(data)
            (final,) = await self._read(1, timeout)
            return final, final.code != 421
        if len(replies) < 3 or any(reply.code == 421 for reply in replies):
            return refusal, False   # the server is closing the session (RFC 5321 §3.8)
        try:
            if replies[2].code == 354:   # DATA taken with no recipient: end it empty (§3.1)
                self.transport.write(b".\r\n")
                await self._read(1, timeout)
            self.transport.write(b"RSET\r\n")
            (reset,) = await self._read(1, timeout)
        except SessionLost:
            return refusal, False
        return refusal, reset.code == 250

    async def quit(self, timeout: float) -> None:
        """QUIT (RFC 5321 §4.1.1.10), then close, whatever the answer."""
        try:
            if self.usable:
                self.transport.write(b"QUIT\r\n")
                await self._read(1, timeout)
        except (SessionLost, OSError):
            pass
        finally:
            self.transport.close()

    def close(self) -> None:
        self.transport.close()
