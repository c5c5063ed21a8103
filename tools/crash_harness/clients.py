"""SMTP clients that post numbered messages and send again what got no 250, like an MTA.

Each message carries its number in its Message-ID (`<bench.RUN.crash.N@members.test>`,
harness.poster.make_post). A client keeps a number in hand until the server answers 250
to its DATA: no answer (the daemon was killed), a refused connection or a 4xx means the
same message is sent again, on a new connection, after a short pause.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field

from harness.common import POSTER
from harness.poster import Session, SmtpError, make_post

POST_LIMIT = 20.0       # seconds one try (connect to the reply after DATA) may take
RETRY_PAUSE = 0.05      # seconds before a message is sent again
MAX_TRIES = 10_000_000  # tries of all the clients together, a bound on every loop (a
                        # thousand kills make some 150,000 tries at a dead port)


@dataclass
class Reply:
    """The answer to one DATA (code 0: none, the connection broke)."""

    number: int
    code: int
    text: str
    at: float           # monotonic time the answer was read


@dataclass
class Posting:
    """What the clients did, shared by them (one event loop, so no lock)."""

    run_id: str
    rcpt: str
    replies: list[Reply] = field(default_factory=list)
    sent: collections.Counter[int] = field(default_factory=collections.Counter)
    acked: collections.Counter[int] = field(default_factory=collections.Counter)
    refused: dict[int, str] = field(default_factory=dict)    # a 5xx: a finding
    first: int = 1
    next_number: int = 0
    tries: int = 0

    def __post_init__(self) -> None:
        self.next_number = self.next_number or self.first

    def message(self, number: int) -> bytes:
        """The bytes of message NUMBER (the same on every try)."""
        return make_post(number, self.run_id, "crash")[1]

    def numbers(self) -> range:
        """The numbers handed out so far."""
        return range(self.first, self.next_number)

    def unacknowledged(self) -> list[int]:
        """Numbers handed out that never got 250 nor 5xx."""
        return [n for n in self.numbers() if not self.acked[n] and n not in self.refused]


class Clients(threading.Thread):
    """`count` clients in an event loop of their own, posting to 127.0.0.1:`port`.

    New numbers are taken while `open_for_new` is set (and `limit` is not reached); once
    it is cleared each client finishes the number in hand and ends. `pause` is the wait
    after each 250.
    """

    def __init__(self, posting: Posting, port: int, count: int, *, pause: float,
                 limit: int, deadline: float) -> None:
        super().__init__(daemon=True, name="clients")
        self.posting = posting
        self.port = port
        self.count = count
        self.pause = pause
        self.limit = limit
        self.deadline = deadline
        self.open_for_new = threading.Event()
        self.open_for_new.set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._all())
        except BaseException as error:  # reported by the scenario, never lost
            self.error = error

    async def _all(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.count)))

    def _take(self) -> int | None:
        if not self.open_for_new.is_set() or \
                self.posting.next_number >= self.posting.first + self.limit:
            return None
        number = self.posting.next_number
        self.posting.next_number += 1
        return number

    async def _client(self) -> None:
        session: Session | None = None
        number = self._take()
        while number is not None and time.monotonic() < self.deadline \
                and self.posting.tries < MAX_TRIES:
            self.posting.tries += 1
            session, reply = await self.attempt(session, number)
            if 200 <= reply.code < 300 or reply.code >= 500:
                number = self._take()
                await asyncio.sleep(self.pause)
            else:
                await asyncio.sleep(RETRY_PAUSE)
        if session is not None:
            await session.quit()
            await session.close()

    async def attempt(self, session: Session | None, number: int) -> tuple[Session | None, Reply]:
        """One try of one message; the session to go on with (None after a fault)."""
        try:
            if session is None:
                session = Session()
                await asyncio.wait_for(session.open(self.port), POST_LIMIT)
            code, text = await asyncio.wait_for(self._send(session, number), POST_LIMIT)
        except SmtpError as error:
            code, text = error.code, str(error)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
            code, text = 0, f"{type(error).__name__}: {error}"
        reply = self._note(number, code, text)
        if code != 250 and session is not None:
            await session.close()
            session = None
        return session, reply

    async def _send(self, session: Session, number: int) -> tuple[int, str]:
        """MAIL, RCPT, DATA and the message; the reply to its end."""
        assert session.writer is not None
        await session.step(f"MAIL FROM:<{POSTER}>".encode(), 250)
        await session.step(f"RCPT TO:<{self.posting.rcpt}>".encode(), 250)
        await session.step(b"DATA", 354)
        session.writer.write(self.posting.message(number) + b".\r\n")
        await session.writer.drain()
        self.posting.sent[number] += 1
        code, text = await session.reply()
        return code, text.decode(errors="replace").strip()

    def _note(self, number: int, code: int, text: str) -> Reply:
        reply = Reply(number, code, text[:120], time.monotonic())
        self.posting.replies.append(reply)
        if code == 250:
            self.posting.acked[number] += 1
        elif code >= 500:
            self.posting.refused[number] = text[:200]
        return reply


async def _post_one(port: int, posting: Posting, number: int, deadline: float) -> bool:
    session: Session | None = None
    clients = Clients(posting, port, 1, pause=0, limit=0, deadline=deadline)
    with contextlib.suppress(Exception):
        while time.monotonic() < deadline:
            session, reply = await clients.attempt(session, number)
            if reply.code == 250:
                break
            await asyncio.sleep(RETRY_PAUSE)
    if session is not None:
        await session.quit()
        await session.close()
    return posting.acked[number] > 0


def post_one(port: int, posting: Posting, number: int, limit: float = 60.0) -> bool:
    """Send message NUMBER until it gets 250 (or `limit` s pass); whether it did."""
    return asyncio.run(_post_one(port, posting, number, time.monotonic() + limit))
