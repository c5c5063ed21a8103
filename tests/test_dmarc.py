"""DMARC: policies come from a real DNS server on loopback; posts from strict domains go
out From the list, with the poster in Reply-To or Cc, and a DNS failure never loses a post.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from lists import service, settings
from lists.dmarc import DmarcLookup, munge_from
from mailer import rawmail
from mailer.config import Config
from mailer.db import Database
from mailer.dns import TxtResolver
from mailer.models import Work
from tests.helpers import (
    DOMAIN,
    Clock,
    DnsServer,
    Sink,
    mail,
    make_config,
    make_list,
    running,
    send,
    set_option,
)

LIST = f"steering@{DOMAIN}"
STRICT = "ana@strict.example"      # her domain publishes p=reject
RELAXED = "ben@relaxed.example"    # his domain publishes p=none
PLAIN = "carla@plain.example"      # her domain publishes nothing
PEOPLE = [STRICT, RELAXED, PLAIN, "dev@members.test"]


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    server.dmarc("strict.example", "v=DMARC1; p=reject; rua=mailto:dmarc@strict.example")
    server.dmarc("relaxed.example", "v=DMARC1; p=none")
    await server.start()
    yield server
    server.stop()


def lookup(server: DnsServer, clock: Clock | None = None, **options: Any) -> DmarcLookup:
    return DmarcLookup(TxtResolver(server.address, 0.3, 3600.0, clock or Clock(), **options))


def parse(data: bytes) -> EmailMessage:
    parsed = BytesParser(policy=default_policy).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    return parsed


# -- policy lookups ------------------------------------------------------------------

async def test_policy_is_read_from_the_domains_own_record(dns_server: DnsServer) -> None:
    dns_server.dmarc("wary.example", "v=DMARC1;p=quarantine;pct=50")
    dmarc = lookup(dns_server)
    assert await dmarc.policy("strict.example") == "reject"
    assert await dmarc.policy("STRICT.example.") == "reject"
    assert await dmarc.policy("wary.example") == "quarantine"
    assert await dmarc.policy("relaxed.example") == "none"


async def test_a_subdomain_without_a_record_takes_its_organisational_domains_policy(
        dns_server: DnsServer) -> None:
    dns_server.dmarc("example.co.uk", "v=DMARC1; p=reject")
    assert await lookup(dns_server).policy("mail.example.co.uk") == "reject"
    assert dns_server.queries["_dmarc.mail.example.co.uk"] == 1
    assert dns_server.queries["_dmarc.example.co.uk"] == 1
    assert "_dmarc.co.uk" not in dns_server.queries, "a public suffix is never asked"


async def test_sp_applies_to_subdomains_and_p_to_the_domain_itself(
        dns_server: DnsServer) -> None:
    dns_server.dmarc("party.example", "v=DMARC1; p=reject; sp=none")
    dmarc = lookup(dns_server)
    assert await dmarc.policy("news.party.example") == "none"
    assert await dmarc.policy("party.example") == "reject"


async def test_records_that_are_not_dmarc_are_ignored(dns_server: DnsServer) -> None:
    dns_server.txt["_dmarc.mail.party.example"] = ["v=spf1 -all", "hello"]
    dns_server.dmarc("party.example", "v=DMARC1; p=quarantine")
    dns_server.txt["_dmarc.twice.example"] = ["v=DMARC1; p=reject", "v=DMARC1; p=none"]
    dns_server.dmarc("lower.example", "v=dmarc1; p=reject")
    dmarc = lookup(dns_server)
    assert await dmarc.policy("mail.party.example") == "quarantine"
    assert await dmarc.policy("twice.example") is None, "two records: no policy (§6.6.3)"
    assert await dmarc.policy("lower.example") is None, "v=DMARC1 must match exactly"


async def test_no_record_is_no_policy_and_is_remembered(dns_server: DnsServer) -> None:
    dmarc = lookup(dns_server)
    assert await dmarc.policy("plain.example") is None
    assert await dmarc.policy("plain.example") is None
    assert dns_server.queries["_dmarc.plain.example"] == 1


async def test_answers_are_cached_for_cache_seconds(dns_server: DnsServer) -> None:
    clock = Clock()
    dmarc = lookup(dns_server, clock)
    assert await dmarc.policy("strict.example") == "reject"
    dns_server.dmarc("strict.example", "v=DMARC1; p=none")
    clock.now += 3599
    assert await dmarc.policy("strict.example") == "reject"
    assert dns_server.queries["_dmarc.strict.example"] == 1
    clock.now += 2
    assert await dmarc.policy("strict.example") == "none"
    assert dns_server.queries["_dmarc.strict.example"] == 2


async def test_subdomains_share_the_organisational_domains_answer(
        dns_server: DnsServer) -> None:
    dns_server.dmarc("example.co.uk", "v=DMARC1; p=reject")
    dmarc = lookup(dns_server)
    assert await dmarc.policy("a.example.co.uk") == "reject"
    assert await dmarc.policy("b.example.co.uk") == "reject"
    assert dns_server.queries["_dmarc.example.co.uk"] == 1


async def test_the_cache_is_bounded(dns_server: DnsServer) -> None:
    dmarc = lookup(dns_server, cache_entries=2)
    for domain in ("strict.example", "relaxed.example", "plain.example", "strict.example"):
        await dmarc.policy(domain)
    assert isinstance(dmarc.dns, TxtResolver)
    assert len(dmarc.dns.cache) == 2
    assert dns_server.queries["_dmarc.strict.example"] == 2, "the oldest entry was dropped"


async def test_a_server_that_does_not_answer_gives_none_and_is_retried_later(
        dns_server: DnsServer, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    dmarc = lookup(dns_server, clock)
    dns_server.silent = True
    with caplog.at_level(logging.WARNING, logger="mailer.dns"):
        assert await dmarc.policy("strict.example") is None
    assert "strict.example" in caplog.text
    dns_server.silent = False
    assert await dmarc.policy("strict.example") is None, "a failure is remembered a while"
    clock.now += 61
    assert await dmarc.policy("strict.example") == "reject", "but not for cache_seconds"


async def test_servfail_gives_none(dns_server: DnsServer) -> None:
    dns_server.servfail = True
    assert await lookup(dns_server).policy("strict.example") is None


async def test_names_that_are_not_domains_give_none(dns_server: DnsServer) -> None:
    dmarc = lookup(dns_server)
    for name in ("", "a..b", "x" * 70 + ".example", "com"):
        assert await dmarc.policy(name) is None


async def test_international_domains_are_asked_in_a_labels(dns_server: DnsServer) -> None:
    dns_server.dmarc("xn--bcher-kva.example", "v=DMARC1; p=reject")
    assert await lookup(dns_server).policy("bücher.example") == "reject"


# -- rewriting From ------------------------------------------------------------------

def munged(data: bytes, poster_in: str = "reply-to",
           list_name: str = "Steering Committee") -> bytes:
    return munge_from(data, list_address=LIST, list_name=list_name, poster_in=poster_in)


def test_from_becomes_the_list_and_the_poster_goes_to_reply_to() -> None:
    original = mail(f"Ana Souza <{STRICT}>", LIST, subject="Agenda",
                    DKIM_Signature="v=1; a=rsa-sha256; d=strict.example; b=abc")
    result = munged(original)
    message = parse(result)
    sender = message["From"].addresses
    assert len(sender) == 1
    assert sender[0].display_name == "Ana Souza via Steering Committee"
    assert sender[0].addr_spec == LIST
    assert b'From: "Ana Souza via Steering Committee" <steering@lists.example.org>\r\n' in result
    assert [a.addr_spec for a in message["Reply-To"].addresses] == [STRICT]
    assert message["Reply-To"].addresses[0].display_name == "Ana Souza"
    assert message["Cc"] is None
    before, body_before = rawmail.split(original)
    after, body_after = rawmail.split(result)
    assert body_after == body_before, "the body is not touched"
    unchanged = [f for f in before if rawmail.name_of(f) != "from"]
    assert [f for f in after if rawmail.name_of(f) not in ("from", "reply-to")] == unchanged
    assert message["DKIM-Signature"] is not None, "kept, as Mailman keeps it"


def test_non_ascii_names_are_encoded() -> None:
    result = munged(mail("José Müller <jose@strict.example>", LIST),
                    list_name="Comité de pilotage")
    assert result.split(b"\r\n\r\n")[0].isascii(), "RFC 2047 words, no raw UTF-8"
    message = parse(result)
    assert message["From"].addresses[0].display_name == "José Müller via Comité de pilotage"
    assert message["Reply-To"].addresses[0].display_name == "José Müller"


def test_a_long_non_ascii_name_stays_on_one_valid_line() -> None:
    name = "Ñandú " * 30
    result = munged(mail(f"{name.strip()} <nandu@strict.example>", LIST))
    line = next(f for f in rawmail.split(result)[0] if rawmail.name_of(f) == "from")
    assert len(line) < 998 and line.count(b"\r\n") == 1
    # The email package's own address parser keeps the space between encoded-words, which
    # RFC 2047 §6.2 says to drop; decode_header follows the RFC.
    value = line.split(b":", 1)[1].decode("ascii")
    assert str(make_header(decode_header(value))) == (
        f"{name.strip()[:100]} via Steering Committee <{LIST}>"), "cut at 100 characters"


def test_a_poster_without_a_name_is_called_by_the_local_part() -> None:
    message = parse(munged(mail(STRICT, LIST)))
    assert message["From"].addresses[0].display_name == "ana via Steering Committee"
    shown_as_address = parse(munged(mail(f'"{STRICT}" <{STRICT}>', LIST)))
    assert shown_as_address["From"].addresses[0].display_name == "ana via Steering Committee"


def test_an_existing_reply_to_is_kept_and_the_poster_added() -> None:
    message = parse(munged(mail(STRICT, LIST, Reply_To="Secretariat <sec@strict.example>")))
    assert [a.addr_spec for a in message["Reply-To"].addresses] == ["sec@strict.example",
                                                                    STRICT]
    already = parse(munged(mail(STRICT, LIST, Reply_To=STRICT.upper())))
    assert len(already["Reply-To"].addresses) == 1


def test_cc_mode_puts_the_poster_in_cc() -> None:
    message = parse(munged(mail(f"Ana <{STRICT}>", LIST, Cc="dev@members.test",
                                Reply_To="sec@strict.example"), poster_in="cc"))
    assert [a.addr_spec for a in message["Cc"].addresses] == ["dev@members.test", STRICT]
    assert [a.addr_spec for a in message["Reply-To"].addresses] == ["sec@strict.example"]
    assert message["From"].addresses[0].addr_spec == LIST


def test_a_name_cannot_inject_header_lines() -> None:
    hostile = (b"From: =?utf-8?q?Ana=0D=0ABcc=3A_x=40evil=2Eexample?= <ana@strict.example>\r\n"
               b"Subject: hi\r\n\r\nbody\r\n")
    result = munged(hostile)
    assert b"\r\nBcc:" not in result
    assert parse(result)["Bcc"] is None


def test_a_message_without_a_from_address_is_left_alone() -> None:
    data = b"Subject: no sender\r\nTo: steering@lists.example.org\r\n\r\nbody\r\n"
    assert munged(data) == data


# -- end to end over SMTP ----------------------------------------------------------

def dmarc_config(tmp_path: Path, url: str, sink: Sink, server: DnsServer) -> Config:
    config = make_config(tmp_path, url, smarthost_port=sink.port,
                         dns={"nameserver": server.address, "timeout": 0.3})
    make_list(config, "steering", PEOPLE, display_name="Steering Committee")
    return config


async def post_and_collect(config: Config, sink: Sink, sender: str) -> list[EmailMessage]:
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], sender, [LIST],
                   mail(f"Poster Name <{sender}>", LIST, subject="Nairobi"))
        delivered = await sink.wait_for(len(PEOPLE))
        states = daemon.db.query(lambda s: list(s.scalars(select(Work.state))))
    assert states == ["done"], "the post was handled, not retried or quarantined"
    assert sorted(sink.recipients) == sorted(PEOPLE)
    return [copy.message for copy in delivered]


async def test_a_post_from_a_reject_domain_goes_out_from_the_list(
        tmp_path: Path, database_url: str, sink: Sink, dns_server: DnsServer) -> None:
    config = dmarc_config(tmp_path, database_url, sink, dns_server)
    for message in await post_and_collect(config, sink, STRICT):
        sender = message["From"].addresses
        assert [(a.display_name, a.addr_spec) for a in sender] == [
            ("Poster Name via Steering Committee", LIST)]
        assert [a.addr_spec for a in message["Reply-To"].addresses] == [STRICT]
        assert message["List-Id"] is not None
    assert dns_server.queries["_dmarc.strict.example"] == 1


async def test_a_post_from_a_p_none_domain_keeps_its_from(
        tmp_path: Path, sqlite_url: str, sink: Sink, dns_server: DnsServer) -> None:
    config = dmarc_config(tmp_path, sqlite_url, sink, dns_server)
    for message in await post_and_collect(config, sink, RELAXED):
        assert message["From"].addresses[0].addr_spec == RELAXED
        assert message["Reply-To"] is None


async def test_a_post_is_delivered_unchanged_when_dns_is_down(
        tmp_path: Path, sqlite_url: str, sink: Sink, dns_server: DnsServer) -> None:
    config = dmarc_config(tmp_path, sqlite_url, sink, dns_server)
    dns_server.stop()
    for message in await post_and_collect(config, sink, STRICT):
        assert message["From"].addresses[0].addr_spec == STRICT


async def test_a_post_is_delivered_unchanged_when_dns_does_not_answer(
        tmp_path: Path, sqlite_url: str, sink: Sink, dns_server: DnsServer) -> None:
    config = dmarc_config(tmp_path, sqlite_url, sink, dns_server)
    dns_server.silent = True
    for message in await post_and_collect(config, sink, STRICT):
        assert message["From"].addresses[0].addr_spec == STRICT
    assert dns_server.queries["_dmarc.strict.example"] >= 1


async def test_mode_never_keeps_from_even_for_a_reject_domain(
        tmp_path: Path, sqlite_url: str, sink: Sink, dns_server: DnsServer) -> None:
    config = dmarc_config(tmp_path, sqlite_url, sink, dns_server)
    set_option(config, "steering", "dmarc_mode", "never")
    for message in await post_and_collect(config, sink, STRICT):
        assert message["From"].addresses[0].addr_spec == STRICT


async def test_mode_always_rewrites_from_for_a_domain_without_a_policy(
        tmp_path: Path, sqlite_url: str, sink: Sink, dns_server: DnsServer) -> None:
    config = dmarc_config(tmp_path, sqlite_url, sink, dns_server)
    set_option(config, "steering", "dmarc_mode", "always")
    for message in await post_and_collect(config, sink, PLAIN):
        assert message["From"].addresses[0].addr_spec == LIST
        assert message["From"].addresses[0].display_name == "Poster Name via Steering Committee"
        assert [a.addr_spec for a in message["Reply-To"].addresses] == [PLAIN]


async def test_cc_setting_puts_the_poster_in_cc(
        tmp_path: Path, sqlite_url: str, sink: Sink, dns_server: DnsServer) -> None:
    config = dmarc_config(tmp_path, sqlite_url, sink, dns_server)
    db = Database(config.database.url, config.base_dir)
    try:
        db.transaction(lambda session: settings.change(service.find(session, "steering"),
                                                       "dmarc_poster_in", "cc"))
    finally:
        db.close()
    for message in await post_and_collect(config, sink, STRICT):
        assert message["From"].addresses[0].addr_spec == LIST
        assert [a.addr_spec for a in message["Cc"].addresses] == [STRICT]
        assert message["Reply-To"] is None
