"""Intake over real SMTP and LMTP sockets: what is refused at RCPT, what 250 means."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from mailer import smtp_replies
from mailer.models import Message, Work
from tests.helpers import (
    DOMAIN,
    Dialogue,
    mail,
    make_config,
    make_list,
    members,
    running,
    send,
)

LIST = f"steering@{DOMAIN}"


async def test_unknown_list_is_refused_at_rcpt(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    async with running(config) as daemon:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await send(daemon.ports["smtp"], "a@example.com", [f"nolist@{DOMAIN}"],
                       mail("a@example.com", f"nolist@{DOMAIN}"))
    error = refused.value.recipients[0]
    assert (error.code, error.message) == (550, "5.1.1 No such list or address here")


async def test_foreign_domain_is_never_relayed(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        assert (await talk.say("MAIL FROM:<a@example.com>")).startswith("250")
        assert await talk.say("RCPT TO:<victim@gmail.com>") == smtp_replies.NO_RELAY
        assert await talk.say("RCPT TO:<steering@lists.example.org.evil.test>") == \
            smtp_replies.NO_RELAY
        await talk.close()


async def test_encoded_words_and_source_routes_are_refused(tmp_path: Path,
                                                           sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        await talk.say("MAIL FROM:<a@example.com>")
        for address in ("<=?utf-8?q?steering?=@lists.example.org>",
                        "<@relay.test:steering@lists.example.org>",
                        "<a@b@lists.example.org>"):
            assert (await talk.say(f"RCPT TO:{address}")).startswith("553"), address
        await talk.close()


async def test_recipient_limit_answers_452(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url, intake={"max_recipients": 3})
    for n in range(4):
        make_list(config, f"list{n}", [])
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        await talk.say("MAIL FROM:<a@example.com>")
        answers = [await talk.say(f"RCPT TO:<list{n}@{DOMAIN}>") for n in range(4)]
        await talk.close()
    assert answers[:3] == [smtp_replies.RCPT_OK] * 3
    assert answers[3] == smtp_replies.TOO_MANY_RECIPIENTS


async def test_oversize_message_is_refused_and_nothing_is_stored(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url, intake={"max_message_size": 20_000})
    make_list(config, "steering", members(2))
    async with running(config) as daemon:
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await send(daemon.ports["smtp"], "m00001@members.test", [LIST],
                       mail("m00001@members.test", LIST, body=("x" * 70 + "\n") * 400))
        stored = daemon.db.query(lambda s: s.scalars(select(Message)).all())
    assert refused.value.code == 552
    assert stored == []


async def test_overlong_line_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        await talk.say("MAIL FROM:<a@example.com>")
        await talk.say(f"RCPT TO:<{LIST}>")
        assert (await talk.say("DATA")).startswith("354")
        answer = await talk.say(b"Subject: x\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")
        await talk.close()
    assert answer.startswith("500")


async def test_250_means_the_message_is_committed(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    data = mail("a@example.com", LIST, subject="Committed")
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "a@example.com", [LIST], data)
        # Read with a separate connection, as another process would after a crash.
        path = sqlite_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as other:
            rows = other.execute("SELECT mail_from, raw FROM messages").fetchall()
    assert len(rows) == 1
    assert rows[0][0] == "a@example.com"
    assert rows[0][1].endswith(data)
    assert rows[0][1].startswith(b"Received: from ")


async def test_lmtp_answers_once_per_recipient(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    make_list(config, "board", [])
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["lmtp"])
        assert (await talk.say("EHLO mx.test")).startswith("500")
        assert (await talk.say("LHLO mx.test")).startswith("250")
        await talk.say("MAIL FROM:<a@example.com>")
        assert await talk.say(f"RCPT TO:<{LIST}>") == smtp_replies.RCPT_OK
        assert (await talk.say(f"RCPT TO:<nobody@{DOMAIN}>")).startswith("550 5.1.1")
        assert await talk.say(f"RCPT TO:<board@{DOMAIN}>") == smtp_replies.RCPT_OK
        await talk.say("DATA")
        talk.writer.write(mail("a@example.com", LIST) + b".\r\n")
        first = await talk.reply()
        second = await talk.reply()
        await talk.close()
        work = daemon.db.query(lambda s: sorted(s.scalars(select(Work.recipient))))
    assert first == second == smtp_replies.OK
    assert work == [f"board@{DOMAIN}", LIST]


async def test_a_storage_fault_answers_451_never_5xx(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    path = sqlite_url.removeprefix("sqlite:///")
    async with running(config) as daemon:
        with sqlite3.connect(path) as saboteur:
            saboteur.execute("ALTER TABLE messages RENAME TO messages_away")
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await send(daemon.ports["smtp"], "a@example.com", [LIST],
                       mail("a@example.com", LIST))
        assert (refused.value.code, refused.value.message) == \
            (451, smtp_replies.TEMPORARY_FAILURE[4:])
        with sqlite3.connect(path) as saboteur:
            saboteur.execute("ALTER TABLE messages_away RENAME TO messages")
        _, reply = await send(daemon.ports["smtp"], "a@example.com", [LIST],
                              mail("a@example.com", LIST))
    assert reply == smtp_replies.OK[4:]


async def test_shutdown_finishes_the_message_in_progress_and_refuses_new_sessions(
        tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    path = sqlite_url.removeprefix("sqlite:///")
    async with running(config) as daemon:
        port = daemon.ports["smtp"]
        # Another process holds the write lock: the message in progress must wait for it.
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        in_progress = asyncio.create_task(
            send(port, "a@example.com", [LIST], mail("a@example.com", LIST, "in flight")))
        while daemon.gate.busy == 0:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(daemon.stop(grace=10))
        while not daemon.gate.draining:
            await asyncio.sleep(0.01)
        late = await Dialogue.open_raw(port)
        assert late == smtp_replies.SHUTTING_DOWN
        blocker.execute("COMMIT")
        blocker.close()
        _, reply = await in_progress
        await stopping
    assert reply == smtp_replies.OK[4:]
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM messages").fetchone() == (1,)


async def test_the_null_sender_of_bounces_is_accepted(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO mx.test")
        assert (await talk.say("MAIL FROM:<>")).startswith("250")
        assert await talk.say(f"RCPT TO:<{LIST}>") == smtp_replies.RCPT_OK
        await talk.say("DATA")
        talk.writer.write(mail("mailer-daemon@mx.test", LIST) + b".\r\n")
        assert await talk.reply() == smtp_replies.OK
        await talk.close()
        stored = daemon.db.query(lambda s: s.scalars(select(Message.mail_from)).all())
    assert stored == [""]


async def test_a_recipient_given_twice_gets_one_copy(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    make_list(config, "steering", [])
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "a@example.com", [LIST, LIST.upper()],
                   mail("a@example.com", LIST))
        work = daemon.db.query(lambda s: s.scalars(select(Work.recipient)).all())
    assert work == [LIST]


async def test_an_overlong_or_encoded_sender_is_refused_at_mail(tmp_path: Path,
                                                               sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    async with running(config) as daemon:
        talk = await Dialogue.open(daemon.ports["smtp"])
        await talk.say("EHLO client.test")
        long_sender = "a@" + "x" * 330 + ".org"
        assert (await talk.say(f"MAIL FROM:<{long_sender}>")).startswith("553")
        assert (await talk.say("MAIL FROM:<=?utf-8?q?a?=@example.org>")).startswith("553")
        assert (await talk.say("MAIL FROM:<a@example.org>")) == smtp_replies.MAIL_OK
        await talk.close()


class _Parser:
    """What aiosmtpd's own `_getaddr` reads of its session: the local-part limit."""

    local_part_limit = 0


@pytest.mark.parametrize("arg", [
    "<ana@ps.example>", " <ana.silva+x@ps.example> SIZE=1200 BODY=8BITMIME",
    "<a@b.c>  SIZE=1 ", "<a@b.c>\tX=1", "<a@b.c>x", "<a@b.c> a b  c",
    "<a!#$%&'*+/=?^_`{|}~-@b-c.d>", "<a@b.c> (comment) SIZE=1", '<"q u"@b.c>',
    "<a..b@c>", "<.a@b>", "<a.@b>", "<a@b.>", "<a@[192.0.2.1]>", "ana@ps.example",
    "<ana@ps.example", "<>",
])
def test_the_quick_path_reads_addresses_as_the_full_parser_does(arg: str) -> None:
    from aiosmtpd.smtp import SMTP

    from mailer.intake import plain_path
    quick = plain_path(arg)
    if quick is not None:
        assert quick == SMTP._getaddr(_Parser(), arg)   # type: ignore[arg-type]
    else:
        # Only what the quick path cannot be sure of is left to the full parser.
        assert any(mark in arg for mark in ('"', "..", "<.", ".@", ".>", "[", "(")) \
            or not arg.startswith("<") or arg in ("<>", "<ana@ps.example")
