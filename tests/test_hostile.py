"""What a stranger may send (issue 10; reference/reliability.md §3): every bad input gets a
clear reply, work per message is bounded, and nothing is stored that should not be.

Each test talks to a real daemon over SMTP on port 0 and looks at the stored state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailer import smtp_replies
from mailer.config import Config
from mailer.daemon import Daemon
from mailer.models import Message, Work
from tests.helpers import (
    DOMAIN,
    Dialogue,
    cap_pages,
    cli_error,
    config_file,
    mail,
    make_config,
    make_list,
    running,
)

LIST = f"steering@{DOMAIN}"
POSTER = "ana@party.test"


def stored(daemon: Daemon) -> int:
    return daemon.db.query(lambda s: s.scalar(select(func.count()).select_from(Message)))


async def post(port: int, raw: bytes, *, sender: str = POSTER) -> str:
    """One message over SMTP, line by line; the reply to its end of data."""
    talk = await Dialogue.open(port)
    await talk.say("EHLO client.test")
    assert (await talk.say(f"MAIL FROM:<{sender}>")).startswith("250")
    assert (await talk.say(f"RCPT TO:<{LIST}>")).startswith("250")
    assert (await talk.say("DATA")).startswith("354")
    body = raw.replace(b"\r\n.", b"\r\n..")
    reply = await talk.say(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    await talk.close()
    return reply


def steering(tmp_path: Path, sqlite_url: str, **intake: Any) -> Config:
    config = make_config(tmp_path, sqlite_url, intake=intake)
    make_list(config, "steering", [POSTER])
    return config


def folded(field: str) -> str:
    """A long field folded at its spaces into lines of under 900 octets (RFC 5322 §2.2.3)."""
    lines = [""]
    for word in field.split(" "):
        if lines[-1] and len(lines[-1]) + len(word) > 900:
            lines.append("")
        lines[-1] += (" " if lines[-1] else "") + word
    return "\r\n ".join(lines)


def headers(*lines: str, body: str = "Hello.\r\n") -> bytes:
    fields = (f"From: {POSTER}", f"To: {LIST}", *map(folded, lines))
    return ("\r\n".join(fields) + "\r\n\r\n" + body).encode()


def multipart(depth: int) -> bytes:
    """A message of `depth` multiparts, one inside the other."""
    raw = f"From: {POSTER}\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for level in range(1, depth):
        raw += f"--b{level - 1}\r\nContent-Type: multipart/mixed; boundary=b{level}\r\n\r\n"
    return (raw + f"--b{depth - 1}\r\n\r\nx\r\n").encode()


def parts(count: int) -> bytes:
    return (f"From: {POSTER}\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n"
            + "--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" * count + "--p--\r\n").encode()


# -- caps on one message, at DATA (M07-M09, S04) ---------------------------------------

CAPPED = [
    ("nul", headers("Subject: hi", body="Hel\x00lo\r\n"), smtp_replies.NUL_BYTES),
    ("header-block", headers("Subject: hi", *[f"X-Pad-{n}: {'a' * 900}" for n in range(120)]),
     smtp_replies.HEADER_TOO_LARGE),
    ("header-count", headers(*[f"X-N: {n}" for n in range(1001)]),
     smtp_replies.TOO_MANY_HEADER_FIELDS),
    ("encoded-words", headers("Subject: " + "=?utf-8?q?a?= " * 600),
     smtp_replies.TOO_MANY_ENCODED_WORDS),
    ("from-name-flood", headers("Reply-To: " + ", ".join(
        f"=?utf-8?q?n{n}?= <n{n}@x.test>" for n in range(600))),
     smtp_replies.TOO_MANY_ENCODED_WORDS),
    ("rfc2231-flood", headers("Content-Type: text/plain", "Content-Disposition: attachment; "
                              + "; ".join(f"filename*{n}*=a" for n in range(600))),
     smtp_replies.TOO_MANY_ENCODED_WORDS),
    ("mime-depth", multipart(21), smtp_replies.MIME_TOO_DEEP),
    ("mime-parts", parts(501), smtp_replies.TOO_MANY_PARTS),
]


@pytest.mark.parametrize(("raw", "reply"), [(raw, reply) for _, raw, reply in CAPPED],
                         ids=[name for name, _, _ in CAPPED])
async def test_a_message_over_a_cap_is_refused_at_data_and_not_stored(
        tmp_path: Path, sqlite_url: str, raw: bytes, reply: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        assert await post(daemon.ports["smtp"], raw) == reply
        assert stored(daemon) == 0


@pytest.mark.parametrize("raw", [multipart(20), parts(500), headers(
    "Subject: " + "=?utf-8?q?a?= " * 500)], ids=["depth-20", "500-parts", "500-words"])
async def test_a_message_at_the_caps_is_accepted(tmp_path: Path, sqlite_url: str,
                                                 raw: bytes) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        assert await post(daemon.ports["smtp"], raw) == smtp_replies.OK
        assert stored(daemon) == 1


async def test_the_caps_are_the_configured_ones(tmp_path: Path, sqlite_url: str) -> None:
    config = steering(tmp_path, sqlite_url, max_mime_parts=3, max_mime_depth=2)
    async with running(config) as daemon:
        assert await post(daemon.ports["smtp"], parts(4)) == smtp_replies.TOO_MANY_PARTS
        assert await post(daemon.ports["smtp"], multipart(3)) == smtp_replies.MIME_TOO_DEEP
        assert await post(daemon.ports["smtp"], parts(3)) == smtp_replies.OK


# -- the session (S19, S28-S32, P01) ----------------------------------------------------

async def test_an_eight_bit_envelope_address_gets_553_5_6_7(tmp_path: Path,
                                                            sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        assert await talk.say("MAIL FROM:<ünï@party.test>".encode() + b"\r\n") == \
            smtp_replies.NON_ASCII_ADDRESS
        await talk.close()


async def test_a_silent_client_is_told_421_4_4_2_before_the_close(tmp_path: Path,
                                                                  sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url, timeout=0.3)) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        assert await talk.reply() == smtp_replies.TIMEOUT
        assert await talk.reader.read() == b"", "then closed"


async def test_a_session_that_delivers_nothing_meets_its_deadline(tmp_path: Path,
                                                                  sqlite_url: str) -> None:
    """Slowloris: a NOOP now and then keeps the idle timer away, not the deadline."""
    config = steering(tmp_path, sqlite_url, session_deadline=0.6, timeout=5.0)
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        replies = []
        for _ in range(20):
            replies.append(await talk.say("NOOP"))
            if not replies[-1].startswith("250"):
                break
            await asyncio.sleep(0.1)
        assert replies[-1] == smtp_replies.SESSION_TOO_LONG
        assert await talk.reader.read() == b""


async def test_a_delivered_message_restarts_the_deadline(tmp_path: Path,
                                                         sqlite_url: str) -> None:
    config = steering(tmp_path, sqlite_url, session_deadline=0.8, timeout=5.0)
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        for _ in range(3):
            await asyncio.sleep(0.5)
            await talk.say(f"MAIL FROM:<{POSTER}>")
            await talk.say(f"RCPT TO:<{LIST}>")
            await talk.say("DATA")
            assert await talk.say(mail(POSTER, LIST) + b".\r\n") == smtp_replies.OK
        await talk.close()


async def test_a_session_is_cut_off_after_too_many_refusals(tmp_path: Path,
                                                            sqlite_url: str) -> None:
    """A dictionary attack on list names: refused RCPTs end the session (Postfix's
    smtpd_hard_error_limit)."""
    async with running(steering(tmp_path, sqlite_url, max_errors=5)) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        await talk.say(f"MAIL FROM:<{POSTER}>")
        answers = [await talk.say(f"RCPT TO:<guess{n}@{DOMAIN}>") for n in range(5)]
        assert answers == [smtp_replies.UNKNOWN_ADDRESS] * 5
        assert await talk.reply() == smtp_replies.TOO_MANY_ERRORS
        assert await talk.reader.read() == b""


async def test_connections_from_one_client_are_capped(tmp_path: Path,
                                                      sqlite_url: str) -> None:
    config = steering(tmp_path, sqlite_url, max_connections_per_client=3)
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        held = [await Dialogue.open(port) for _ in range(3)]
        assert await Dialogue.open_raw(port) == smtp_replies.TOO_MANY_FROM_CLIENT
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=("127.0.0.2", 0))
        assert (await Dialogue(reader, writer).reply()).startswith("220"), \
            "another client is served"
        writer.close()
        await held[0].close()
        await asyncio.sleep(0.1)
        assert (await Dialogue.open_raw(port)).startswith("220"), "a freed slot is reused"
        for talk in held[1:]:
            await talk.close()


async def test_five_hundred_sessions_at_once_all_get_a_banner_and_a_250(
        tmp_path: Path, sqlite_url: str) -> None:
    """A burst beyond asyncio's default backlog of 100, from 20 client addresses."""
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        port = daemon.ports["smtp"]

        async def one(n: int) -> str:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(f"127.0.0.{2 + n % 20}", 0))
            talk = Dialogue(reader, writer)
            banner = await talk.reply()
            assert banner.startswith("220"), banner
            await talk.say("EHLO client.test")
            await talk.say(f"MAIL FROM:<{POSTER}>")
            await talk.say(f"RCPT TO:<{LIST}>")
            await talk.say("DATA")
            reply = await talk.say(mail(POSTER, LIST, subject=f"n{n}") + b".\r\n")
            await talk.close()
            return reply

        replies = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(500))), 120)
        assert replies == [smtp_replies.OK] * 500
        assert stored(daemon) == 500


# -- storage full (F03, F04) -------------------------------------------------------------

async def test_a_full_database_answers_452_4_3_1_and_then_recovers(tmp_path: Path,
                                                                   sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        await daemon.db.write(cap_pages, 0)
        big = headers("Subject: full", body="x" * 998 + "\r\n" * 1 + ("y" * 998 + "\r\n") * 200)
        assert await post(daemon.ports["smtp"], big) == smtp_replies.INSUFFICIENT_STORAGE
        await daemon.db.write(cap_pages, None)
        assert await post(daemon.ports["smtp"], big) == smtp_replies.OK
        assert stored(daemon) == 1


# -- header injection through the command line (issue 10, item 5) -----------------------

def test_command_line_text_that_reaches_a_header_refuses_line_breaks(
        tmp_path: Path, sqlite_url: str) -> None:
    made = make_config(tmp_path, sqlite_url)
    make_list(made, "steering", [])
    config = config_file(made, tmp_path)
    assert cli_error(config, "list", "create", "news", "--display-name",
                     "News\r\nBcc: all@x.test") == \
        "the display name of 'news' cannot be used: it holds a line break (CR or LF)"
    assert cli_error(config, "list", "set", "steering", "subject_prefix", "[s]\x00") == \
        "subject_prefix cannot be set to that: it holds a NUL character"
    assert cli_error(config, "party", "add", "Bad\nParty", "--country", "FR",
                     "--region", "europe") == \
        "a party's name cannot be used: it holds a line break (CR or LF)"


def test_a_list_cannot_be_made_its_own_member(tmp_path: Path, sqlite_url: str) -> None:
    made = make_config(tmp_path, sqlite_url)
    make_list(made, "steering", [])
    config = config_file(made, tmp_path)
    assert cli_error(config, "list", "add", "steering", f"steering@{DOMAIN}") == (
        f"steering@{DOMAIN} is an address of this service: a list cannot have "
        "itself, or another of our addresses, as a member")


async def test_unused_work_rows_stay_pending_after_a_refusal(tmp_path: Path,
                                                             sqlite_url: str) -> None:
    """A refused message leaves no work behind (nothing half-stored)."""
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        assert await post(daemon.ports["smtp"], multipart(30)) == smtp_replies.MIME_TOO_DEEP
        assert daemon.db.query(lambda s: s.scalar(select(func.count()).select_from(Work))) \
            == 0
