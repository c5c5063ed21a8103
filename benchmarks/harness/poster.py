"""The SMTP clients that post: many sessions at once, each sending from one shared queue."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import time
from dataclasses import dataclass, field

from .common import LIST_ADDRESS, LOOPBACK, POSTER

MESSAGE_SIZE = 2048                 # bytes per post, headers included
SMTP_STEP_TIMEOUT = 60.0            # seconds for any one SMTP reply to the poster

# One message to post: (index, Message-ID, bytes, MAIL FROM, RCPT TO).
Post = tuple[int, str, bytes, str, str]


class SmtpError(Exception):
    """An SMTP reply other than the one expected (`code` 0: no reply at all)."""

    def __init__(self, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.code = code


@dataclass
class Posted:
    """One message the server answered at the end of DATA."""

    index: int
    message_id: str
    code: int
    sent_at: float      # end of DATA written
    replied_at: float   # its reply read

    @property
    def latency(self) -> float:
        """End of DATA written -> its reply read, in seconds."""
        return self.replied_at - self.sent_at


@dataclass
class PostRun:
    """What the clients achieved together."""

    posted: list[Posted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed_421: int = 0   # sessions the server ended with 421; the post was sent again
    started: float = 0.0
    finished: float = 0.0

    def accepted(self) -> list[Posted]:
        """The messages that got 250."""
        return [p for p in self.posted if p.code == 250]


def make_post(index: int, run_id: str, scenario: str, *, to: str = LIST_ADDRESS,
              size: int = MESSAGE_SIZE) -> tuple[str, bytes]:
    """A plain-text post of `size` bytes with a unique Message-ID."""
    other = "" if to == LIST_ADDRESS else to.split("@")[0] + "."    # G's second list
    message_id = f"<bench.{run_id}.{scenario}.{other}{index}@members.test>"
    head = (f"From: <{POSTER}>\r\nTo: <{to}>\r\n"
            f"Subject: benchmark {scenario} post {index}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: {message_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = (f"{index} ".ljust(70, "x") + "\r\n").encode()
    room = max(size - len(head), len(line))
    body = (line * (room // len(line) + 1))[:room]
    body = body[:-2] + b"\r\n" if not body.endswith(b"\r\n") else body
    return message_id, head.encode() + body


class Session:
    """One SMTP session of one client; `current` is the post in hand, if any."""

    def __init__(self, lmtp: bool = False) -> None:
        self.lmtp = lmtp    # LHLO, as Postfix in front speaks to our LMTP listener
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.current: Post | None = None

    async def open(self, port: int) -> None:
        """Connect, read the greeting, say EHLO."""
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, port), SMTP_STEP_TIMEOUT)
        code, text = await self.reply()
        if code != 220:
            raise SmtpError(f"greeting: {text!r}", code)
        await self.step(b"LHLO bench-mx.members.test" if self.lmtp
                        else b"EHLO bench-client.members.test", 250)

    async def reply(self) -> tuple[int, bytes]:
        """The server's next reply: its code and all its lines."""
        assert self.reader is not None
        lines = []
        for _ in range(100):  # bounded: no reply has more lines than that
            line = await asyncio.wait_for(self.reader.readline(), SMTP_STEP_TIMEOUT)
            if not line:
                raise SmtpError("connection closed by the server")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        try:
            return int(lines[-1][:3]), b"".join(lines)
        except ValueError:
            raise SmtpError(f"not an SMTP reply: {lines[-1][:80]!r}") from None

    async def step(self, command: bytes, expect: int) -> None:
        """Send one command; SmtpError unless the reply has the code expected."""
        assert self.writer is not None
        self.writer.write(command + b"\r\n")
        await self.writer.drain()
        code, text = await self.reply()
        if code != expect:
            raise SmtpError(f"{command.split()[0].decode()}: "
                            f"{text.strip().decode(errors='replace')}", code)

    async def send(self, post: Post, run: PostRun) -> None:
        """One post: a refusal is noted in `run`; a 421 raises (the post stays in hand)."""
        assert self.writer is not None
        self.current = post
        index, message_id, data, mail_from, rcpt_to = post
        try:
            await self.step(f"MAIL FROM:<{mail_from}>".encode(), 250)
            await self.step(f"RCPT TO:<{rcpt_to}>".encode(), 250)
            await self.step(b"DATA", 354)
        except SmtpError as error:
            if error.code == 421:
                raise
            run.errors.append(f"post {index}: {error}")
            self.current = None
            await self.step(b"RSET", 250)
            return
        self.writer.write(data + b".\r\n")
        await self.writer.drain()
        sent_at = time.monotonic()
        code, text = await self.reply()
        if code == 421:
            raise SmtpError(f"end of DATA: {text.strip().decode(errors='replace')}", 421)
        run.posted.append(Posted(index, message_id, code, sent_at, time.monotonic()))
        self.current = None
        if code != 250:
            run.errors.append(f"post {index}: {text.strip().decode(errors='replace')}")

    async def quit(self) -> None:
        """QUIT, whatever the server says to it."""
        with contextlib.suppress(SmtpError, OSError, TimeoutError):
            await self.step(b"QUIT", 221)

    async def close(self) -> None:
        """Close the connection, if there is one (waiting 5 s at most)."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 5)


async def _session(port: int, queue: collections.deque[Post],
                   run: PostRun, deadline: float, lmtp: bool = False) -> bool:
    """One SMTP session: posts from the queue until it is empty or time is up.

    Returns True when the server closed the session with 421 and the client should
    connect again: the post in hand goes back to the queue, as an MTA would send it again.
    """
    session = Session(lmtp)
    try:
        await session.open(port)
        while queue and time.monotonic() < deadline:
            await session.send(queue.popleft(), run)
        await session.quit()
        return False
    except SmtpError as error:
        if error.code == 421 and session.current is not None:
            queue.appendleft(session.current)
            run.closed_421 += 1
            return True
        run.errors.append(f"session: {error}")
        return False
    except (OSError, TimeoutError) as error:
        run.errors.append(f"session: {type(error).__name__}: {error}")
        return False
    finally:
        await session.close()


async def _client(port: int, queue: collections.deque[Post],
                  run: PostRun, deadline: float, lmtp: bool = False) -> None:
    for _ in range(1000):  # bounded number of sessions per client
        if not (queue and time.monotonic() < deadline):
            return
        if not await _session(port, queue, run, deadline, lmtp):
            return


async def _post_all(port: int, posts: list[Post], clients: int, limit: float,
                    lmtp: bool = False) -> PostRun:
    run = PostRun()
    queue = collections.deque(posts)
    run.started = time.monotonic()
    deadline = run.started + limit
    await asyncio.gather(*(_client(port, queue, run, deadline, lmtp)
                           for _ in range(max(1, min(clients, len(posts))))))
    run.finished = time.monotonic()
    if queue:
        run.errors.append(f"{len(queue)} post(s) not sent: time limit reached")
    return run


def post_all(port: int, posts: list[Post], clients: int, limit: float,
             lmtp: bool = False) -> PostRun:
    """Send `posts` to 127.0.0.1:`port` from `clients` SMTP (or LMTP) clients at once, in
    `limit` s."""
    return asyncio.run(_post_all(port, posts, clients, limit, lmtp))
