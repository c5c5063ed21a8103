"""The catalogue of bad inputs and faults (reference/reliability.md §3), as named tests.

Each test is named after its catalogue ID and checks what the catalogue asks: the reply the
client sees, what is stored, and what mail is sent. Cases covered elsewhere are listed, with
their test node ids, in tests/catalogue.md; the last test here keeps that table honest.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import psycopg
import pytest
from sqlalchemy import func, select, text

from lists.models import Held, Member
from mailer import smtp_replies
from mailer.daemon import Daemon
from mailer.models import Delivery, Message, Work
from meetings import itip
from tests.helpers import (
    DOMAIN,
    PG_ADMIN,
    Dialogue,
    Pki,
    Sink,
    free_port,
    mail,
    make_config,
    make_list,
    make_pki,
    postgres_database,
    quiet,
    reply_to,
    running,
    send,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"
REQUEST = f"steering-request@{DOMAIN}"
JOIN = f"steering-join@{DOMAIN}"
POSTER = "ana@party.test"
OTHER = "bo@party.test"
TESTS = Path(__file__).resolve().parent
TABLE = TESTS / "catalogue.md"


# -- what every test looks at ------------------------------------------------------------

def stored(daemon: Daemon) -> int:
    return daemon.db.query(lambda s: s.scalar(select(func.count()).select_from(Message)))


def raws(daemon: Daemon) -> list[bytes]:
    return daemon.db.query(lambda s: list(s.scalars(select(Message.raw))))


def held(daemon: Daemon) -> list[tuple[str, str]]:
    return daemon.db.query(lambda s: [(h.sender, h.reason) for h in s.scalars(select(Held))])


async def session(port: int) -> Dialogue:
    talk = await Dialogue.open(port)
    assert (await talk.say("EHLO client.test")).startswith("250")
    return talk


async def settled(daemon: Daemon, settle: float = 0.3) -> None:
    """Every message handled, every delivery done; nothing quarantined (no crash)."""
    await quiet(daemon)
    await asyncio.sleep(settle)
    await quiet(daemon)


def steering(tmp_path: Path, url: str, sink: Sink | None = None, **sections: Any) -> Any:
    config = make_config(tmp_path, url, smarthost_port=sink.port if sink else None,
                         **sections)
    make_list(config, "steering", [POSTER, OTHER])
    return config


# -- 3.1 the SMTP protocol (S) -----------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<" + LIST.encode() + b">\r\n"
            b"DATA\r\nFrom: evil@attacker.test\r\nSubject: smuggled\r\n\r\nevil\r\n")


@pytest.mark.parametrize("end", [b"\n.\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r",
                                 b"\n.\r\n"],
                         ids=["S01-lf-dot-lf", "S03-crlf-dot-lf", "S03-cr-dot-cr",
                              "S03-cr-dot-crlf", "S03-crlf-dot-cr", "S02-lf-dot-crlf"])
async def test_S01_S02_S03_a_false_end_of_data_makes_one_message(
        tmp_path: Path, sqlite_url: str, sink: Sink, end: bytes) -> None:
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        talk = await session(daemon.ports["smtp"])
        await talk.say(f"MAIL FROM:<{POSTER}>")
        await talk.say(f"RCPT TO:<{LIST}>")
        assert (await talk.say("DATA")).startswith("354")
        talk.writer.write(f"From: {POSTER}\r\nTo: {LIST}\r\nSubject: real\r\n\r\nline"
                          .encode() + end + SMUGGLED + b".\r\n")
        assert await talk.reply() == smtp_replies.OK, "one 250, at the real end"
        assert await talk.say("QUIT") == "221 Bye"
        await settled(daemon)
        [raw] = raws(daemon)
        copies = await wait_quiet(sink, 2)
    assert b"Subject: smuggled" in raw and raw.count(b"\r\nSubject: real") == 1
    assert sorted(d.rcpt for d in copies) == [POSTER, OTHER]
    assert {str(d.message["Subject"]) for d in copies} == {"[steering] real"}
    for copy in copies:
        assert b"\n.\r\n" not in copy.data.replace(b"\r\n.\r\n", b""), \
            "no false end of data goes out"


async def test_S06_a_2000_octet_command_line_is_refused(tmp_path: Path,
                                                        sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        assert await talk.say("EHLO " + "h" * 2000) == "500 Command line too long"
        assert (await talk.say("EHLO client.test")).startswith("250"), "the session goes on"
        await talk.close()
        assert stored(daemon) == 0


async def test_S07_a_declared_size_over_the_limit_is_refused_at_mail(
        tmp_path: Path, sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        reply = await talk.say(f"MAIL FROM:<{POSTER}> SIZE=999999999")
        assert reply.startswith("552") and "exceeds fixed maximum" in reply
        assert await talk.say(f"RCPT TO:<{LIST}>") == "503 Error: need MAIL command"
        await talk.close()
        assert stored(daemon) == 0


async def test_S12_data_before_rcpt_and_rcpt_before_mail_are_503(tmp_path: Path,
                                                                 sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        assert await talk.say(f"RCPT TO:<{LIST}>") == "503 Error: need MAIL command"
        assert await talk.say("DATA") == "503 Error: need RCPT command"
        assert await talk.say(f"MAIL FROM:<{POSTER}>") == smtp_replies.MAIL_OK
        assert await talk.say("DATA") == "503 Error: need RCPT command"
        await talk.close()
        assert stored(daemon) == 0


async def test_S13_a_nested_mail_is_503(tmp_path: Path, sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        assert await talk.say(f"MAIL FROM:<{POSTER}>") == smtp_replies.MAIL_OK
        assert await talk.say("MAIL FROM:<other@party.test>") == \
            "503 Error: nested MAIL command"
        assert await talk.say("RSET") == "250 OK"
        assert await talk.say("MAIL FROM:<other@party.test>") == smtp_replies.MAIL_OK
        await talk.close()
        assert stored(daemon) == 0


async def test_S14_S17_malformed_or_overlong_local_parts_are_553(tmp_path: Path,
                                                                 sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        long_local = "a" * 200
        assert (await talk.say(f"MAIL FROM:<{long_local}@party.test>")).startswith("553 5.1")
        assert await talk.say(f"MAIL FROM:<{POSTER}>") == smtp_replies.MAIL_OK
        for address in (f"{long_local}@{DOMAIN}", f"a@b@{DOMAIN}",
                        f"{'s' * 65}@{DOMAIN}"):
            assert (await talk.say(f"RCPT TO:<{address}>")).startswith("553 5.1.3"), address
        assert await talk.say(f"RCPT TO:<{LIST}>") == smtp_replies.RCPT_OK
        await talk.close()
        assert stored(daemon) == 0


async def test_S18_a_post_from_the_null_sender_is_held_and_never_answered(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        _, reply = await send(daemon.ports["smtp"], "", [LIST],
                              mail("mailer-daemon@mx.test", LIST, subject="Undelivered"))
        assert reply == smtp_replies.OK[4:]
        await settled(daemon)
        assert held(daemon) == [("mailer-daemon@mx.test",
                                 "automatic mail (empty envelope sender)")]
    assert sink.received == [], "no auto-reply, no post"


async def test_S20_smtputf8_is_not_offered(tmp_path: Path, sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        assert await talk.say(f"MAIL FROM:<{POSTER}> SMTPUTF8") == \
            "501 Error: SMTPUTF8 disabled"
        await talk.close()
        assert stored(daemon) == 0


async def test_S22_binarymime_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        assert await talk.say(f"MAIL FROM:<{POSTER}> BODY=BINARYMIME") == \
            "501 Error: BODY can only be one of 7BIT, 8BITMIME"
        assert await talk.say(f"MAIL FROM:<{POSTER}> BODY=8BITMIME") == smtp_replies.MAIL_OK
        await talk.close()
        assert stored(daemon) == 0


async def test_S23_an_eight_bit_body_without_8bitmime_is_kept_byte_for_byte(
        tmp_path: Path, sqlite_url: str) -> None:
    body = "Grüße aus Köln, ça va ?\r\n".encode() + b"latin-1: \xe9t\xe9\r\n"
    raw = f"From: {POSTER}\r\nTo: {LIST}\r\nSubject: 8bit\r\n\r\n".encode() + body
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        await talk.say(f"MAIL FROM:<{POSTER}>")
        await talk.say(f"RCPT TO:<{LIST}>")
        await talk.say("DATA")
        assert await talk.say(raw + b".\r\n") == smtp_replies.OK
        await talk.close()
        [kept] = raws(daemon)
    assert kept.endswith(raw)


async def test_S24_pipelining_before_354_is_one_message(tmp_path: Path,
                                                        sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.ports["smtp"])
        writer.write(b"EHLO client.test\r\nMAIL FROM:<" + POSTER.encode() + b">\r\n"
                     b"RCPT TO:<" + LIST.encode() + b">\r\nDATA\r\n"
                     + mail(POSTER, LIST) + b".\r\nQUIT\r\n")
        answer = (await asyncio.wait_for(reader.read(), 10)).decode()
        writer.close()
        assert answer.count(smtp_replies.OK) == 1, answer
        assert answer.rstrip().endswith("221 Bye")
        assert stored(daemon) == 1


async def test_S25_an_early_talker_is_served_as_any_client(tmp_path: Path,
                                                           sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.ports["smtp"])
        writer.write(b"EHLO client.test\r\n")       # before the greeting
        talk = Dialogue(reader, writer)
        assert (await talk.reply()).startswith("220")
        assert (await talk.reply()).startswith("250")
        await talk.close()
        assert stored(daemon) == 0


def with_tls(tmp_path: Path, url: str) -> tuple[Any, Pki]:
    pki = make_pki(tmp_path)
    return steering(tmp_path, url, smtp={"tls_cert": str(pki.cert),
                                         "tls_key": str(pki.key)}), pki


async def test_S26_a_command_pipelined_behind_starttls_is_discarded(
        tmp_path: Path, sqlite_url: str) -> None:
    """CVE-2024-34083: what follows STARTTLS in the same segment must not be obeyed
    inside the TLS session (a man in the middle's injection)."""
    config, pki = with_tls(tmp_path, sqlite_url)
    async with running(config) as daemon:
        talk = await session(daemon.ports["smtp"])
        talk.writer.write(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n")
        assert (await talk.reply()).startswith("220")
        await talk.writer.start_tls(pki.client_context(), server_hostname="localhost")
        # In TLS, a RCPT before any MAIL of ours must be 503: the injected MAIL is gone.
        assert (await talk.say("EHLO client.test")).startswith("250")
        assert (await talk.say(f"RCPT TO:<{LIST}>")).startswith("503")
        await talk.close()
        assert stored(daemon) == 0


async def test_S27_garbage_instead_of_a_client_hello_closes_the_session_only(
        tmp_path: Path, sqlite_url: str) -> None:
    config, _ = with_tls(tmp_path, sqlite_url)
    async with running(config) as daemon:
        talk = await session(daemon.ports["smtp"])
        assert (await talk.say("STARTTLS")).startswith("220")
        talk.writer.write(b"this is no ClientHello\r\n" * 20)
        # The session ends (read to its end within the wait), with at most a TLS alert:
        # no SMTP answer, no traceback.
        ended = await asyncio.wait_for(talk.reader.read(), 10)
        assert not ended or ended.startswith(b"\x15"), ended
        # The listener goes on serving: a new session is greeted and takes mail.
        again = await session(daemon.ports["smtp"])
        assert (await again.say(f"MAIL FROM:<{POSTER}>")).startswith("250")
        await again.close()
        assert stored(daemon) == 0


async def test_S33_auth_is_not_offered_and_refused(tmp_path: Path, sqlite_url: str) -> None:
    """We are a list server's MX, not a submission service: no AUTH, in clear or in TLS."""
    config, _ = with_tls(tmp_path, sqlite_url)
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        assert "AUTH" not in await talk.say("EHLO client.test")
        answer = await talk.say("AUTH PLAIN AGFuYQBzZWNyZXQ=")
        assert answer == ("538 5.7.11 Encryption required for requested authentication "
                          "mechanism"), "a password is never taken in clear"
        assert (await talk.say(f"MAIL FROM:<{POSTER}>")).startswith("250"), "still served"
        await talk.close()
        assert stored(daemon) == 0


async def test_S28_unknown_commands_end_the_session(tmp_path: Path,
                                                        sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        # aiosmtpd's budget is five: four 500s, and the fifth unknown command ends it.
        answers = [await talk.say(f"BOGUS{n}") for n in range(5)]
        assert answers[:4] == [f'500 Error: command "BOGUS{n}" not recognized'
                               for n in range(4)]
        assert answers[4] == "502 5.5.1 Too many unrecognized commands, goodbye."
        assert await talk.reader.read() == b""
        assert stored(daemon) == 0


async def test_S29_a_noop_flood_is_cut_off(tmp_path: Path, sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        talk.writer.write(b"NOOP\r\n" * 10_000)
        answers = [await talk.reply() for _ in range(101)]
        assert answers[:100] == ["250 OK"] * 100
        assert answers[100] == "421 4.7.0 NOOP sent too many times"
        assert await asyncio.wait_for(talk.reader.read(), 10) == b""
        assert stored(daemon) == 0


async def test_S31_a_trickled_data_meets_the_session_deadline(tmp_path: Path,
                                                              sqlite_url: str) -> None:
    config = steering(tmp_path, sqlite_url, intake={"session_deadline": 0.8, "timeout": 5.0})
    async with running(config) as daemon:
        talk = await session(daemon.ports["smtp"])
        await talk.say(f"MAIL FROM:<{POSTER}>")
        await talk.say(f"RCPT TO:<{LIST}>")
        assert (await talk.say("DATA")).startswith("354")
        answer = b""
        for byte in mail(POSTER, LIST)[:40]:
            with contextlib.suppress(ConnectionError):
                talk.writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(talk.reader.readline(), 0.1)
                break
        assert answer.decode().rstrip() == smtp_replies.SESSION_TOO_LONG
        assert await talk.reader.read() == b""
        assert stored(daemon) == 0


async def test_S35_a_proxy_header_is_an_unknown_command(tmp_path: Path,
                                                        sqlite_url: str) -> None:
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        assert await talk.say("PROXY TCP4 192.0.2.1 192.0.2.2 40000 25") == \
            '500 Error: command "PROXY" not recognized'
        await talk.close()
        assert stored(daemon) == 0


# -- 3.2 the message (M) -----------------------------------------------------------------

async def post_and_settle(daemon: Daemon, raw: bytes, sender: str = POSTER) -> None:
    _, reply = await send(daemon.ports["smtp"], sender, [LIST], raw)
    assert reply == smtp_replies.OK[4:]
    await settled(daemon)


async def test_M01_a_message_without_headers_is_held(tmp_path: Path, sqlite_url: str,
                                                     sink: Sink) -> None:
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await post_and_settle(daemon, b"Just a body, no header at all.\r\n")
        [(sender, reason)] = held(daemon)
    assert reason == "0 From fields, not one with one mailbox"
    assert [(d.rcpt, str(d.message["Subject"])) for d in sink.received] == \
        [(POSTER, "Your message to steering awaits approval")], \
        "no fan-out; one notice, to the envelope sender"


async def test_M02_a_post_without_message_id_gets_one(tmp_path: Path, sqlite_url: str,
                                                      sink: Sink) -> None:
    raw = re.sub(rb"Message-ID: [^\r]*\r\n", b"", mail(POSTER, LIST, subject="no id"))
    assert b"Message-ID" not in raw
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await post_and_settle(daemon, raw)
        copies = await wait_quiet(sink, 2)
    assert sorted(d.rcpt for d in copies) == [POSTER, OTHER], "normal fan-out"
    for copy in copies:
        assert str(copy.message.get("Message-ID", "")).startswith("<")


async def test_M03_two_from_fields_are_held(tmp_path: Path, sqlite_url: str,
                                            sink: Sink) -> None:
    raw = mail(POSTER, LIST, subject="twice").replace(
        b"From: ", b"From: evil@attacker.test\r\nFrom: ", 1)
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await post_and_settle(daemon, raw)
        assert held(daemon) == [("evil@attacker.test", "2 From fields, not one with one mailbox")]
    assert [d for d in sink.received if d.rcpt == OTHER] == []


async def test_M04_an_ambiguous_from_is_a_non_member_and_held(tmp_path: Path, sqlite_url: str,
                                                              sink: Sink) -> None:
    """CVE-2023-27043: `From: member@x <other@y>` must never post as the member."""
    raw = mail(POSTER, LIST, subject="cve").replace(
        f"From: {POSTER}".encode(), f"From: {POSTER} <bob@evil.test>".encode())
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await post_and_settle(daemon, raw, sender="bob@evil.test")
        decisions = held(daemon)
    assert len(decisions) == 1 and POSTER not in decisions[0][0], decisions
    assert [d for d in sink.received if d.rcpt == OTHER] == [], "no post as the member"


async def test_M05_an_encoded_word_in_the_from_address_is_held(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    raw = mail(POSTER, LIST, subject="ew").replace(
        f"From: {POSTER}".encode(), b"From: =?utf-8?q?ana?=@party.test")
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await post_and_settle(daemon, raw)
        assert len(held(daemon)) == 1
    assert [d for d in sink.received if d.rcpt == OTHER] == []


@pytest.mark.parametrize("subject", ["=?utf-8?q?hi=0D=0ABcc:_x@y.test?=",
                                     "=?utf-8?b?aGkNCkJjYzogeEB5LnRlc3Q=?=",
                                     "hi\r\n Bcc: x@y.test"],
                         ids=["q-crlf", "b-crlf", "folded"])
async def test_M06_an_injected_header_is_never_emitted(tmp_path: Path, sqlite_url: str,
                                                      sink: Sink, subject: str) -> None:
    raw = mail(POSTER, LIST, subject="PLACEHOLDER").replace(b"PLACEHOLDER", subject.encode())
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await post_and_settle(daemon, raw)
        [kept] = raws(daemon)
        decisions = held(daemon)
    assert subject.encode() in kept, "stored raw"
    assert sink.received or decisions, "delivered or held, never lost"
    for copy in sink.received:
        head = copy.data.split(b"\r\n\r\n", 1)[0]
        assert not re.search(rb"(?im)^bcc:", head), head
        assert "x@y.test" not in copy.message.get_all("bcc", [])


def _qp_long_line() -> bytes:
    line = "=\r\n".join(["abcdefghij" * 7] * 1500)       # one 105 000-character line
    return (f"From: {POSTER}\r\nTo: {LIST}\r\nSubject: qp\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + line + "\r\n").encode()


DEFECTS = {
    "M10-unknown-charset": (b"Content-Type: text/plain; charset=x-unknown-123\r\n",
                            b"caf\xe9 \xff\xfe\r\n"),
    "M10-invalid-utf8": (b"Content-Type: text/plain; charset=utf-8\r\n",
                         b"broken \xc3\x28 \xe2\x82 bytes\r\n"),
    "M11-eight-bit-subject": (b"X-Note: \xc3\xa9t\xc3\xa9\r\n", b"body\r\n"),
    "M12-bad-base64": (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n",
                       b"SGVsbG8gd29ybGQ*!!@@\r\nSGVsbG8===\r\n"),
    "M15-boundary-inside-and-unclosed": (
        b'Content-Type: multipart/mixed; boundary="b"\r\n',
        b"--b\r\nContent-Type: text/plain\r\n\r\ntext --b inside\r\n--b\r\n"
        b"Content-Type: text/plain\r\n\r\nnever closed\r\n"),
}


@pytest.mark.parametrize("name", [*DEFECTS, "M16-qp-soft-breaks"])
async def test_M10_M11_M12_M15_M16_a_defective_post_fans_out_without_a_crash(
        tmp_path: Path, sqlite_url: str, sink: Sink, name: str) -> None:
    if name in DEFECTS:
        fields, body = DEFECTS[name]
        raw = (f"From: {POSTER}\r\nTo: {LIST}\r\nSubject: defect\r\nMIME-Version: 1.0\r\n"
               .encode() + fields + b"\r\n" + body)
    else:
        raw, body = _qp_long_line(), b"abcdefghij" * 7 + b"=\r\n"
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await post_and_settle(daemon, raw)          # no quarantine: no crash
        copies = await wait_quiet(sink, 2)
    assert sorted(d.rcpt for d in copies) == [POSTER, OTHER]
    for copy in copies:
        assert body.split(b"\r\n")[0] in copy.data, "the original bytes are passed on"
        assert max(len(line) for line in copy.data.split(b"\r\n")) <= 998
        if name.startswith("M11"):
            assert b"X-Note: \xc3\xa9t\xc3\xa9\r\n" in copy.data, "passed on raw"


# -- 3.3 the list (L) --------------------------------------------------------------------

async def test_L11_a_used_or_forged_confirmation_token_changes_nothing(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", [])
    newcomer = "cy@party.test"
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        await send(port, newcomer, [JOIN], mail(newcomer, JOIN))
        [confirmation] = await wait_quiet(sink, 1)
        target, data = reply_to(confirmation, newcomer)
        await send(port, newcomer, [target], data)
        await wait_quiet(sink, 2)                                   # the welcome
        await send(port, newcomer, [target], data)                  # the same token again
        answer = (await wait_quiet(sink, 3))[2]
        assert "unknown or has expired" in answer.message.get_content()
        forged = target.replace("+", "+x", 1)
        _, reply = await send(port, newcomer, [forged], data)
        assert reply == smtp_replies.OK[4:]
        await settled(daemon)
        roster = daemon.db.query(lambda s: list(s.scalars(select(Member.address))))
    assert roster == [newcomer]
    assert len(sink.received) <= 4, "at most one answer for the forged token"
    assert all("unknown or has expired" in d.message.get_content()
               for d in sink.received[2:])


async def test_L15_ten_thousand_commands_get_one_reply(tmp_path: Path, sqlite_url: str,
                                                       sink: Sink) -> None:
    body = "".join(f"set language {'fr' if n % 2 else 'de'}\n" for n in range(10_000))
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        started = time.monotonic()
        _, reply = await send(daemon.ports["smtp"], POSTER, [REQUEST],
                              mail(POSTER, REQUEST, subject="", body=body))
        assert reply == smtp_replies.OK[4:]
        await settled(daemon)
        took = time.monotonic() - started
        [answer] = await wait_quiet(sink, 1)
        member = daemon.db.query(lambda s: s.scalars(select(Member).where(
            Member.address == POSTER)).one())
    assert answer.rcpt == POSTER
    assert answer.message.get_content().count("> set language") <= 30, "the first N only"
    assert member.language in ("fr", "de")
    assert took < 10


async def test_L16_a_list_that_is_its_own_member_is_never_sent_to(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config = steering(tmp_path, sqlite_url, sink)
    # The CLI and the service refuse this (tests/test_hostile.py); an old database may not.
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as legacy:
        legacy.execute("INSERT INTO members (list_id, address, role, display_name, language,"
                       " delivery, digest_format, joined_at, enabled, disabled_reason,"
                       " bounce_score) SELECT list_id, ?, role, display_name, language,"
                       " delivery, digest_format, joined_at, enabled, disabled_reason,"
                       " bounce_score FROM members WHERE address = ?", (LIST, OTHER))
    async with running(config) as daemon:
        await post_and_settle(daemon, mail(POSTER, LIST, subject="loop?"))
        await asyncio.sleep(0.5)
        await settled(daemon)
        recipients = daemon.db.query(lambda s: list(s.scalars(select(Delivery.recipient))))
        work = daemon.db.query(lambda s: s.scalar(select(func.count()).select_from(Work)))
    assert LIST not in recipients
    assert LIST not in sink.recipients
    assert sorted(sink.recipients) == [POSTER, OTHER]
    assert work == 1, "nothing came back to the list"


# -- 3.4 calendars (C): what the others are, tests/test_replies.py and test_fuzz.py ------

def reply_with(*lines: str) -> bytes:
    """Ana's ACCEPTED REPLY carrying these extra lines in its VEVENT."""
    return "\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", "METHOD:REPLY",
        "BEGIN:VEVENT", "UID:m1@lists.example.org", "SEQUENCE:0",
        "DTSTAMP:20270301T100000Z", "DTSTART:20270301T090000Z",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:ana@party.test", *lines,
        "END:VEVENT", "END:VCALENDAR", ""]).encode()


@pytest.mark.parametrize("lines", [
    ("RRULE:FREQ=SECONDLY",),                                        # C09: no end
    ("RRULE:FREQ=SECONDLY;COUNT=2000000000;BYSETPOS=1,2,3,4,5,6,7,8,9,10",),     # C10
    ("BEGIN:VALARM", "ACTION:DISPLAY", "TRIGGER:-PT1S", "REPEAT:2000000000",     # C12
     "DURATION:PT1S", "DESCRIPTION:x", "END:VALARM"),
], ids=["C09", "C10", "C12"])
def test_C09_C10_C12_rules_and_alarms_in_a_reply_are_never_expanded(
        lines: tuple[str, ...]) -> None:
    """Only the answer is read from a REPLY (meetings.itip.essentials keeps what is read):
    an endless rule or an alarm repeated two billion times is never expanded, so the
    reply is read at once (an expansion would not end) and its answer stands."""
    reply = itip.parse(reply_with(*lines))
    assert [(a.address, a.partstat) for a in reply.attendees] == [("ana@party.test",
                                                                   "ACCEPTED")]
    kept = itip.essentials(reply_with(*lines))
    assert b"ATTENDEE" in kept and b"RRULE" not in kept and b"REPEAT" not in kept


def test_C20_calendar_text_that_names_a_local_file_is_never_opened(tmp_path: Path) -> None:
    """Calendar data is bytes handed to icalendar, never a path: text naming a readable
    file is unreadable calendar data, and the file's content appears nowhere."""
    secret = tmp_path / "secret.ics"
    secret.write_bytes(reply_with())           # a calendar the parser would accept
    with pytest.raises(itip.ItipError):
        itip.parse(str(secret).encode())


# -- 3.5 faults (F) ----------------------------------------------------------------------

async def test_F01_a_locked_database_at_acceptance_answers_451(tmp_path: Path,
                                                               sqlite_url: str) -> None:
    """Another process holds the write lock past busy_timeout: 451 4.3.0, never 5xx."""
    path = sqlite_url.removeprefix("sqlite:///")
    async with running(steering(tmp_path, sqlite_url)) as daemon:
        talk = await session(daemon.ports["smtp"])
        await talk.say(f"MAIL FROM:<{POSTER}>")
        await talk.say(f"RCPT TO:<{LIST}>")
        await talk.say("DATA")
        # The daemon's one writer connection waits 0.3 s for a lock, not 15 s: every write
        # queued ahead of the acceptance (router, delivery, scheduler) would wait too.
        await daemon.db.write(lambda s: s.execute(text("PRAGMA busy_timeout=300")))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            talk.writer.write(mail(POSTER, LIST) + b".\r\n")
            line = await asyncio.wait_for(talk.reader.readline(), 30)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert line.decode().rstrip() == smtp_replies.TEMPORARY_FAILURE
        assert stored(daemon) == 0, "nothing committed"
        await talk.say(f"MAIL FROM:<{POSTER}>")
        await talk.say(f"RCPT TO:<{LIST}>")
        await talk.say("DATA")
        assert await talk.say(mail(POSTER, LIST) + b".\r\n") == smtp_replies.OK, \
            "the client's retry is taken"
        await talk.close()
        assert stored(daemon) == 1


@dataclass
class RefusingSink(Sink):
    """A smarthost that refuses the message itself after DATA for some recipients."""

    refuse_data: dict[str, str] = field(default_factory=dict)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.refuse_data:
                return self.refuse_data[rcpt]
        return await super().handle_DATA(server, session, envelope)


def outcomes(daemon: Daemon) -> dict[str, tuple[str, int | None]]:
    return dict(daemon.db.query(lambda s: [(r, (st, c)) for r, st, c in s.execute(
        select(Delivery.recipient, Delivery.state, Delivery.code))]))


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_F07_F08_a_relay_deferring_some_recipients_defers_only_those(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    sink.refuse[OTHER] = "450 4.2.1 Mailbox busy, try later"
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await send(daemon.ports["smtp"], POSTER, [LIST], mail(POSTER, LIST))
        await until(lambda: outcomes(daemon).get(OTHER, ("", 0))[1] == 450)
        assert outcomes(daemon) == {POSTER: ("done", 250), OTHER: ("pending", 450)}
        assert list(sink.recipients) == [POSTER]
        del sink.refuse[OTHER]
        await until(lambda: outcomes(daemon)[OTHER][0] == "done")
        attempts = daemon.db.query(lambda s: dict(s.execute(
            select(Delivery.recipient, Delivery.attempts)).all()))
    assert sink.recipients == {POSTER: 1, OTHER: 1}
    assert attempts[POSTER] == 1 and attempts[OTHER] >= 2


async def test_F09_a_relay_refusing_a_recipient_fails_it_without_a_dsn_to_the_poster(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    sink.refuse[OTHER] = "550 5.1.1 No such user here"
    async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
        await send(daemon.ports["smtp"], POSTER, [LIST], mail(POSTER, LIST))
        await until(lambda: outcomes(daemon).get(OTHER, ("", 0))[0] == "failed")
        await settled(daemon, 0.5)
        score = daemon.db.query(lambda s: s.scalar(select(Member.bounce_score).where(
            Member.address == OTHER)))
        assert outcomes(daemon) == {POSTER: ("done", 250), OTHER: ("failed", 550)}
    assert score == 1.0, "a bounce event for that member"
    assert [(d.rcpt, str(d.message["Subject"])) for d in sink.received] == \
        [(POSTER, "[steering] Hello")], "the poster gets the post, and no DSN"


async def test_F10_a_relay_refusing_the_content_fails_that_destination(
        tmp_path: Path, sqlite_url: str) -> None:
    sink = RefusingSink(refuse_data={OTHER: "554 5.7.1 Message content rejected"})
    await sink.start()
    try:
        async with running(steering(tmp_path, sqlite_url, sink)) as daemon:
            await send(daemon.ports["smtp"], POSTER, [LIST], mail(POSTER, LIST))
            await until(lambda: outcomes(daemon).get(OTHER, ("", 0))[0] == "failed")
            await settled(daemon, 0.5)
            errors = daemon.db.query(lambda s: list(s.scalars(select(Delivery.error).where(
                Delivery.state == "failed"))))
            score = daemon.db.query(lambda s: s.scalar(select(Member.bounce_score).where(
                Member.address == OTHER)))
            assert outcomes(daemon) == {POSTER: ("done", 250), OTHER: ("failed", 554)}
    finally:
        await sink.stop()
    assert errors == ["5.7.1 Message content rejected"], "flagged with the relay's reason"
    assert score == 0.0, "a content refusal is not the member's fault"
    assert list(sink.recipients) == [POSTER]


async def test_F06_postgresql_connections_cut_again_and_again_lose_nothing(
        tmp_path: Path, sink: Sink) -> None:
    """Every backend of the daemon's database is terminated every 50 ms while ten
    messages are sent (some cuts land inside a commit): each message is answered 250 or
    451 (a client sends again after a 451, as an MTA does), every one answered 250 is
    stored once and delivered, and nothing is quarantined."""
    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        async with running(steering(tmp_path, url, sink)) as daemon:
            cutting = asyncio.create_task(cut_connections(name))
            codes: list[int] = []
            try:
                for n in range(10):
                    codes += await send_until_accepted(daemon.ports["smtp"], n)
            finally:
                cutting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cutting
            # Work that met a cut waits out its backoff (router.TRANSIENT_BACKOFF).
            await sink.wait_for(20, timeout=90)
            await settled(daemon)
            stored = collections.Counter(daemon.db.query(lambda s: [
                raw.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                for raw in s.scalars(select(Message.raw))]))
    assert set(codes) <= {250, 451} and codes.count(250) == 10
    # A cut inside the commit of a message answered 451 may still have stored it: the
    # client's second try makes it twice (SMTP's own ambiguity), never zero times.
    assert set(stored) == {f"cut {n}" for n in range(10)} and set(stored.values()) <= {1, 2}
    got = collections.Counter((d.rcpt, str(d.message["subject"])) for d in sink.received)
    assert {(rcpt, f"[steering] cut {n}") for rcpt in (POSTER, OTHER) for n in range(10)} \
        == set(got)
    assert sum(got.values()) <= 2 * sum(stored.values())


async def cut_connections(database: str) -> None:
    """pg_terminate_backend on every connection to `database`, every 50 ms."""
    admin = await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True)
    try:
        while True:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def send_until_accepted(port: int, n: int) -> list[int]:
    """Message n, sent again after each 451 (at most 20 times); the codes answered."""
    codes = []
    for _ in range(20):
        try:
            await send(port, POSTER, [LIST], mail(POSTER, LIST, subject=f"cut {n}"))
            return [*codes, 250]
        except aiosmtplib.SMTPRecipientsRefused as error:     # at RCPT
            codes += [refusal.code for refusal in error.recipients]
        except aiosmtplib.SMTPResponseException as error:     # at MAIL or DATA
            codes.append(error.code)
        await asyncio.sleep(0.1)
    return codes


@dataclass
class StallingSink(Sink):
    """A smarthost that, once per recipient named, waits before answering the DATA."""

    stall: dict[str, float] = field(default_factory=dict)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            await asyncio.sleep(self.stall.pop(rcpt, 0.0))
        return await super().handle_DATA(server, session, envelope)


async def test_F12_a_stalled_relay_is_given_up_on_and_tried_again(
        tmp_path: Path, sqlite_url: str) -> None:
    """The relay takes 3 s to answer one DATA; `outbound.timeout` is 0.5 s: that delivery
    is given up on and retried (the relay may have kept the first copy: one duplicate at
    most), and the other member's copy is not held up."""
    sink = StallingSink(stall={OTHER: 3.0})
    await sink.start()
    try:
        config = steering(tmp_path, sqlite_url, sink, outbound={"timeout": 0.5})
        async with running(config) as daemon:
            await send(daemon.ports["smtp"], POSTER, [LIST], mail(POSTER, LIST))
            await until(lambda: outcomes(daemon).get(POSTER, ("", 0))[0] == "done")
            assert outcomes(daemon)[OTHER][0] != "done", "the stalled copy waits"
            await until(lambda: outcomes(daemon)[OTHER][0] == "done", timeout=15)
            attempts = daemon.db.query(lambda s: dict(s.execute(
                select(Delivery.recipient, Delivery.attempts)).all()))
            await settled(daemon)
    finally:
        await sink.stop()
    assert attempts[POSTER] == 1 and attempts[OTHER] >= 2
    assert sink.recipients[POSTER] == 1 and 1 <= sink.recipients[OTHER] <= 2


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, intake: str = "") -> AsyncIterator[tuple[Any, int]]:
    """`alliance serve` in its own process, as an operator runs it (uvloop when installed);
    yields the process and its SMTP port once it answers."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[site]\ndomain = "{DOMAIN}"\n[database]\n'
                      'url = "sqlite:///alliance.sqlite3"\n'
                      f'[smtp]\nlisten = "127.0.0.1:{port}"\n[lmtp]\nlisten = ""\n'
                      '[http]\nlisten = ""\n[outbound]\nurl = "maildir:outbox"\n'
                      f'[router]\nprocesses = 0\n[intake]\n{intake}\n')
    make_list(make_config(tmp_path, f"sqlite:///{tmp_path}/alliance.sqlite3"), "steering",
              [POSTER])
    daemon = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config),
                               "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                assert time.monotonic() < deadline and daemon.poll() is None, "no daemon"
                await asyncio.sleep(0.1)
        yield daemon, port
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


UVLOOP = ("under `alliance serve` (uvloop) Listener.hang_up does nothing: uvloop's "
          "transports are no asyncio.WriteTransport, so no 421 is written and the session "
          "is not closed")


async def test_F19_sigterm_tells_an_open_session_421_and_keeps_what_was_stored(
        tmp_path: Path) -> None:
    async with serving(tmp_path) as (daemon, port):
        talk = await Dialogue.open(port)
        await talk.say("EHLO client.test")
        await talk.say(f"MAIL FROM:<{POSTER}>")
        await talk.say(f"RCPT TO:<{LIST}>")
        await talk.say("DATA")
        assert await talk.say(mail(POSTER, LIST) + b".\r\n") == smtp_replies.OK
        os.kill(daemon.pid, signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, "a clean stop"
        with contextlib.closing(sqlite3.connect(tmp_path / "alliance.sqlite3")) as check:
            assert check.execute("SELECT count(*) FROM messages").fetchone() == (1,)
            assert check.execute("SELECT count(*) FROM work WHERE state NOT IN "
                                 "('pending', 'done')").fetchone() == (0,), "consistent"
        assert await talk.reply() == smtp_replies.SHUTTING_DOWN


async def test_S32_an_idle_client_of_alliance_serve_is_told_421_and_dropped(
        tmp_path: Path) -> None:
    async with serving(tmp_path, "timeout = 0.5") as (_, port):
        talk = await Dialogue.open(port)
        assert await asyncio.wait_for(talk.reply(), 3) == smtp_replies.TIMEOUT
        assert await talk.reader.read() == b""


# -- the table cannot rot ----------------------------------------------------------------

CATALOGUE = [f"{kind}{n:02d}" for kind, count in
             (("S", 35), ("M", 16), ("L", 16), ("C", 20), ("F", 22), ("P", 8))
             for n in range(1, count + 1)]


def rows() -> list[list[str]]:
    found = []
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"[SMLCFP]\d\d", cells[0]):
            found.append(cells)
    return found


def test_the_catalogue_table_names_every_case_once_and_only_real_tests() -> None:
    table = rows()
    assert len(CATALOGUE) == 117
    assert sorted(row[0] for row in table) == sorted(CATALOGUE), "each ID exactly once"
    defined: dict[Path, set[str]] = {}
    for case, _what, covered, status in (row[:4] for row in table):
        nodes = re.findall(r"tests/[\w/]+\.py::\w+", covered)
        if re.match(r"test\b", status):
            assert nodes, f"{case}: a test row names its tests"
        else:
            assert re.match(r"not here: \S", status), f"{case}: {status!r}"
        for node in nodes:
            file, name = node.split("::")
            path = TESTS.parent / file
            assert path.exists(), f"{case}: {file} is missing"
            if path not in defined:
                tree = ast.parse(path.read_text())
                defined[path] = {n.name for n in ast.walk(tree)
                                 if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
            assert name in defined[path] and name.startswith("test"), \
                f"{case}: {node} is not a test"


def test_every_catalogue_test_here_is_in_the_table() -> None:
    named = {n.name for n in ast.parse(Path(__file__).read_text()).body
             if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
             and re.match(r"test_[SMLCFP]\d\d", n.name)}
    listed = {node.split("::")[1] for row in rows()
              for node in re.findall(r"tests/test_catalogue\.py::\w+", row[2])}
    assert named == listed, named ^ listed

