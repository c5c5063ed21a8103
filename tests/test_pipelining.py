"""Pipelined transactions to the smarthost (RFC 2920, mailer/pipelining.py).

The daemon's own SmtpTransport talks over loopback to a smarthost scripted here, reply by
reply (one that answers nothing until it has the whole MAIL/RCPT/DATA group, one that cuts
its replies into single bytes, one that refuses, says 421, talks nonsense, goes silent or
hangs up), and to the aiosmtpd sink, whose copy must match what aiosmtplib's own path
delivers byte for byte. Then `wire()` and `path()` on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.smtp import SMTP
from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.pipelining import path, wire
from mailer.tls import Smarthost, smarthost_context
from mailer.transport import HopReply, SmtpTransport
from tests.helpers import Sink

SENDER = "steering-bounces@lists.example.org"
MEMBER = "ana@members.test"
MESSAGE = b"Subject: Hello\r\n\r\nHello, list.\r\n"
GROUP = (b"MAIL FROM:<steering-bounces@lists.example.org>\r\n"
         b"RCPT TO:<ana@members.test>\r\nDATA\r\n")

SILENT = b""                  # an answer that is none: the smarthost says nothing
HANG_UP = b"(hang up)"        # at the end of an answer: the smarthost closes after it
OK = b"250 2.0.0 Ok\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 4Zq\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
NO_RECIPIENTS = b"554 5.5.1 Error: no valid recipients\r\n"
GONE = b"550 5.1.1 <gone@members.test>: Recipient address rejected\r\n"


# -- a smarthost scripted reply by reply ----------------------------------------------------

@dataclass
class Conversation:
    """One connection, as the scripted smarthost saw it."""

    chunks: list[bytes] = field(default_factory=list)     # every read, as it came
    commands: list[bytes] = field(default_factory=list)   # command lines, CRLF and all
    messages: list[bytes] = field(default_factory=list)   # each DATA as sent, before its "."
    ended: bool = False                                   # the client hung up
    _buffer: bytes = b""

    @property
    def verbs(self) -> list[bytes]:
        return [command[:4].upper() for command in self.commands]

    async def line(self, reader: asyncio.StreamReader) -> bytes:
        """The next line, or b"" at the end of the connection."""
        while b"\n" not in self._buffer:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.ended = True
                return b""
            self.chunks.append(chunk)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    async def message(self, reader: asyncio.StreamReader) -> bytes:
        """DATA up to the line holding only "." (the dots as sent, still doubled)."""
        lines = []
        while (line := await self.line(reader)) not in (b".\r\n", b""):
            lines.append(line)
        return b"".join(lines)


@dataclass
class Scripted:
    """A smarthost that answers as Postfix would, except where `answers` says otherwise: a
    command's first bytes (b"." for the end of DATA) -> the replies it gets in turn, the
    last one repeated. With `group`, MAIL and RCPT are answered only once DATA is read;
    with `piece`, every reply goes out in packets of that many bytes."""

    extensions: tuple[str, ...] = ("PIPELINING",)
    answers: dict[bytes, list[bytes]] = field(default_factory=dict)
    group: bool = False
    piece: int = 0
    conversations: list[Conversation] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    def answer(self, command: bytes, usual: bytes) -> bytes:
        for start, replies in self.answers.items():
            if command.startswith(start):
                return replies.pop(0) if len(replies) > 1 else replies[0]
        return usual

    def ehlo(self) -> bytes:
        lines = ["script.test", *self.extensions]
        return "".join(f"250{'-' if n < len(lines) - 1 else ' '}{line}\r\n"
                       for n, line in enumerate(lines)).encode()

    async def say(self, writer: asyncio.StreamWriter, reply: bytes) -> bool:
        """Write `reply` (in pieces when asked); False once the smarthost has hung up."""
        hang_up = reply.endswith(HANG_UP)
        reply = reply.removesuffix(HANG_UP)
        step = self.piece or len(reply) or 1
        for start in range(0, len(reply), step):
            writer.write(reply[start:start + step])
            if self.piece:
                await asyncio.sleep(0.001)     # each piece its own packet
        if hang_up:
            writer.close()
        return not hang_up

    def reply(self, line: bytes, mail: bool, rcpt: bool) -> bytes:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            return self.ehlo()
        if verb == b"MAIL":
            return self.answer(line, b"250 2.1.0 Ok\r\n")
        if verb == b"RCPT":
            return self.answer(line, b"250 2.1.5 Ok\r\n" if mail else NEED_MAIL)
        if verb == b"DATA":
            return self.answer(line, GO_AHEAD if rcpt else NO_RECIPIENTS if mail else NEED_MAIL)
        if verb in (b"RSET", b"NOOP"):
            return self.answer(line, OK)
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n" + HANG_UP
        return b"502 5.5.2 Error: command not recognized\r\n"

    async def converse(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        talk = Conversation()
        self.conversations.append(talk)
        mail = rcpt = False
        held = b""
        going = await self.say(writer, b"220 script.test ESMTP\r\n")
        while going and (line := await talk.line(reader)):
            talk.commands.append(line)
            verb, reply = line[:4].upper(), self.reply(line, mail, rcpt)
            mail = reply.startswith(b"2") if verb == b"MAIL" else mail and verb != b"RSET"
            rcpt = (rcpt or reply.startswith(b"2")) if verb == b"RCPT" else rcpt and mail
            if self.group and verb in (b"MAIL", b"RCPT"):
                held += reply
                continue
            going = await self.say(writer, held + reply)
            held = b""
            if going and verb == b"DATA" and reply.startswith(b"354"):
                talk.messages.append(await talk.message(reader))
                going = await self.say(writer, self.answer(b".", QUEUED if rcpt
                                                           else NO_RECIPIENTS))
                mail = rcpt = False
        writer.close()

    async def start(self) -> None:
        async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._open[task] = writer
            await self.converse(reader, writer)

        self._server = await asyncio.start_server(converse, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._open.values():
            writer.close()          # each conversation then reads the end and returns
        if self._open:
            await asyncio.wait(self._open, timeout=2)

    @property
    def chunks(self) -> list[bytes]:
        return [chunk for talk in self.conversations for chunk in talk.chunks]

    @property
    def commands(self) -> list[bytes]:
        return [command for talk in self.conversations for command in talk.commands]


def transport(port: int, timeout: float = 5.0, connections: int = 1) -> SmtpTransport:
    """The daemon's transport to smtp://127.0.0.1:PORT, one session at a time unless
    `connections` says more."""
    hop = Smarthost("127.0.0.1", port, implicit_tls=False, require_starttls=False,
                    tls=smarthost_context(None, True))
    return SmtpTransport(hop, connections=connections, timeout=timeout,
                         local_hostname="lists.example.org")


@contextlib.asynccontextmanager
async def talking(smarthost: Scripted | Sink, timeout: float = 5.0
                  ) -> AsyncIterator[SmtpTransport]:
    """The smarthost started, and a transport to it; both closed at the end."""
    await smarthost.start()
    outbound = transport(smarthost.port, timeout)
    try:
        async with asyncio.timeout(10):     # a transport that hangs fails, not stalls, CI
            yield outbound
    finally:
        await outbound.close()
        await smarthost.stop()


async def timed(outbound: SmtpTransport, recipient: str = MEMBER,
                message: bytes = MESSAGE) -> tuple[HopReply, float]:
    started = time.monotonic()
    reply = await outbound.send(SENDER, recipient, message)
    return reply, time.monotonic() - started


async def ended(talk: Conversation) -> bool:
    """Whether the client hangs up this connection within a second."""
    deadline = time.monotonic() + 1
    while not talk.ended and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return talk.ended


# -- MAIL, RCPT and DATA without waiting between them ----------------------------------------

async def test_a_smarthost_that_answers_only_whole_groups_takes_the_message_at_once() -> None:
    smarthost = Scripted(group=True)
    async with talking(smarthost, timeout=1.0) as outbound:
        reply, elapsed = await timed(outbound)
    assert reply == HopReply(250, "2.0.0 Ok: queued as 4Zq")
    assert elapsed < 0.9, f"{elapsed:.2f} s: the client waited for MAIL's reply alone"
    (talk,) = smarthost.conversations
    assert GROUP in talk.chunks, "MAIL, RCPT and DATA did not come together"
    assert talk.chunks[talk.chunks.index(GROUP) + 1] == MESSAGE + b".\r\n"
    assert talk.messages == [MESSAGE]


async def test_without_pipelining_offered_the_same_smarthost_stalls_aiosmtplib() -> None:
    # The control for the test above: that smarthost does hold back a client which waits
    # for each reply, and without PIPELINING the transport is such a client.
    smarthost = Scripted(group=True, extensions=("SIZE 10240000",))
    async with talking(smarthost, timeout=0.4) as outbound:
        reply, elapsed = await timed(outbound)
    assert reply.code == 451 and elapsed >= 0.3, (reply, elapsed)
    assert smarthost.conversations[0].verbs[:2] == [b"EHLO", b"MAIL"]
    assert b"RCPT" not in smarthost.conversations[0].verbs


# -- replies however they are cut ------------------------------------------------------------

@pytest.mark.parametrize("piece", [1, 7])
async def test_replies_cut_into_any_packets_and_multi_line_replies_are_read_right(
        piece: int) -> None:
    smarthost = Scripted(group=True, piece=piece, answers={
        b"MAIL": [b"250-2.1.0 Sender\r\n250-is\r\n250 2.1.0 Ok\r\n"],
        b"RCPT": [b"250-2.1.5 Recipient\r\n250 2.1.5 Ok\r\n"],
        b".": [b"250-2.0.0 Ok\r\n250 2.0.0 queued as 4Zq\r\n", QUEUED]})
    async with talking(smarthost) as outbound:
        first = await outbound.send(SENDER, MEMBER, MESSAGE)
        second = await outbound.send(SENDER, "bo@members.test", MESSAGE)
    assert first == HopReply(250, "2.0.0 Ok\n2.0.0 queued as 4Zq")
    assert second == HopReply(250, "2.0.0 Ok: queued as 4Zq")
    (talk,) = smarthost.conversations
    assert talk.messages == [MESSAGE, MESSAGE]


# -- refusals, and the session after them ----------------------------------------------------

async def test_a_refused_recipient_is_the_reply_and_the_session_carries_the_next() -> None:
    smarthost = Scripted(answers={b"RCPT TO:<gone@": [GONE]})
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, "gone@members.test", MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert refused == HopReply(550, "5.1.1 <gone@members.test>: Recipient address rejected")
    assert taken == HopReply(250, "2.0.0 Ok: queued as 4Zq")
    (talk,) = smarthost.conversations
    assert talk.verbs == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET",
                          b"MAIL", b"RCPT", b"DATA", b"QUIT"]
    assert talk.messages == [MESSAGE]


async def test_a_refused_sender_is_the_reply_and_the_session_carries_the_next() -> None:
    smarthost = Scripted(answers={b"MAIL": [b"451 4.3.0 Try again later\r\n",
                                            b"250 2.1.0 Ok\r\n"]})
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, MEMBER, MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert refused == HopReply(451, "4.3.0 Try again later")
    assert taken.code == 250
    (talk,) = smarthost.conversations
    assert talk.verbs[1:6] == [b"MAIL", b"RCPT", b"DATA", b"RSET", b"MAIL"]
    assert talk.messages == [MESSAGE]


async def test_a_message_refused_after_its_data_leaves_the_session_for_the_next() -> None:
    smarthost = Scripted(answers={b".": [b"554 5.7.1 Rejected as spam\r\n", QUEUED]})
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, MEMBER, MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert refused == HopReply(554, "5.7.1 Rejected as spam")
    assert taken.code == 250
    assert len(smarthost.conversations) == 1
    assert smarthost.conversations[0].messages == [MESSAGE, MESSAGE]


@pytest.mark.parametrize("said_at, after", [(b"MAIL", b"250 2.1.0 Ok\r\n"),
                                             (b"RCPT", b"250 2.1.5 Ok\r\n"),
                                             (b"DATA", GO_AHEAD), (b".", QUEUED)])
async def test_a_421_is_the_reply_and_the_next_message_opens_a_new_session(
        said_at: bytes, after: bytes) -> None:
    # This smarthost says 421 and goes on talking; the session is given up all the same.
    smarthost = Scripted(answers={said_at: [b"421 4.7.0 Too many errors\r\n", after]})
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, MEMBER, MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert refused == HopReply(421, "4.7.0 Too many errors")
    assert taken.code == 250
    first, second = smarthost.conversations
    assert first.verbs == [b"EHLO", b"MAIL", b"RCPT", b"DATA"], "RSET or more after a 421"
    assert await ended(first)
    assert second.messages == [MESSAGE]


@pytest.mark.parametrize("said_at, after", [(b"MAIL", b"250 2.1.0 Ok\r\n"),
                                             (b"RCPT", b"250 2.1.5 Ok\r\n")])
async def test_a_421_then_a_hang_up_is_the_421(said_at: bytes, after: bytes) -> None:
    smarthost = Scripted(answers={said_at: [b"421 4.7.0 Too many errors\r\n" + HANG_UP,
                                            after]})
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, MEMBER, MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert taken.code == 250 and len(smarthost.conversations) == 2
    assert refused == HopReply(421, "4.7.0 Too many errors")


async def test_a_refusal_stands_when_the_smarthost_hangs_up_at_rset() -> None:
    smarthost = Scripted(answers={b"RCPT TO:<gone@": [GONE], b"RSET": [HANG_UP]})
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, "gone@members.test", MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert taken.code == 250 and len(smarthost.conversations) == 2
    assert refused == HopReply(550, "5.1.1 <gone@members.test>: Recipient address rejected")


async def test_a_session_the_smarthost_closed_while_idle_is_not_used_again() -> None:
    smarthost = Scripted(answers={b".": [QUEUED + HANG_UP, QUEUED]})
    async with talking(smarthost) as outbound:
        first = await outbound.send(SENDER, MEMBER, MESSAGE)
        await asyncio.sleep(0.05)
        second = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert first.code == second.code == 250
    assert [talk.messages for talk in smarthost.conversations] == [[MESSAGE], [MESSAGE]]


async def test_data_taken_for_a_refused_recipient_is_ended_by_a_lone_dot() -> None:
    # RFC 2920 §3.1: a server may answer DATA with 354 though no RCPT was taken.
    smarthost = Scripted(answers={b"RCPT TO:<gone@": [GONE], b"DATA": [GO_AHEAD]})
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, "gone@members.test", MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert refused == HopReply(550, "5.1.1 <gone@members.test>: Recipient address rejected")
    assert taken.code == 250
    (talk,) = smarthost.conversations
    assert talk.messages == [b"", MESSAGE]
    assert b".\r\n" in talk.chunks
    assert talk.verbs == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET",
                          b"MAIL", b"RCPT", b"DATA", b"QUIT"]


async def test_a_reply_said_out_of_turn_between_messages_ends_the_session() -> None:
    # The smarthost says 421 on an idle session and keeps it open: that 421 is no answer
    # to the next MAIL, which goes on a new session.
    smarthost = Scripted(answers={b".": [QUEUED + b"421 4.4.2 Timeout exceeded\r\n", QUEUED]})
    async with talking(smarthost) as outbound:
        first = await outbound.send(SENDER, MEMBER, MESSAGE)
        await asyncio.sleep(0.05)
        second = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert first.code == second.code == 250
    assert [talk.messages for talk in smarthost.conversations] == [[MESSAGE], [MESSAGE]]


# -- a smarthost that breaks the session -----------------------------------------------------

async def test_a_line_that_is_no_reply_defers_and_drops_the_session() -> None:
    smarthost = Scripted(answers={b"MAIL": [b"hello there\r\n", b"250 2.1.0 Ok\r\n"]})
    async with talking(smarthost) as outbound:
        broken = await outbound.send(SENDER, MEMBER, MESSAGE)
        assert await ended(smarthost.conversations[0])
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert broken.code == 451
    assert "which is no SMTP reply" in broken.text and "hello there" in broken.text
    assert taken.code == 250
    first, second = smarthost.conversations
    assert first.messages == [] and second.messages == [MESSAGE]


async def test_a_silent_smarthost_defers_after_the_timeout() -> None:
    smarthost = Scripted(answers={b"MAIL": [SILENT], b"RCPT": [SILENT], b"DATA": [SILENT]})
    async with talking(smarthost, timeout=0.5) as outbound:
        reply, elapsed = await timed(outbound)
        assert await ended(smarthost.conversations[0])
    assert reply == HopReply(451, f"smarthost 127.0.0.1:{smarthost.port} did not answer "
                                  "in 0.5 s")
    assert 0.4 < elapsed < 1.5, elapsed


async def test_a_smarthost_that_hangs_up_mid_transaction_defers_at_once() -> None:
    smarthost = Scripted(answers={b"RCPT": [HANG_UP]})
    async with talking(smarthost, timeout=5.0) as outbound:
        reply, elapsed = await timed(outbound)
    assert reply.code == 451 and "closed the session" in reply.text, reply
    assert elapsed < 1, elapsed


# -- what goes on the wire -------------------------------------------------------------------

HARD = b"Subject: dots\n\n.hidden\n..two\r\n.\nlone\rcarriage\r\nlast line"


@pytest.mark.parametrize("message", [HARD, b".", b"", b"\r\n.\r\n", b"a\r"])
async def test_the_copy_at_the_sink_is_the_one_aiosmtplib_delivers(message: bytes) -> None:
    plain = Sink(pipelining=False)
    async with talking(plain) as outbound:
        assert (await outbound.send(SENDER, MEMBER, message)).code == 250
    pipelined = Scripted()
    async with talking(pipelined) as outbound:
        assert (await outbound.send(SENDER, MEMBER, message)).code == 250
    sink = Sink()
    async with talking(sink) as outbound:
        assert (await outbound.send(SENDER, MEMBER, message)).code == 250
    assert pipelined.conversations[0].chunks[-3:-1] == [GROUP, wire(message)[0]]
    assert sink.received[0].data == plain.received[0].data
    assert normalize_message_line_endings(message) == plain.received[0].data


async def test_size_is_said_when_offered_counting_crlf_but_not_the_dots() -> None:
    message = b"a\n.b"            # as sent: a CRLF .b CRLF, 7 bytes; on the wire ..b
    offered = Scripted(extensions=("PIPELINING", "SIZE 10240000"))
    async with talking(offered) as outbound:
        assert (await outbound.send(SENDER, MEMBER, message)).code == 250
    not_offered = Scripted()
    async with talking(not_offered) as outbound:
        assert (await outbound.send(SENDER, MEMBER, message)).code == 250
    assert offered.commands[1] == f"MAIL FROM:<{SENDER}> SIZE=7\r\n".encode()
    assert not_offered.commands[1] == f"MAIL FROM:<{SENDER}>\r\n".encode()


async def test_a_non_ascii_recipient_goes_with_smtputf8_when_offered() -> None:
    smarthost = Scripted(extensions=("PIPELINING", "SIZE 10240000", "SMTPUTF8"))
    async with talking(smarthost) as outbound:
        reply = await outbound.send(SENDER, "josé@membres.test", MESSAGE)
        ascii_only = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert reply.code == ascii_only.code == 250
    (talk,) = smarthost.conversations
    assert talk.commands[1:3] == [
        f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)} SMTPUTF8\r\n".encode(),
        "RCPT TO:<josé@membres.test>\r\n".encode()]
    assert talk.commands[4] == f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}\r\n".encode()


@dataclass
class Utf8Sink(Sink):
    """The recording smarthost, offering SMTPUTF8 too (RFC 6531)."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test", enable_SMTPUTF8=True), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]


async def test_a_non_ascii_recipient_arrives_at_an_smtputf8_sink() -> None:
    sink = Utf8Sink()
    async with talking(sink) as outbound:
        reply = await outbound.send(SENDER, "josé@membres.test", MESSAGE)
    assert reply.code == 250, reply
    assert [(d.mail_from, d.rcpt, d.data) for d in sink.received] == [
        (SENDER, "josé@membres.test", MESSAGE)]


async def test_a_non_ascii_address_without_smtputf8_is_553_and_nothing_is_sent() -> None:
    smarthost = Scripted(extensions=("PIPELINING", "SIZE 10240000"))
    async with talking(smarthost) as outbound:
        refused = await outbound.send(SENDER, "josé@membres.test", MESSAGE)
        from_refused = await outbound.send("lístas@lists.example.org", MEMBER, MESSAGE)
        taken = await outbound.send(SENDER, MEMBER, MESSAGE)
    assert refused.code == from_refused.code == 553
    assert refused.text.startswith("5.1.3 'josé@membres.test'") and "SMTPUTF8" in refused.text
    assert "lístas" in from_refused.text
    assert taken.code == 250
    (talk,) = smarthost.conversations
    assert talk.verbs == [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]


@pytest.mark.parametrize("sender, recipient", [
    (SENDER, "ana@members.test>\r\nRCPT TO:<eve@evil.test"),
    (f"{SENDER}>\r\nRCPT TO:<eve@evil.test", MEMBER),
    (SENDER, "ana@members.test\nDATA"),
    (SENDER, "ana smith@members.test"),
])
async def test_an_address_that_could_smuggle_a_command_is_553_and_nothing_is_sent(
        sender: str, recipient: str) -> None:
    smarthost = Scripted()
    async with talking(smarthost) as outbound:
        reply = await outbound.send(sender, recipient, MESSAGE)
    assert reply.code == 553 and reply.text.startswith("5.1.3 "), reply
    assert "space, a control character or an angle bracket" in reply.text
    assert smarthost.commands[1:] == [b"QUIT\r\n"], "not kept, or a command went"
    assert not any(b"evil" in chunk or b"Hello" in chunk for chunk in smarthost.chunks)


# -- closing ---------------------------------------------------------------------------------

async def test_close_says_quit_on_idle_pipelined_sessions() -> None:
    smarthost = Scripted()
    await smarthost.start()
    outbound = transport(smarthost.port, connections=2)
    replies = await asyncio.gather(outbound.send(SENDER, MEMBER, MESSAGE),
                                   outbound.send(SENDER, "bo@members.test", MESSAGE))
    assert [reply.code for reply in replies] == [250, 250]
    assert len(smarthost.conversations) == 2
    assert not any(b"QUIT" in talk.verbs for talk in smarthost.conversations)
    await outbound.close()
    for talk in smarthost.conversations:
        assert talk.verbs[-1] == b"QUIT"
    await smarthost.stop()


# -- wire() and path() -----------------------------------------------------------------------

@pytest.mark.parametrize("message, data, size", [
    (b"", b"\r\n.\r\n", 2),
    (b".", b"..\r\n.\r\n", 3),
    (b".\r\n", b"..\r\n.\r\n", 3),
    (b"a\rb", b"a\r\nb\r\n.\r\n", 6),
    (b"a\r", b"a\r\n.\r\n", 3),
    (b"\r", b"\r\n.\r\n", 2),
    (b"\n\r", b"\r\n\r\n.\r\n", 4),
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n", 8),
    (b".\n.\n.", b"..\r\n..\r\n..\r\n.\r\n", 9),
    (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n", 8),
])
def test_wire_edge_cases(message: bytes, data: bytes, size: int) -> None:
    assert wire(message) == (data, size)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=40) | st.lists(st.sampled_from(
    [b"\r", b"\n", b"\r\n", b".", b"..", b"a", b" "]), max_size=20).map(b"".join))
def test_wire_says_what_aiosmtplib_would(message: bytes) -> None:
    # aiosmtplib's own DATA encoding (aiosmtplib/protocol.py) is the reference.
    normal = normalize_message_line_endings(message)
    stuffed = re.sub(rb"(?m)^\.", b"..", normal) + b".\r\n"
    assert wire(message) == (stuffed, len(normal))


@pytest.mark.parametrize("address, utf8, expected", [
    ("ana@members.test", False, b"<ana@members.test>"),
    ("", False, b"<>"),                                  # the null sender of a bounce
    ("josé@membres.test", True, "<josé@membres.test>".encode()),
    ("josé@membres.test", False, None),
    ("ana@members.test\r\nDATA", False, None),
    ("ana@members.test\n", False, None),
    ("ana@members.test\x00", False, None),
    ("ana@members.test\x7f", False, None),
    ("ana\t@members.test", False, None),
    ("ana smith@members.test", True, None),
    ("ana>@members.test", False, None),
    ("<ana@members.test>", False, None),
])
def test_path(address: str, utf8: bool, expected: bytes | None) -> None:
    assert path(address, utf8) == expected
