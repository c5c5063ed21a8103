"""Fuzzing the three doors hostile bytes come in by (issue 10, item 7), with hypothesis.

1. The SMTP dialogue: a daemon on port 0 gets generated sessions (commands with hostile
   arguments, random and 8-bit lines, pipelined groups, DATA bodies with bare CR and LF
   around dots and over-long lines). Every line gets one well-formed reply within 5 s, none
   an exception's text, each 250 to DATA stores exactly one message, and the daemon still
   greets a fresh connection afterwards.
2. A post's MIME: intake's screen (`mailer.screen.check`) never raises and stays fast;
   what it lets through goes through the list side as the post handler takes it (the rules,
   each pipeline step, then the fan-out, the hold or the refusal) in a transaction that is
   rolled back. Nothing raises, each step's output parses, and no display name, however
   encoded, ends up as a header field of its own.
3. iCalendar replies: real client replies (tests/data/replies/), mutated, and generated
   calendars in every wrapping clients use go to `meetings.rsvp.read`, which is documented
   never to raise, and must answer within 5 s; a share also goes through `process` against
   a meeting of ours.

CI runs a small, derandomised number of examples. `python tools/fuzz.py` runs the same
properties with FUZZ_EXAMPLES spread over the targets (see SHARES), and reads the counts
each test writes to FUZZ_REPORT. The bugs the fuzzing found are fixed; their inputs stay
at the end of this module as ordinary regression tests.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists import moderation, service
from lists import settings as list_settings
from lists.models import Held
from lists.pipeline import PIPELINE, fan_out
from lists.post import PostFacts, make_post
from lists.posting import hold_unreadable, reading_problem
from lists.rules import decide
from mailer import screen, smtp_replies
from mailer.addresses import Role, Route
from mailer.daemon import Daemon, build
from mailer.db import Database
from mailer.inbound import Inbound, parse
from mailer.models import Message, Outgoing
from meetings import itip
from meetings.models import Invitation
from meetings.rsvp import Reading, RsvpHandler, process, read_many
from tests.helpers import (
    DOMAIN,
    REPLIES,
    Dialogue,
    Sink,
    World,
    crlf,
    list_site,
    make_config,
    make_list,
    meeting_site,
    organise,
    quiet,
    running,
    send,
)

# -- how much: CI's bounded run, or the long run of tools/fuzz.py -------------------------

LONG = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)
SHARES = {"smtp": 0.12, "screen": 0.25, "post": 0.18, "rsvp_mutated": 0.2,
          "rsvp_generated": 0.2, "rsvp_process": 0.05}
HANG = 5.0                                  # seconds: slower than this is a hang
RSS_LIMIT_KB = 1_500_000                    # the test process's peak resident memory
TALLY: collections.Counter[str] = collections.Counter()
SLOWEST: dict[str, float] = collections.defaultdict(float)
UNREADABLE: collections.Counter[str] = collections.Counter()   # rsvp.read's catch-all


def fuzzed(target: str, ci_examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings for one target: CI's count, derandomised, or the long run's."""
    examples = max(ci_examples, int(LONG * SHARES[target])) if LONG else ci_examples
    # No hypothesis deadline: `timed` fails an input over HANG itself, so that a hang
    # already recorded as a bug below can be counted rather than fail the run again.
    return settings(max_examples=examples, deadline=None,
                    derandomize=not LONG, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def timed(target: str, raw: bytes = b"") -> Iterator[None]:
    """Count one input of `target` and fail it if it took longer than HANG. The processor
    time of this process is what counts: the machine's other load must not make an input
    look hung."""
    started, cpu = time.monotonic(), time.process_time()
    yield
    spent, cpu_spent = time.monotonic() - started, time.process_time() - cpu
    TALLY[target] += 1
    SLOWEST[target] = max(SLOWEST[target], spent)
    assert cpu_spent < HANG, f"{target}: one input took {cpu_spent:.1f} s of processor time"


@pytest.fixture(autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: its counts to FUZZ_REPORT (for tools/fuzz.py), and memory bounded."""
    before = dict(TALLY)
    started = time.monotonic()
    yield
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = os.environ.get("FUZZ_REPORT")
    if path:
        line = {"test": request.node.name, "seconds": round(time.monotonic() - started, 1),
                "inputs": {k: v - before.get(k, 0) for k, v in TALLY.items()
                           if v != before.get(k, 0)},
                "slowest": {k: round(v, 3) for k, v in SLOWEST.items()},
                "unreadable": dict(UNREADABLE), "maxrss_kb": peak}
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")
    assert peak < RSS_LIMIT_KB, f"peak RSS {peak} kB"


# -- shared pieces of hostile text --------------------------------------------------------

MARKER = b"X-Fuzz-Injected"      # only ever inside an encoded or quoted display name
INJECTED = re.compile(rb"(?:^|\r\n|\r|\n)" + MARKER + rb"\s*:", re.I)
NASTY = ["", " ", "\t", "\x00", "\x7f", "\u00e9", "\u200b", "\ufeff", "\U0001f600", "\u0085",
         "\u2028", "=?", "?=", '"', "\\", "<", ">", "@", ",", ";", ":", "(", ")", "[", "]",
         "%", "\ud7ff", "A" * 1200, "=?utf-8?q?", "\xff"]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=12)),
                      max_size=6).map("".join)


def one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def q_word(data: bytes, charset: str = "utf-8") -> str:
    """An RFC 2047 Q encoded word of exactly these bytes."""
    body = "".join(chr(b) if chr(b).isalnum() else f"={b:02X}" for b in data)
    return f"=?{charset}?q?{body}?="


def b_word(data: bytes, charset: str = "utf-8") -> str:
    return f"=?{charset}?b?{base64.b64encode(data).decode()}?="


@st.composite
def display_names(draw: st.DrawFn) -> str:
    """A display name as hostile senders write them: encoded words that decode to line
    breaks and a field of their own, quoted strings with escapes, raw 8-bit text."""
    text = draw(nasty_text)
    injected = text.encode("utf-8", "surrogatepass") + draw(st.sampled_from(
        [b"\r\n", b"\n", b"\r", b"\r\n ", b""])) + MARKER + b": yes"
    kind = draw(st.sampled_from(["plain", "quoted", "q", "b", "latin1", "split", "raw8"]))
    if kind == "plain":
        return one_line(text)
    if kind == "quoted":
        return '"' + one_line(text).replace("\\", "\\\\").replace('"', '\\"') + '\\"x"'
    if kind == "q":
        return q_word(injected)
    if kind == "b":
        return b_word(injected)
    if kind == "latin1":
        return q_word(b"Jos\xe9\r\n" + MARKER + b": 1", "iso-8859-1")
    if kind == "split":   # one encoded word cut in two, the break in the middle of a UTF-8
        half = len(injected) // 2
        return f"{b_word(injected[:half])} {b_word(injected[half:])}"
    return one_line(text) + "\u00e9\u00e8 \u4e2d\u6587"


@st.composite
def mailboxes(draw: st.DrawFn) -> str:
    name = draw(display_names())
    address = draw(st.sampled_from(["ana@party.test", "m1@members.test", "ana@strict.test",
                                    "x@[127.0.0.1]", '"a b"@party.test', "nobody", "",
                                    "a@b@c", "fuzz@" + DOMAIN, "\u00e9@party.test"]))
    form = draw(st.sampled_from(["{n} <{a}>", "{a}", "{a} ({n})", "{n} <{a}", "g: {n} <{a}>;",
                                 "{n} <{a}>, other@party.test", "<{a}>", "{n}"]))
    return form.format(n=name, a=address)


# -- messages ----------------------------------------------------------------------------

CHARSETS = ["us-ascii", "utf-8", "iso-8859-1", "klingon", "utf-7", '"utf-8"', "", "utf8",
            "x-\u00e9", "cp1252"]
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "binary", "x-uuencode", "bogus",
             ""]


@st.composite
def boundaries(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(["b1", "=_x", "", " ", "a" * 80, "b" * 300, '"q"', "b1--",
                                 "\u00e9", "x;y", "--"]))


@st.composite
def bodies(draw: st.DrawFn, depth: int = 0) -> tuple[list[str], bytes]:
    """(content header fields, body bytes) of one entity, nested up to a few levels."""
    kind = draw(st.sampled_from(["text", "text", "html", "calendar", "binary", "multipart",
                                 "rfc822", "signed", "none"]))
    charset = draw(st.sampled_from(CHARSETS))
    encoding = draw(st.sampled_from(ENCODINGS))
    fields = [f"Content-Transfer-Encoding: {encoding}"] if encoding else []
    content = draw(st.binary(max_size=200)) if kind == "binary" else \
        draw(nasty_text).encode("utf-8", "surrogatepass")
    if kind in ("multipart", "signed") and depth < 3:
        boundary = draw(boundaries())
        subtype = "signed" if kind == "signed" else draw(st.sampled_from(
            ["mixed", "alternative", "related", "report", "digest", ""]))
        fields = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"']
        parts = draw(st.lists(bodies(depth + 1), max_size=4))
        chunks = []
        for part_fields, part_body in parts:
            chunks.append(f"--{boundary}\r\n".encode() + "\r\n".join(part_fields).encode(
                "utf-8", "surrogatepass") + b"\r\n\r\n" + part_body + b"\r\n")
        ending = draw(st.sampled_from([f"--{boundary}--\r\n", "", f"--{boundary}\r\n"]))
        return fields, b"preamble\r\n" + b"".join(chunks) + ending.encode()
    if kind == "rfc822" and depth < 3:
        inner_fields, inner_body = draw(bodies(depth + 1))
        head = ["Subject: inner", f"From: {draw(mailboxes())}", *inner_fields]
        return ["Content-Type: message/rfc822"], \
            "\r\n".join(head).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + inner_body
    if kind == "calendar":
        fields.append(f"Content-Type: text/calendar; method=REQUEST; charset={charset}")
        content = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
    elif kind == "html":
        fields.append(f"Content-Type: text/html; charset={charset}")
    elif kind in ("text", "multipart", "rfc822", "signed"):
        fields.append(f"Content-Type: text/plain; charset={charset}; format=flowed")
    elif kind == "binary":
        fields.append('Content-Type: application/octet-stream; name="x.bin"')
    return fields, content + b"\r\n"


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A post: hostile header fields, a MIME body, CRLF or LF, sometimes cut or spliced."""
    fields = [f"From: {draw(mailboxes())}" for _ in range(draw(st.sampled_from([1, 1, 1, 0,
                                                                                 2])))]
    fields.append(f"To: fuzz@{DOMAIN}")
    subject = draw(st.one_of(nasty_text.map(one_line), display_names()))
    fields.append(f"Subject: {subject}")
    fields.append(f"Message-ID: <{draw(st.integers(0, 10**9))}@fuzz.test>")
    extra = draw(st.lists(st.sampled_from([
        f"Reply-To: {draw(mailboxes())}", f"Cc: {draw(mailboxes())}",
        "Auto-Submitted: auto-replied",
        "Precedence: bulk", f"List-Id: <fuzz.{DOMAIN}>", f"X-Loop: fuzz@{DOMAIN}",
        "Received: from x by y; Mon, 1 Mar 2027 10:00:00 +0000", "MIME-Version: 1.0",
        "Date: yesterday", "Subject: second", "Content-Type: multipart/mixed",
        f"Subject: {'=?utf-8?q?a?= ' * 60}", "Content-Type: text/plain; " + "a*0*=x; " * 40,
        "DKIM-Signature: v=1; a=rsa-sha256; d=party.test; b=AAAA",
        f"Sender: {draw(mailboxes())}", "X-Folded: a\r\n b\r\n\tc", ":", "No colon here",
        f"X-Long: {'x' * 1200}"]), max_size=8))
    content_fields, body = draw(bodies())
    head = "\r\n".join(fields + extra + content_fields).encode("utf-8", "surrogatepass")
    raw = head + b"\r\n\r\n" + body
    if draw(st.booleans()):
        raw = raw.replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    return mutate(draw, raw)


def mutate(draw: st.DrawFn, raw: bytes) -> bytes:
    """A few byte-level edits: cut, insert, duplicate a slice; often none."""
    for _ in range(draw(st.integers(0, 3))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw)))
        edit = draw(st.sampled_from(["cut", "insert", "repeat", "flip"]))
        if edit == "cut":
            raw = raw[:at]
        elif edit == "insert":
            raw = raw[:at] + draw(st.binary(max_size=20)) + raw[at:]
        elif edit == "repeat":
            raw = raw[:at] + raw[at:at + 40] * draw(st.integers(2, 400)) + raw[at:]
        else:
            raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
    return raw


posts = st.one_of(messages(), messages(), st.binary(max_size=2000),
                  st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")))


# -- 1. the SMTP dialogue ------------------------------------------------------------------

REPLY = re.compile(rb"^[2-5][0-9][0-9][ -]")
PY_ERROR = re.compile(rb"^5[0-9][0-9][ -].*(Error: \(|Traceback|Exception)")
GOOD_RCPTS = [f"fuzz@{DOMAIN}", f"fuzz-join@{DOMAIN}", f"fuzz-owner@{DOMAIN}",
              f"rsvp+bogus@{DOMAIN}", "elsewhere@party.test", f"nosuch@{DOMAIN}"]
ARGUMENTS = ["", " ", "<>", "<a@b>", "<fuzz@" + DOMAIN + ">", '<"a b"@party.test>',
             "<@route:a@party.test>", "<a@[127.0.0.1]>", "<a@party.test> SIZE=99999999999999",
             "<a@party.test> BODY=8BITMIME SMTPUTF8", "<=?utf-8?q?x?=@party.test>",
             "<\u00e4@party.test>", "<" + "a" * 300 + "@party.test>", "<a@party.test",
             "a@party.test", "<a@party.test> X=" + "y" * 2000, ":<a@b>", "<a@b> <c@d>"]


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    """One command line: a verb with a hostile argument, or bytes; never DATA."""
    ending = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r\r\n"]))
    kind = draw(st.sampled_from(["verb", "verb", "bytes", "text"]))
    if kind == "verb":
        verb = draw(st.sampled_from(["HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "RSET", "NOOP",
                                     "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH", "LHLO",
                                     "BDAT", "XCLIENT", "mail from:", "RCPT  TO:", "HELO"]))
        argument = draw(st.one_of(st.sampled_from(ARGUMENTS), nasty_text,
                                  st.sampled_from(GOOD_RCPTS).map(lambda a: f"<{a}>")))
        line = f"{verb} {argument}".encode("utf-8", "surrogatepass") \
            if not verb.endswith(":") else f"{verb}{argument}".encode("utf-8", "surrogatepass")
    elif kind == "bytes":
        line = draw(st.binary(max_size=draw(st.sampled_from([40, 40, 3000]))))
    else:
        line = draw(nasty_text).encode("utf-8", "surrogatepass")
    line = line.replace(b"\n", b" ")
    if line.split(b" ", 1)[0].strip().upper() in (b"DATA", b"QUIT"):
        line = b"X" + line
    return line + ending


@st.composite
def data_bodies(draw: st.DrawFn) -> bytes:
    """What follows DATA, with the transparency dots (RFC 5321 §4.5.2) and the end."""
    body = draw(st.one_of(messages(), st.binary(max_size=500)))
    for piece in draw(st.lists(st.sampled_from([b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n",
                                                b"\r.\r\n", b"." * 3, b"\r\n..\r\n",
                                                b"x" * 1500, b"\xff\xfe\x80"]), max_size=3)):
        at = draw(st.integers(0, len(body)))
        body = body[:at] + piece + body[at:]
    lines = body.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n")


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[str, list[bytes]]]:
    """Steps of one session: ("lines", lines sent at once, one reply each) or
    ("data", [MAIL, RCPT..., body]), DATA sent after the envelope."""
    steps: list[tuple[str, list[bytes]]] = []
    if draw(st.booleans()):
        steps.append(("lines", [b"EHLO client.test\r\n"]))
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 2)) == 0:
            sender = draw(st.sampled_from(["<ana@party.test>", "<>", *ARGUMENTS[:8]]))
            rcpts = draw(st.lists(st.sampled_from(GOOD_RCPTS), min_size=1, max_size=3))
            envelope = [f"MAIL FROM:{sender}\r\n".encode()] + \
                [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
            steps.append(("data", envelope + [draw(data_bodies())]))
        else:
            steps.append(("lines", draw(st.lists(command_lines(), min_size=1, max_size=5))))
    if draw(st.booleans()):
        steps.append(("lines", [b"QUIT\r\n"]))
    return steps


class Conversation:
    """The client side: read whole replies, each within HANG seconds, and check them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = False

    async def reply(self) -> bytes:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), HANG)
            if not line:
                self.closed = True
                assert lines, "the connection closed without a reply"
                return lines[0]
            assert line.endswith(b"\r\n") and REPLY.match(line), line
            assert not PY_ERROR.match(line), line
            assert line[:3] == (lines[0][:3] if lines else line[:3]), (lines, line)
            lines.append(line)
            if line[3:4] == b" ":
                if line[:3] in (b"421", b"221") or b"goodbye" in line:
                    self.closed = True      # aiosmtpd's 502 after 5 unknown commands too
                return lines[0]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, line: bytes) -> bytes:
        """The reply to `line`: an intake fault (451 4.3.0) is a bug."""
        reply = await self.reply()
        assert not reply.startswith(smtp_replies.TEMPORARY_FAILURE.encode()), (line, reply)
        return reply


async def converse(port: int, steps: list[tuple[str, list[bytes]]]) -> int:
    """Run one session; returns how many messages got the 250 of a stored message."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    talk = Conversation(reader, writer)
    queued = 0
    try:
        assert (await talk.reply()).startswith(b"220"), "greeting"
        for kind, lines in steps:
            if kind == "lines":
                await talk.send(b"".join(lines))
                replies = [await talk.answer(line) for line in lines if not talk.closed]
                assert len(replies) == len(lines) or talk.closed
            else:
                *envelope, body = lines
                for line in envelope:
                    await talk.send(line)
                    if not talk.closed:
                        await talk.answer(line)
                if talk.closed:
                    break
                await talk.send(b"DATA\r\n")
                if (await talk.reply()).startswith(b"354"):
                    await talk.send(body)
                    queued += (await talk.reply()).startswith(smtp_replies.OK.encode())
            if talk.closed:
                break
    except (ConnectionResetError, BrokenPipeError):
        pass    # the daemon hung up after its 421; the reply was read or the pipe broke
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return queued


async def still_answers(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    talk = Conversation(reader, writer)
    try:
        assert (await talk.reply()).startswith(b"220")
        await talk.send(b"NOOP\r\n")
        assert (await talk.reply()).startswith(b"250")
        await talk.send(b"QUIT\r\n")
        assert (await talk.reply()).startswith(b"221")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def count_messages(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Message)) or 0)


@pytest.fixture(scope="module")
def smtp_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Daemon]]:
    """A daemon with a list `fuzz` (anyone may post), in an event loop of its own that runs
    while each example talks to it."""
    base = tmp_path_factory.mktemp("fuzz-smtp")
    config = make_config(base, f"sqlite:///{base}/alliance.sqlite3",
                         intake={"max_message_size": 200_000})
    make_list(config, "fuzz", ["m1@members.test", "m2@members.test"], posting="anyone")
    loop = asyncio.new_event_loop()
    daemon = build(config, poll=0.1)
    loop.run_until_complete(daemon.start())
    yield loop, daemon
    loop.run_until_complete(daemon.stop(grace=5))
    loop.close()


@fuzzed("smtp", 100)
@given(steps=sessions())
def test_every_smtp_line_gets_one_good_reply_and_each_250_stores_one_message(
        smtp_daemon: tuple[Any, Daemon], steps: list[tuple[str, list[bytes]]]) -> None:
    loop, daemon = smtp_daemon
    port = daemon.ports["smtp"]

    async def run() -> tuple[int, int]:
        before = await daemon.db.read(count_messages)
        queued = await converse(port, steps)
        await still_answers(port)
        return queued, await daemon.db.read(count_messages) - before

    with timed("smtp"):
        queued, stored = loop.run_until_complete(run())
    assert stored == queued


# -- 2. a post's MIME: the screen, the rules, the pipeline --------------------------------

@fuzzed("screen", 400)
@given(raw=posts)
def test_the_screen_never_raises_and_stays_fast(raw: bytes) -> None:
    with timed("screen"):
        started = time.process_time()
        refusal = screen.check(raw, screen.Limits())
        assert time.process_time() - started < 0.5 + len(raw) / 1e6
    assert refusal is None or refusal[:1] == "5"


@fuzzed("screen", 100)
@given(raw=posts, copies=st.integers(1, 60))
def test_the_screen_is_linear_in_the_message(raw: bytes, copies: int) -> None:
    """A message of many copies costs no more per byte than one copy (within noise)."""
    big = raw * copies * 20
    with timed("screen"):
        started = time.process_time()
        screen.check(big, screen.Limits())
        spent = time.process_time() - started
    assert spent < 0.2 + len(big) / 20e6, f"{len(big)} bytes in {spent:.2f} s"


LIST_OPTIONS = {
    "subject_prefix": ["[fuzz]", "", "[\u00e9\u00e8]", '"q" \\', "=?utf-8?q?x?="],
    "reply_to": ["poster", "list"], "footer": ["yes", "no"],
    "dmarc_mode": ["dmarc-policy", "always", "never"], "dmarc_poster_in": ["reply-to", "cc"],
    "posting_policy": ["members", "anyone", "moderated", "announce"],
    "nonmember_action": ["hold", "reject", "discard"], "language": ["en", "fr", "es"],
    "display_name": ["Fuzz", 'A "quoted" \\ list', "Liste \u00e9t\u00e9", "a@b.test", "",
                     "x" * 300]}


@pytest.fixture
def fuzz_list(db: Database) -> Database:
    db.transaction(lambda s: service.add_members(
        s, service.create(s, "fuzz", display_name="Fuzz"),
        ["m1@members.test", "ana@party.test"]))
    return db


def injected(data: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0]
    return INJECTED.search(head) is not None


@contextlib.contextmanager
def rolled_back(db: Database) -> Iterator[Session]:
    with db.write_session() as session:
        try:
            yield session
        finally:
            session.rollback()


def handle_post(session: Session, raw: bytes, mail_from: str, facts: PostFacts,
                options: dict[str, str]) -> None:
    """What the post handler does with `raw`, checking each pipeline step on the way."""
    mailing_list = service.find(session, "fuzz")
    for key, value in options.items():
        list_settings.change(mailing_list, key, value)
    site = list_site()
    stored = Message(received_at=time.time(), protocol="smtp", peer="127.0.0.1",
                     mail_from=mail_from, size=len(raw), sha256="", raw=raw)
    session.add(stored)
    session.flush()
    inbound = Inbound(1, stored.id, Route(Role.POST, "fuzz"), site.address("fuzz"), mail_from,
                      raw, prepared=facts)
    problem = reading_problem(inbound.message)      # as PostHandler.prepare reads it
    if problem:
        hold_unreadable(session, site, mailing_list, inbound,
                        dataclasses.replace(facts, unreadable=problem))
        session.flush()
        return
    post = make_post(site, mailing_list, inbound)
    decision = decide(session, post)
    data = post.raw
    for step in PIPELINE:
        data = step(post, data)
        parse(data)
        assert injected(data) <= injected(raw), (step.__name__, data[:2000])
    if decision.action == "accept":
        fan_out(session, post, data)
    elif decision.action == "hold":
        moderation.hold(session, site, post, decision)
    elif decision.action == "reject":
        moderation.refuse(session, site, post, decision)
    session.flush()
    for (sent,) in session.execute(select(Outgoing.data)):
        parse(sent)
        assert injected(sent) <= injected(raw), sent[:2000]


@fuzzed("post", 150)
@given(raw=posts, mail_from=st.sampled_from(["ana@party.test", "", "stranger@x.test",
                                             "fuzz@" + DOMAIN, "MAILER-DAEMON@x.test"]),
       policy=st.sampled_from([None, "reject", "quarantine", "none", "\u00e9"]),
       options=st.dictionaries(st.sampled_from(sorted(LIST_OPTIONS)), st.just(""),
                               max_size=4).flatmap(lambda keys: st.fixed_dictionaries(
                                   {k: st.sampled_from(LIST_OPTIONS[k]) for k in keys})))
def test_a_post_that_passes_the_screen_goes_through_the_list_side(
        fuzz_list: Database, raw: bytes, mail_from: str, policy: str | None,
        options: dict[str, str]) -> None:
    stored = b"Received: from client.test (127.0.0.1)\r\n\tby lists.example.org with SMTP; " \
             b"Mon, 1 Mar 2027 10:00:00 +0000\r\n" + raw     # as intake stores it
    if screen.check(raw, screen.Limits()) is not None:
        return
    with timed("post"), rolled_back(fuzz_list) as session:
        handle_post(session, stored, mail_from, PostFacts(dmarc_policy=policy), options)


# -- 3. iCalendar replies -------------------------------------------------------------------

FIXTURES = {path.name: crlf(path.read_bytes()) for path in sorted(REPLIES.glob("*.eml"))}


def calendars_in(raw: bytes) -> list[bytes]:
    return [part.data for part in itip.parts(parse(raw), [])]


FIXTURE_CALENDARS = [data for raw in FIXTURES.values() for data in calendars_in(raw)]
HOSTILE_LINES = [
    b"RRULE:FREQ=SECONDLY;COUNT=999999999;BYSECOND=" + b",".join(b"%d" % i for i in range(60)),
    b"RRULE:FREQ=YEARLY;" + b"BYMONTH=1;" * 500, b"BEGIN:VALARM", b"REPEAT:2147483648",
    b"TRIGGER:-PT99999999999W", b"END:VALARM", b"BEGIN:VEVENT", b"END:VEVENT",
    b"BEGIN:VTIMEZONE", b"END:VTIMEZONE", b"BEGIN:VCALENDAR", b"END:VCALENDAR",
    b"UID:second-uid", b"UID:", b"METHOD:REPLY", b"METHOD:COUNTER", b"METHOD:", b"METHOD:x" * 50,
    b"DTSTAMP:99999999T999999Z", b"DTSTART;TZID=../../etc/passwd:20270314T090000",
    b"DTSTART;TZID=W. Europe Standard Time:20270314T090000", b"DTEND:0000",
    b"DTSTART;VALUE=DATE:20270230", b"SEQUENCE:-99999999999999999999999", b"SEQUENCE:1e9",
    b"ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-TO=\"mailto:a@b\",\"mailto:c@d\":mailto:ana@party.test",
    b"ATTENDEE;CN=\"unterminated:mailto:ana@party.test", b"ATTENDEE:", b"ATTENDEE;;;:;",
    b"RECURRENCE-ID:20270314T090000Z", b"COMMENT:" + b"\\n" * 3000, b"X-A;\xff\xfe=1:\xc3",
    b"ORGANIZER;SENT-BY=\"mailto:x\":mailto:", b"BEGIN:X-NESTED", b"END:X-NESTED",
    b"DURATION:P99999999999999D", b"EXDATE:" + b"20270314T090000Z," * 300, b" folded",
    b"\tfolded", b"", b"\xc3\x28", b"LOCATION:\xe9t\xe9"]


@st.composite
def calendar_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """A calendar with line edits: fold, break UTF-8, repeat, drop, insert hostile lines."""
    lines = data.split(b"\r\n")
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        edit = draw(st.sampled_from(["fold", "utf8", "repeat", "drop", "insert", "insert",
                                     "value", "method"]))
        line = lines[at] if lines else b""
        if edit == "fold" and line:
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + draw(st.sampled_from([b"\r\n ", b"\r\n\t", b"\n ",
                                                           b"\r\n"])) + line[cut:]
        elif edit == "utf8":
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + draw(st.sampled_from([b"\xc3", b"\xff", b"\xe2\x82",
                                                           b"\x00", b"\xed\xa0\x80"])) + line[cut:]
        elif edit == "repeat":
            times = draw(st.sampled_from([2, 40, 200, 2000]))
            lines[at:at + 1] = [line] * min(times, 200_000 // (len(line) + 2))
        elif edit == "drop" and lines:
            del lines[at]
        elif edit == "insert":
            lines.insert(at, draw(st.sampled_from(HOSTILE_LINES)))
        elif edit == "value" and b":" in line:
            lines[at] = line.split(b":", 1)[0] + b":" + draw(st.binary(max_size=30))
        elif edit == "method":
            lines = [x for x in lines if not x.upper().startswith(b"METHOD")]
    return b"\r\n".join(lines)


def wrap(calendar: bytes, how: str, charset: str, method: str, sender: str) -> bytes:
    """A calendar in one of the shapes clients send (inline, attached, nested, twice)."""
    head = (f"From: {sender}\r\nTo: rsvp+TOKEN@{DOMAIN}\r\nSubject: Accepted\r\n"
            "Date: Mon, 1 Mar 2027 10:00:00 +0000\r\nMIME-Version: 1.0\r\n").encode(
                "utf-8", "surrogatepass")
    params = f"; charset={charset}" + (f"; method={method}" if method else "")
    inline = f"Content-Type: text/calendar{params}\r\n\r\n".encode() + calendar
    b64 = (f'Content-Type: application/ics; name="invite.ics"{params}\r\n'
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + base64.encodebytes(calendar)
    octet = (b'Content-Type: application/octet-stream; name="Reply.ICS"\r\n'
             b"Content-Transfer-Encoding: base64\r\n\r\n") + base64.encodebytes(calendar)
    qp = f"Content-Type: text/calendar{params}\r\nContent-Transfer-Encoding: quoted-printable" \
         f"\r\n\r\n".encode() + calendar.replace(b"=", b"=3D")
    text = b"Content-Type: text/plain\r\n\r\nI will come.\r\n"

    def multi(*parts: bytes) -> bytes:
        return b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n' + b"".join(
            b"--zz\r\n" + part + b"\r\n" for part in parts) + b"--zz--\r\n"
    shapes = {"inline": inline, "b64": b64, "octet": octet, "qp": qp,
              "alternative": multi(text, inline), "google": multi(text, inline, b64),
              "rfc822": b"Content-Type: message/rfc822\r\n\r\n" + head + inline,
              "report": b'Content-Type: multipart/report; report-type=delivery-status; '
                        b'boundary="zz"\r\n\r\n--zz\r\n' + inline + b"\r\n--zz--\r\n",
              "nested": multi(multi(multi(text, octet)))}
    return head + shapes[how]


@st.composite
def generated_calendars(draw: st.DrawFn) -> bytes:
    """A structured iTIP object: METHOD or none, events, attendees, hostile values."""
    lines = [b"BEGIN:VCALENDAR", b"VERSION:2.0", b"PRODID:-//fuzz//EN"]
    method = draw(st.sampled_from([b"REPLY", b"COUNTER", b"REFRESH", b"REQUEST", b"reply",
                                   b"", None, b"X-FOO"]))
    if method is not None:
        lines.append(b"METHOD:" + method)
    if draw(st.booleans()):
        lines += [b"BEGIN:VTIMEZONE", b"TZID:" + draw(st.sampled_from(
            [b"Africa/Nairobi", b"W. Europe Standard Time", b"Bogus/Zone", b"/etc/passwd"])),
            b"BEGIN:STANDARD", b"DTSTART:16010101T000000", b"TZOFFSETFROM:+0300",
            b"TZOFFSETTO:+0300", b"END:STANDARD", b"END:VTIMEZONE"]
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3, 40]))):
        lines.append(b"BEGIN:VEVENT")
        for _ in range(draw(st.sampled_from([1, 1, 0, 2]))):
            lines.append(b"UID:" + draw(st.sampled_from(
                [b"a6c0b1e2@lists.example.org", b"", b"x" * 400, b"\xff\xfe"])))
        lines.append(b"SEQUENCE:" + draw(st.sampled_from(
            [b"0", b"1", b"-1", b"99999999999999999999", b"x", b""])))
        lines.append(b"DTSTAMP:" + draw(st.sampled_from(
            [b"20270301T100000Z", b"20270301", b"bad", b"99991231T235959Z", b"20270230T250000"])))
        for _ in range(draw(st.integers(0, 4))):
            params = b";".join(draw(st.lists(st.sampled_from(
                [b"PARTSTAT=ACCEPTED", b"PARTSTAT=declined", b"PARTSTAT=DELEGATED",
                 b"PARTSTAT=A B", b'CN="Ana \\" Silva"', b"CN=" + "\u00e9".encode() * 30,
                 b'DELEGATED-TO="mailto:kofi@party.test"', b'SENT-BY="mailto:sec@x.test"',
                 b"X-RESPONSE-COMMENT=" + b"c" * 3000, b"RSVP=TRUE", b"X=\xff"]), max_size=4)))
            address = draw(st.sampled_from([b"mailto:ana@party.test", b"MAILTO:Ana@Party.test",
                                            b"ana@party.test", b"mailto:", b"urn:x"]))
            lines.append(b"ATTENDEE" + (b";" + params if params else b"") + b":" + address)
        lines += draw(st.lists(st.sampled_from(HOSTILE_LINES), max_size=4))
        if draw(st.integers(0, 4)):
            lines.append(b"END:VEVENT")
    if draw(st.integers(0, 4)):
        lines.append(b"END:VCALENDAR")
    data = b"\r\n".join(lines) + b"\r\n"
    if draw(st.booleans()):   # fold every line at 75 octets, through UTF-8 sequences too
        data = b"\r\n".join(b"\r\n ".join(line[i:i + 74] for i in range(0, len(line) or 1, 74))
                            for line in data.split(b"\r\n"))
    return data.replace(b"\r\n", draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"])))


def wrapped_calendars(source: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(wrap, source,
                     st.sampled_from(["inline", "b64", "octet", "qp", "alternative", "google",
                                      "rfc822", "report", "nested"]),
                     st.sampled_from(["utf-8", "us-ascii", "klingon", "utf-16", "latin1"]),
                     st.sampled_from(["REPLY", "", "counter", "REQUEST", "x" * 300]),
                     st.sampled_from(["ana@party.test", "Ana <ana@party.test>", "",
                                      "=?utf-8?b?QW5hCg==?= <ana@party.test>", "<>", "a@@b"]))


mutated_fixtures = st.one_of(
    st.sampled_from(sorted(FIXTURES)).flatmap(
        lambda name: st.builds(lambda raw, edited: edited, st.just(FIXTURES[name]),
                               calendar_edits(FIXTURES[name]))),
    wrapped_calendars(st.sampled_from(FIXTURE_CALENDARS).flatmap(calendar_edits)))


class _Unreadable(logging.Handler):
    """Counts what fell into `rsvp.read`'s catch-all, by exception type (for the report)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            UNREADABLE[record.exc_info[0].__name__] += 1


@pytest.fixture(scope="module", autouse=True)
def unreadable_count() -> Iterator[None]:
    handler = _Unreadable(logging.WARNING)
    logger = logging.getLogger("meetings.rsvp")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)


def read_reply(raw: bytes, mail_from: str = "ana@party.test") -> Reading:
    [reading] = read_many([(raw, mail_from, 1)])     # as a worker process is given it
    assert isinstance(reading, Reading)
    return reading


@fuzzed("rsvp_mutated", 300)
@given(raw=mutated_fixtures)
def test_reading_a_mutated_client_reply_never_raises(raw: bytes) -> None:
    with timed("rsvp_mutated", raw):
        read_reply(raw)


@fuzzed("rsvp_generated", 300)
@given(raw=wrapped_calendars(generated_calendars()))
def test_reading_a_generated_reply_never_raises(raw: bytes) -> None:
    with timed("rsvp_generated", raw):
        read_reply(raw)


@pytest.fixture
def world(db: Database) -> World:
    return db.transaction(organise)


@fuzzed("rsvp_process", 80)
@given(raw=st.one_of(mutated_fixtures, wrapped_calendars(generated_calendars())))
def test_processing_a_hostile_reply_never_raises(db: Database, world: World,
                                                 raw: bytes) -> None:
    """All of it: the reading, the rules and the forward to coordination@, rolled back."""
    address = "ana@party.test"
    rcpt = world.rsvp(address)
    raw = raw.replace(b"rsvp+TOKEN@" + DOMAIN.encode(), rcpt.encode()) \
        .replace(b"a6c0b1e2-4f3d-4b8e-9c7a-2d5e8f1a3b4c@lists.example.org", world.uid.encode())
    token = rcpt.split("+", 1)[1].split("@", 1)[0]
    inbound = Inbound(1, 1, Route(Role.RSVP, None, token), rcpt, address, raw,
                      policy=RsvpHandler.options.policy)
    with timed("rsvp_process", raw), rolled_back(db) as session:
        invitation = session.get(Invitation, world.invitations[address])
        assert invitation is not None
        outcome = process(session, meeting_site(), invitation, inbound)
        session.flush()
    assert outcome.action


# -- what the fuzzing found: one reproducer per bug, until it is fixed ----------------------

def test_the_client_replies_to_mutate_are_there() -> None:
    assert len(FIXTURES) >= 8 and len(FIXTURE_CALENDARS) >= 5, Path(REPLIES)



async def test_an_address_the_parser_fails_on_gets_a_permanent_refusal(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/alliance.sqlite3")
    make_list(config, "fuzz", ["m1@members.test"])
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        assert (await talk.say("EHLO client.test")).startswith("250")
        assert (await talk.say('MAIL FROM:"'))[:3] in ("501", "553")
        assert (await talk.say("MAIL FROM:<ana@party.test>")).startswith("250")
        assert (await talk.say('RCPT TO:"'))[:3] in ("501", "553")
        await talk.close()



HOSTILE_FROM = (b"From: =?utf-8?q?Ana=0D=0AX-Injected=3A_yes?= <ana@party.test>\r\n"
                b"To: fuzz@lists.example.org\r\nSubject: hi\r\n\r\nHello\r\n")
TRIPPING_FROM = (b'From: "\\"x" <m1@members.test>, other@party.test\r\n'
                 b"From: =?utf-8?b?QW5h?= <m1@")


@pytest.mark.parametrize("raw", [HOSTILE_FROM, TRIPPING_FROM], ids=["crlf", "trips"])
def test_a_post_whose_from_cannot_be_parsed_is_held(fuzz_list: Database, raw: bytes) -> None:
    with rolled_back(fuzz_list) as session:
        mailing_list = service.find(session, "fuzz")
        site = list_site()
        inbound = Inbound(1, 1, Route(Role.POST, "fuzz"), site.address("fuzz"),
                          "ana@party.test", raw)
        decision = decide(session, make_post(site, mailing_list, inbound))
    assert decision.action == "hold"



def test_a_reply_full_of_unclosed_time_zones_is_read_quickly() -> None:
    calendar = b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\n" + b"BEGIN:VTIMEZONE\r\n" * 6000
    raw = wrap(calendar, "inline", "utf-8", "REPLY", "ana@party.test")   # 100 kB
    started = time.process_time()
    read_reply(raw)
    assert time.process_time() - started < 1.0     # about 3 s now; 19 s at 256 kB


# A Content-Type with an RFC 2231 parameter cut after its `*` passes intake's screen, and
# CPython's parser (BytesParser, modern policy) raises IndexError in
# parse_mime_parameters while reading it: a post, or mail to NAME-request@, failed three
# times and was quarantined. Now the field is read as text (mailer.inbound.ReadingPolicy):
# the post is held for a moderator with the reason, the request answered.
TRIPPING_CONTENT_TYPE = (b"From: ana@party.test\r\nTo: fuzz@lists.example.org\r\n"
                         b"Subject: hi\r\nContent-Type: text/plain; a*\r\n\r\nHello\r\n")
# The second long run's find: RFC 2231 continuations that CPython's old parameter parser
# (email.utils.decode_params) cannot sort, TypeError; in a multipart the whole parse fails.
TRIPPING_CONTINUATIONS = (b"From: ana@party.test\r\nTo: fuzz@lists.example.org\r\n"
                          b"Subject: hi\r\nContent-Type: multipart/mixed; boundary=x; "
                          b"a*0*=x; a*0*=x; a*\r\n\r\n--x\r\nContent-Type: text/plain\r\n"
                          b"\r\nHello\r\n--x--\r\n")


@pytest.mark.parametrize("local", ["fuzz", "fuzz-request"])
@pytest.mark.parametrize(("raw", "unread"), [
    (TRIPPING_CONTENT_TYPE, "Content-Type"),
    (TRIPPING_CONTINUATIONS, "MIME structure, Content-Type")], ids=["cut", "continuations"])
async def test_a_content_type_the_parser_trips_on_is_not_quarantined(
        tmp_path: Path, local: str, raw: bytes, unread: str) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/alliance.sqlite3")
    make_list(config, "fuzz", ["m1@members.test"], posting="anyone")
    assert screen.check(raw, screen.Limits()) is None
    sink = Sink()
    await sink.start()
    config = make_config(tmp_path, config.database.url, smarthost_port=sink.port)
    try:
        async with running(config) as daemon:
            await send(daemon.ports["smtp"], "ana@party.test", [f"{local}@{DOMAIN}"],
                       raw)
            await quiet(daemon)       # fails if the unit was quarantined
            reasons = await daemon.db.read(lambda s: list(s.scalars(select(Held.reason))))
    finally:
        await sink.stop()
    if local == "fuzz":
        assert reasons == ["the message could not be read safely: the parser cannot read "
                           f"its {unread} field"]
        assert "m1@members.test" not in sink.recipients
    else:
        assert reasons == []
        assert sink.recipients["ana@party.test"] == 1     # the robot's answer


def test_a_from_with_a_charset_the_library_refuses_still_gets_the_dmarc_from(
        fuzz_list: Database) -> None:
    """The third long run's find: an encoded word whose charset is 8-bit garbage made
    email.header raise CharsetError while the DMARC step read the poster's name."""
    raw = (b"From: =?\x80tf-8?q?X=2DFuzz?= <ana@party.test>\r\nTo: fuzz@lists.example.org\r\n"
           b"Subject: hi\r\nMessage-ID: <1@fuzz.test>\r\n\r\nHello\r\n")
    with rolled_back(fuzz_list) as session:
        handle_post(session, raw, "ana@party.test", PostFacts(dmarc_policy="reject"), {})
        sent = [parse(data) for (data,) in session.execute(select(Outgoing.data))]
    assert sent and all("via" in str(message["from"]) for message in sent)


def test_a_subject_with_a_unicode_line_break_is_held_and_the_poster_told(
        fuzz_list: Database) -> None:
    """The fourth long run's find: U+0085 (NEL) in a stranger's Message-ID reached the
    In-Reply-To of the notice that tells them their post waits, and the email library
    refused it (a line break to Python); the notice goes, without In-Reply-To."""
    raw = ("From: stranger@x.test\r\nTo: fuzz@lists.example.org\r\nSubject: a\x85b\u2028c"
           "\r\nMessage-ID: <2\x85x@fuzz.test>\r\n\r\nHello\r\n").encode()
    with rolled_back(fuzz_list) as session:
        mailing_list = service.find(session, "fuzz")
        list_settings.change(mailing_list, "posting_policy", "members")
        handle_post(session, raw, "stranger@x.test", PostFacts(), {})
        sent = [parse(data) for (data,) in session.execute(select(Outgoing.data))]
    assert [str(message["subject"]) for message in sent] == \
        ["Your message to Fuzz awaits approval"]
    assert sent[0]["in-reply-to"] is None
