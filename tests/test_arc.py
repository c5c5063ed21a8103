"""ARC (issue 12, item 2): a post our MTA vouched for goes out with one ARC set, and
dkimpy's `dkim.arc_verify` validates it against the record `alliance dkim keygen` printed.

The chain a post arrives with is checked once per post (cv=none, pass or fail); only the
topmost Authentication-Results with our authserv-id, on a post that came over LMTP, are
trusted; without them, or with DKIM off, no ARC set is added.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mailer import arc
from mailer.arc import Assessment, Sealer
from mailer.config import ConfigError, from_dict
from mailer.domainkeys import DkimKey, DkimSigner, header_fields, split
from tests.helpers import (
    DOMAIN,
    Dialogue,
    DnsServer,
    Sink,
    cli,
    make_config,
    make_list,
    make_role,
    members,
    reply_to,
    running,
    send,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"
OURS = f"mx.{DOMAIN}"
RELAY = "relay.example.net"
Dns = Callable[..., bytes | None]
TRUSTED = (f"Authentication-Results: {OURS};\r\n"
           "\tdkim=pass header.d=party.test header.s=sel;\r\n"
           "\tspf=pass smtp.mailfrom=ana@party.test\r\n"
           f"Authentication-Results: {OURS}; dmarc=pass header.from=party.test\r\n").encode()
POST = (b"From: Ana <ana@party.test>\r\n"
        b"To: steering@lists.example.org\r\n"
        b"Subject: Agenda\r\n"
        b"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <agenda@party.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"The agenda  is attached.\r\n")


@functools.cache
def key_of(selector: str, domain: str) -> DkimKey:
    return DkimKey(selector, domain,
                   rsa.generate_private_key(public_exponent=65537, key_size=2048))


def strings(record: str) -> tuple[str, str]:
    """(name, joined TXT strings) of a record as `alliance dkim keygen` prints it."""
    name, _, text = record.partition(" IN TXT ")
    return name, "".join(re.findall(r'"([^"]*)"', text))


def dkimpy_dns(*records: str) -> Dns:
    """A dnsfunc for dkimpy answering with these records."""
    zone = {(name + ".").encode(): text.encode() for name, text in map(strings, records)}
    return lambda name, timeout=5: zone.get(name)


class Zone:
    """The records as our chain check asks for them (mailer.arc.KeyLookup); `failing`
    answers None, as a DNS failure does."""

    def __init__(self, *records: str, failing: bool = False) -> None:
        self.records = dict(map(strings, records))
        self.failing = failing

    async def txt(self, name: str) -> tuple[str, ...] | None:
        if self.failing:
            return None
        return (self.records[name],) if name in self.records else ()


OUR_KEY = key_of("2026a", DOMAIN)
RELAY_KEY = key_of("arc1", RELAY)
ZONE = Zone(OUR_KEY.record(), RELAY_KEY.record())
DKIMPY_DNS = dkimpy_dns(OUR_KEY.record(), RELAY_KEY.record())


def sealed(message: bytes, sealer: Sealer, protocol: str = "lmtp") -> bytes | None:
    """The message with the sealer's ARC set, or None when it adds none."""
    assessment = asyncio.run(sealer.assess(message, protocol))
    return None if assessment is None else sealer.seal(message, assessment)


def relayed() -> bytes:
    """POST as another intermediary (relay.example.net) passed it on: its own results
    and an ARC set i=1, then our MTA's results on top."""
    relay = Sealer(RELAY_KEY, RELAY, ZONE)
    theirs = sealed(f"Authentication-Results: {RELAY}; dkim=pass header.d=party.test\r\n"
                    .encode() + POST, relay)
    assert theirs is not None
    return f"Authentication-Results: {OURS}; dkim=fail; spf=fail; arc=pass\r\n".encode() \
        + theirs


def arc_fields(message: bytes) -> list[bytes]:
    return [field for field in header_fields(split(message)[0])
            if field.lower().startswith(b"arc-")]


def seal_tags(message: bytes) -> dict[bytes, bytes]:
    """The tags of the newest ARC-Seal."""
    seals = [f for f in arc_fields(message) if f.lower().startswith(b"arc-seal:")]
    return arc.tags(arc.field_value(seals[0])) or {}


# -- one post, its ARC set --------------------------------------------------------------

def test_our_results_give_a_set_i1_cv_none_that_dkimpy_validates() -> None:
    message = sealed(TRUSTED + POST, Sealer(OUR_KEY, OURS, ZONE))
    assert message is not None
    cv, _, reason = dkim.arc_verify(message, dnsfunc=DKIMPY_DNS)
    assert (cv, reason) == (b"pass", "success")
    assert seal_tags(message)[b"i"] == b"1" and seal_tags(message)[b"cv"] == b"none"
    aar = arc_fields(message)[2].replace(b"\r\n\t", b" ").decode()
    assert aar == (f"ARC-Authentication-Results: i=1; {OURS}; dkim=pass header.d=party.test "
                   "header.s=sel; spf=pass smtp.mailfrom=ana@party.test; "
                   "dmarc=pass header.from=party.test; arc=none")


def test_every_copy_shares_the_set_whatever_its_list_unsubscribe() -> None:
    with_link = TRUSTED + POST.replace(
        b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://lists.example.org/u/TOKEN>\r\n\r\n")
    message = sealed(with_link, Sealer(OUR_KEY, OURS, ZONE))
    assert message is not None
    for member in (b"m1token", b"m2token"):
        copy = message.replace(b"TOKEN", member)
        assert dkim.arc_verify(copy, dnsfunc=DKIMPY_DNS)[0] == b"pass"
    assert dkim.arc_verify(message.replace(b"Agenda", b"Agenda!"),
                           dnsfunc=DKIMPY_DNS)[0] == b"fail"


def test_a_set_from_another_intermediary_gives_i2_cv_pass() -> None:
    message = sealed(relayed(), Sealer(OUR_KEY, OURS, ZONE))
    assert message is not None
    assert seal_tags(message)[b"i"] == b"2" and seal_tags(message)[b"cv"] == b"pass"
    cv, results, reason = dkim.arc_verify(message, dnsfunc=DKIMPY_DNS)
    assert (cv, reason) == (b"pass", "success")
    assert [result["as-domain"] for result in results] == [DOMAIN.encode(), RELAY.encode()]
    # Our MTA's own arc= result is copied as it is, not replaced by ours.
    assert b"arc=pass" in arc_fields(message)[2] and b"i=2" in arc_fields(message)[2]


@pytest.mark.parametrize("breaking", ["body", "signed field", "seal", "missing AMS"])
def test_a_broken_chain_gives_cv_fail_sealed_over_our_set_alone(breaking: str) -> None:
    incoming = relayed()
    if breaking == "body":
        incoming = incoming.replace(b"The agenda", b"The new agenda")
    elif breaking == "signed field":
        incoming = incoming.replace(b"Subject: Agenda", b"Subject: [steering] Agenda")
    elif breaking == "seal":
        incoming = incoming.replace(b"cv=none", b"cv=pass")
    else:
        incoming = re.sub(rb"ARC-Message-Signature: .*?\r\n(?! )(?!\t)", b"", incoming,
                          flags=re.S)
    assessment = asyncio.run(Sealer(OUR_KEY, OURS, ZONE).assess(incoming, "lmtp"))
    assert assessment is not None and (assessment.instance, assessment.cv) == (2, "fail")
    message = Sealer(OUR_KEY, OURS, ZONE).seal(incoming, assessment)
    # dkimpy stops at a seal that says cv=fail (the chain has ended, None), or at the
    # broken set below it: it cannot check ours, whose signature covers our own set
    # alone (RFC 8617 §5.1.2).
    assert dkim.arc_verify(message, dnsfunc=DKIMPY_DNS)[0] in (None, b"fail")
    newest = arc.ArcSet(2, *arc_fields(message)[2::-1])
    public = OUR_KEY.private.public_key()
    assert arc.verify(public, b"rsa-sha256", seal_tags(message)[b"b"],
                      arc.seal_data([newest]))


def test_an_unknown_key_fails_the_chain_and_a_dns_failure_adds_no_set() -> None:
    incoming = relayed()
    assert asyncio.run(Sealer(OUR_KEY, OURS, Zone(OUR_KEY.record())).assess(
        incoming, "lmtp")) == Assessment(2, "fail", f"{OURS}; dkim=fail; spf=fail; arc=pass")
    assert sealed(incoming, Sealer(OUR_KEY, OURS, Zone(failing=True))) is None


def test_a_message_signature_we_do_not_check_adds_no_set_rather_than_cv_fail() -> None:
    simple = relayed().replace(b"c=relaxed/relaxed", b"c=simple/simple")
    assert sealed(simple, Sealer(OUR_KEY, OURS, ZONE)) is None


@pytest.mark.parametrize("hostile", [
    (b"s=arc1;", b"s=\xff\xfe;"), (b"d=relay.example.net;", b"d=a..b;"),
    (b"a=rsa-sha256; d=relay", b"a=\xff; d=relay"), (b"cv=none", b"cv=\xc3\xa9"),
    (b"i=1; a=rsa-sha256", b"i=1; i=1; a=rsa-sha256"), (b"b=", b"b=!!!"),
])
def test_a_hostile_chain_fails_and_never_raises(hostile: tuple[bytes, bytes]) -> None:
    incoming = relayed().replace(*hostile)
    assert incoming != relayed()
    assessment = asyncio.run(Sealer(OUR_KEY, OURS, ZONE).assess(incoming, "lmtp"))
    assert assessment is not None and assessment.cv == "fail"


def test_a_chain_that_changed_between_check_and_seal_gets_no_set() -> None:
    sealer = Sealer(OUR_KEY, OURS, ZONE)
    incoming = relayed()
    assessment = asyncio.run(sealer.assess(incoming, "lmtp"))
    assert assessment is not None and assessment.cv == "pass"
    changed = incoming.replace(b"ARC-Seal: i=1", b"X-Old-Seal: i=1")
    assert sealer.seal(changed, assessment) == changed
    assert sealer.seal(incoming, assessment) != incoming


def test_a_chain_that_has_ended_or_has_fifty_sets_gets_no_more() -> None:
    sealer = Sealer(OUR_KEY, OURS, ZONE)
    ended = sealed(relayed().replace(b"Hello", b"x").replace(b"The agenda", b"An agenda"),
                   sealer)
    assert ended is not None and seal_tags(ended)[b"cv"] == b"fail"
    assert sealed(TRUSTED + ended, sealer) is None
    fifty = b"".join(f"ARC-Seal: i={n}; cv=pass; a=rsa-sha256; d=x; s=y; b=\r\n"
                     f"ARC-Message-Signature: i={n}; a=rsa-sha256; d=x; s=y; h=from; bh=; b=\r\n"
                     f"ARC-Authentication-Results: i={n}; x; none\r\n".encode()
                     for n in range(50, 0, -1))
    assert sealed(TRUSTED + fifty + POST, sealer) is None


# -- which results are trusted ------------------------------------------------------------

@pytest.mark.parametrize("header", [
    pytest.param(f"Authentication-Results: {RELAY}; dkim=pass\r\n".encode(),
                 id="another authserv-id"),
    pytest.param(f"Authentication-Results: {RELAY}; spf=fail\r\n".encode() + TRUSTED,
                 id="ours not on top"),
    pytest.param(f"Authentication-Results: mx.{DOMAIN}.evil.test; dkim=pass\r\n".encode(),
                 id="a longer name"),
    pytest.param(b"", id="none at all"),
])
def test_results_we_did_not_write_on_top_give_no_set(header: bytes) -> None:
    assert sealed(header + POST, Sealer(OUR_KEY, OURS, ZONE)) is None


def test_results_are_trusted_only_from_the_mta_in_front() -> None:
    sealer = Sealer(OUR_KEY, OURS, ZONE)
    assert sealed(TRUSTED + POST, sealer, protocol="smtp") is None
    assert sealed(TRUSTED + POST, sealer, protocol="lmtp") is not None


def test_the_authserv_id_is_matched_whatever_its_case_and_version() -> None:
    header = f"Authentication-Results: {OURS.upper()} 1; spf=pass\r\n".encode()
    message = sealed(header + POST, Sealer(OUR_KEY, OURS, ZONE))
    assert message is not None and b"spf=pass; arc=none" in arc_fields(message)[2]


@pytest.mark.parametrize("forged", [f"(ours) {OURS}", f'"{OURS}"', f"{OURS}(x)"])
def test_results_written_so_that_postfix_would_not_remove_them_are_not_ours(
        forged: str) -> None:
    """A comment or quotes before our authserv-id (RFC 8601 allows both) would slip past
    the header_checks line `alliance postfix` prints; such a field ends what is trusted."""
    header = f"Authentication-Results: {forged}; dmarc=pass\r\n".encode()
    assert sealed(header + POST, Sealer(OUR_KEY, OURS, ZONE)) is None
    message = sealed(TRUSTED + header + POST, Sealer(OUR_KEY, OURS, ZONE))
    assert message is not None
    assert arc_fields(message)[2].count(b"dmarc=pass") == 1


POSTMAP = "/usr/sbin/postmap"


def test_alliance_postfix_prints_the_line_that_removes_results_with_our_id(
        tmp_path: Path) -> None:
    """The header_checks line removes exactly the fields mailer.arc would take for ours:
    the MTA in front lets none through from outside (checked with Postfix's postmap)."""
    base = f'[site]\ndomain = "{DOMAIN}"\n[lmtp]\nlisten = "127.0.0.1:8024"\n'
    plain, with_arc = tmp_path / "plain.toml", tmp_path / "arc.toml"
    plain.write_text(base)
    with_arc.write_text(base + f'[arc]\nauthserv_id = "{OURS}"\n')
    assert "header_checks" not in cli(plain, "postfix", "--part", "main.cf")
    [line] = [line for line in cli(with_arc, "postfix", "--part", "main.cf").splitlines()
              if line.startswith("header_checks = ")]
    if not os.access(POSTMAP, os.X_OK):
        pytest.skip("Postfix's postmap is not installed (apt-get install postfix)")
    values = [f"{OURS}; dkim=pass", f"  {OURS.upper()} 1; spf=pass", f"\t{OURS}", OURS,
              f"{OURS}.evil.test; dkim=pass", f"x{OURS}; dkim=pass", f"(ours) {OURS}; x",
              f'"{OURS}"; dmarc=pass', f"{OURS}(x); dmarc=pass", "other.test; dkim=pass"]
    for value in values:
        table = line.removeprefix("header_checks = ").replace("$$", "$")  # as main.cf is read
        found = subprocess.run([POSTMAP, "-q", f"Authentication-Results: {value}", table],
                               capture_output=True, text=True, timeout=30)
        removed = found.stdout.strip() == "IGNORE"
        assert removed == (arc.authserv_id(value.encode()) == OURS.encode()), value


# -- configuration ---------------------------------------------------------------------------

def arc_config(tmp_path: Path, **arc_keys: str) -> dict[str, dict[str, str]]:
    return {"site": {"domain": DOMAIN}, "dkim": {"selector": "2026a"}, "arc": arc_keys}


def test_arc_needs_an_authserv_id_and_dkim(tmp_path: Path) -> None:
    signer = DkimSigner([OUR_KEY])
    config = from_dict(arc_config(tmp_path), tmp_path)
    assert arc.sealer(config, signer, ZONE) is None
    config = from_dict(arc_config(tmp_path, authserv_id=OURS), tmp_path)
    assert arc.sealer(config, None, ZONE) is None
    found = arc.sealer(config, signer, ZONE)
    assert found is not None and found.key is OUR_KEY


def test_an_arc_mistake_is_one_line_naming_the_key(tmp_path: Path) -> None:
    signer = DkimSigner([OUR_KEY])
    with pytest.raises(ConfigError, match="arc.authserv_id: expected a host name"):
        arc.sealer(from_dict(arc_config(tmp_path, authserv_id="mx; dkim=pass"), tmp_path),
                   signer, ZONE)
    with pytest.raises(ConfigError, match="arc.key_file: cannot read"):
        arc.sealer(from_dict(arc_config(tmp_path, authserv_id=OURS, selector="arc2026"),
                             tmp_path), signer, ZONE)


# -- the daemon: list copies ---------------------------------------------------------------

async def deliver_over_lmtp(port: int, sender: str, recipient: str, data: bytes) -> str:
    """What Postfix does in front of us: one message over LMTP; the reply to DATA."""
    talk = await Dialogue.open(port)
    await talk.say("LHLO mx.lists.example.org")
    await talk.say(f"MAIL FROM:<{sender}>")
    await talk.say(f"RCPT TO:<{recipient}>")
    await talk.say("DATA")
    reply = await talk.say(data + b".\r\n")
    await talk.say("QUIT")
    await talk.close()
    return reply


async def test_list_copies_carry_one_set_that_verifies_with_the_keygen_record(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(f'[site]\ndomain = "{DOMAIN}"\n[dkim]\nselector = "2026k"\n')
    record = cli(config_path, "dkim", "keygen").strip().splitlines()[-1]
    dns = DnsServer()
    await dns.start()
    name, text = strings(RELAY_KEY.record())
    dns.txt[name] = [[text[at:at + 255] for at in range(0, len(text), 255)]]  # type: ignore[list-item]
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         dkim={"selector": "2026k"}, arc={"authserv_id": OURS},
                         dns={"nameserver": dns.address, "timeout": 2.0})
    make_list(config, "steering", ["ana@party.test", *members(1)])
    incoming = await asyncio.to_thread(relayed)     # it seals in an event loop of its own
    try:
        async with running(config) as daemon:
            ports = daemon.ports
            assert (await deliver_over_lmtp(ports["lmtp"], "ana@party.test", LIST,
                                            TRUSTED + POST)).startswith("250")
            first = (await wait_quiet(sink, 2))[:2]
            assert (await deliver_over_lmtp(ports["lmtp"], "ana@party.test", LIST,
                                            incoming)).startswith("250")
            second = (await wait_quiet(sink, 4))[2:4]
            await send(ports["smtp"], "ana@party.test", [LIST], TRUSTED + POST)
            third = (await wait_quiet(sink, 6))[4:6]
    finally:
        dns.stop()
    ours = dkimpy_dns(record, RELAY_KEY.record())
    for copy in first + second:
        assert dkim.arc_verify(copy.data, dnsfunc=ours)[0] == b"pass"
        assert dkim.verify(copy.data, dnsfunc=ours)
    assert [seal_tags(copy.data)[b"cv"] for copy in first + second] == \
        [b"none", b"none", b"pass", b"pass"]
    assert arc_fields(first[0].data) == arc_fields(first[1].data)
    assert first[0].message["List-Unsubscribe"] != first[1].message["List-Unsubscribe"]
    # The same post through our own SMTP listener: its results are nobody's we trust.
    assert [arc_fields(copy.data) for copy in third] == [[], []]
    assert all(dkim.verify(copy.data, dnsfunc=ours) for copy in third)


async def test_with_dkim_off_there_is_no_arc(tmp_path: Path, sqlite_url: str,
                                             sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         arc={"authserv_id": OURS})
    make_list(config, "steering", ["ana@party.test", *members(1)])
    async with running(config) as daemon:
        await deliver_over_lmtp(daemon.ports["lmtp"], "ana@party.test", LIST, TRUSTED + POST)
        received = await wait_quiet(sink, 2)
    assert not any(b"ARC-" in d.data or b"DKIM-Signature" in d.data for d in received)


async def test_a_held_post_keeps_its_set_until_a_moderator_lets_it_through(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    install = tmp_path / "var/dkim"
    install.mkdir(parents=True)
    (install / "2026a.pem").write_bytes(OUR_KEY.pem())
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         dkim={"selector": "2026a"}, arc={"authserv_id": OURS})
    moderator = "mod@party.test"
    make_list(config, "steering", ["ana@party.test", *members(1)], posting="moderated")
    make_role(config, "steering", moderator, "moderator")
    async with running(config) as daemon:
        await deliver_over_lmtp(daemon.ports["lmtp"], "ana@party.test", LIST, TRUSTED + POST)
        notice = {d.rcpt: d for d in await wait_quiet(sink, 2)}[moderator]
        target, data = reply_to(notice, moderator, body="approve")
        await send(daemon.ports["smtp"], moderator, [target], data)
        copies = (await wait_quiet(sink, 4))[2:4]
    assert sorted(copy.rcpt for copy in copies) == sorted(["ana@party.test", *members(1)])
    for copy in copies:
        assert dkim.arc_verify(copy.data, dnsfunc=DKIMPY_DNS)[0] == b"pass"
        assert b"dmarc=pass header.from=party.test; arc=none" in \
            arc_fields(copy.data)[2].replace(b"\r\n\t", b" ")
