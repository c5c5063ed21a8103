"""DKIM (issue 12, item 1): every message we send is signed, and dkimpy's verifier agrees.

The canonical forms are compared with dkimpy's own; every signature is checked by
`dkim.verify` against the DNS record `alliance dkim keygen` printed.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer import domainkeys
from mailer.config import ConfigError, from_dict
from mailer.domainkeys import CopySigning, DkimKey, DkimSigner, crlf, split
from tests.helpers import (
    DOMAIN,
    Sink,
    board_of_two,
    cli,
    cli_error,
    config_file,
    create_meeting,
    mail,
    make_config,
    make_list,
    members,
    running,
    send,
    wait_quiet,
)

LIST = f"steering@{DOMAIN}"
Dns = Callable[..., bytes | None]


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def keys() -> list[DkimKey]:
    return [DkimKey("2026a", DOMAIN, rsa_key()), DkimKey("2026e", DOMAIN, ed_key())]


def dns_of(*records: str) -> Dns:
    """A dnsfunc for dkimpy answering with records as `alliance dkim keygen` prints them."""
    zone = {}
    for line in records:
        name, _, strings = line.partition(" IN TXT ")
        zone[(name + ".").encode()] = "".join(re.findall(r'"([^"]*)"', strings)).encode()
    return lambda name, timeout=5: zone.get(name)


def verified(message: bytes, dns: Dns, count: int = 1) -> bool:
    """Every one of the message's first `count` signatures verifies."""
    checker = dkim.DKIM(message)
    return all(checker.verify(idx=n, dnsfunc=dns) for n in range(count))


DNS = dns_of(*(key.record() for key in keys()))

POST = (b"Received: from a\r\nReceived: from b\r\n"
        b"From: Ana <ana@party.test>\r\n"
        b"To: steering@lists.example.org,\r\n\tbob@party.test\r\n"
        b"Subject:   A  folded\r\n   subject \r\n"
        b"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
        b"Message-ID: <1@party.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"List-Id: <steering.lists.example.org>\r\n"
        b"List-Unsubscribe: <https://lists.example.org/u/abc>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"\r\n"
        b"Gr\xc3\xbc\xc3\x9fe  aus \t Berlin  \r\n\r\n\xe2\x80\x94 Ana\r\n\r\n\r\n")


# -- canonicalisation, against dkimpy's ---------------------------------------------

@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"\r\n\r\n", b"no line end", b"a  b\t\tc \r\n", b"a\r\n\r\n \r\n\t\r\n",
    b" lead\r\n\r\nmiddle\r\n", b"\xc3\xa9t\xc3\xa9 \xff\r\n", b"tail  ",
    POST.split(b"\r\n\r\n", 1)[1]])
def test_the_relaxed_body_is_dkimpys(body: bytes) -> None:
    assert domainkeys.relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("field", [
    b"Subject: plain", b"SUBJECT :  spaced \t out  ", b"To: a@x,\r\n\tb@y,\r\n  c@z",
    b"X-Empty:", b"X-Eight: \xc3\xa9t\xc3\xa9", b"From:\r\n Ana <ana@x>"])
def test_a_relaxed_header_is_dkimpys(field: bytes) -> None:
    name, _, value = field.partition(b":")
    [(theirs_name, theirs_value)] = Relaxed.canonicalize_headers([(name, value)])
    assert domainkeys.relaxed_header(field) == theirs_name + b":" + theirs_value


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\xc3\xa9", b" ", b"\t", b"\r\n", b"x y"]),
                max_size=40))
def test_any_body_canonicalises_as_dkimpy_does(parts: list[bytes]) -> None:
    body = b"".join(parts)
    assert domainkeys.relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_repeated_fields_are_signed_from_the_bottom_and_oversigned() -> None:
    fields = [b"To: a@x", b"Subject: one", b"To: b@y", b"X-No: 1"]
    names = domainkeys.header_list(fields)
    assert names == [b"from", b"to", b"to", b"to", b"subject", b"subject",
                     b"list-unsubscribe", b"list-unsubscribe-post"]
    assert domainkeys.header_data(fields, names) == b"to:b@y\r\nto:a@x\r\nsubject:one\r\n"


# -- signatures dkimpy verifies -------------------------------------------------------

@pytest.mark.parametrize("message", [
    POST,
    POST.replace(b"\r\n", b"\n"),                                 # bare line feeds
    POST.split(b"\r\n\r\n")[0] + b"\r\n\r\n",                     # an empty body
    POST.split(b"\r\n\r\n")[0] + b"\r\n\r\nno final line end  ",  # no CRLF at the end
    POST.split(b"\r\n\r\n")[0],                                   # no body at all
    b"From: a@x\r\nTo: b@y\r\nCc: c@z\r\nCc: d@z\r\nSubject: two Cc\r\n\r\nbody\r\n",
], ids=["post", "bare-lf", "empty-body", "no-final-crlf", "header-only", "repeated"])
def test_rsa_and_ed25519_signatures_verify(message: bytes) -> None:
    signed = DkimSigner(keys()).sign(message)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert signed.count(b"DKIM-Signature:") == 2
    assert max(len(line) for line in signed.split(b"\r\n")[:12]) <= 78
    assert verified(signed, DNS, count=2)


def test_the_signed_fields_are_the_listed_ones_each_once_more() -> None:
    signed = DkimSigner(keys()[:1]).sign(POST)
    h = re.search(rb"h=([^;]+);", re.sub(rb"\r\n\s+", b"", signed.split(b"\r\n\r\n")[0]))
    assert h is not None
    names = h.group(1).decode().split(":")
    for name in ("from", "to", "subject", "date", "message-id", "list-id",
                 "list-unsubscribe", "list-unsubscribe-post", "mime-version",
                 "content-type"):
        assert names.count(name) == 2, name
    assert "received" not in names and "content-transfer-encoding" not in names


@pytest.mark.parametrize("added", [
    b"From: Mallory <m@evil.test>\r\n",
    b"List-Unsubscribe: <https://evil.test/u>\r\n",
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    b"Subject: changed\r\n"])
def test_a_field_added_after_signing_breaks_the_signature(added: bytes) -> None:
    signed = DkimSigner(keys()[:1]).sign(POST)
    assert verified(signed, DNS)
    head, _, body = signed.partition(b"\r\n\r\n")
    assert not verified(head + b"\r\n" + added + b"\r\n" + body, DNS)


def test_robot_mail_cannot_be_given_a_one_click_unsubscribe() -> None:
    robot = b"From: steering-request@lists.example.org\r\nTo: ana@party.test\r\n" \
            b"Subject: Your request\r\n\r\nDone.\r\n"
    signed = DkimSigner(keys()[:1]).sign(robot)
    assert verified(signed, DNS)
    tampered = signed.replace(b"Subject:", b"List-Unsubscribe: <https://evil.test/>\r\n"
                                           b"Subject:")
    assert not verified(tampered, DNS)


def test_copies_differ_in_the_header_and_share_one_body_hash() -> None:
    signer = DkimSigner(keys()[:1])
    first = signer.sign(POST)
    second = signer.sign(POST.replace(b"/u/abc", b"/u/def"))
    other = signer.sign(POST.replace(b"Berlin", b"Paris"))
    bh = [re.search(rb"bh=([^;]+);", message).group(1)  # type: ignore[union-attr]
          for message in (first, second, other)]
    assert bh[0] == bh[1] != bh[2]
    assert len(signer._body_hashes) == 2
    assert all(verified(message, DNS) for message in (first, second, other))


def test_a_worker_signs_as_the_daemon_would() -> None:
    signer = DkimSigner(keys(), clock=lambda: 1_790_000_000)
    unsigned, message = signer.prepare(POST)
    [fields] = domainkeys.sign_batch(signer.key_texts, [unsigned])
    assert verified(fields + message, DNS, count=2)
    assert fields.count(b"DKIM-Signature:") == 2


async def test_copies_signed_ahead_go_out_as_they_were_signed() -> None:
    signer = DkimSigner(keys())

    async def in_a_worker(batch: list[domainkeys.Unsigned]) -> list[bytes]:
        return domainkeys.sign_batch(signer.key_texts, batch)

    copies = [POST.replace(b"/u/abc", f"/u/{n}".encode()) for n in range(3)]
    copies.append(POST.replace(b"\r\n", b"\n"))      # bare line feeds: made CRLF
    cut = [split(crlf(copy)) for copy in copies]
    for signing in (CopySigning(signer), CopySigning(signer, in_a_worker)):
        heads = await signing.sign_heads([(head, signing.body_hash(body)) for head, body in cut])
        sent = [head + b"\r\n" + body for head, (_, body) in zip(heads, cut, strict=True)]
        assert all(verified(data, DNS, count=2) for data in sent)
        assert b"\n" not in sent[3].replace(b"\r\n", b"")
    # A copy whose header was not signed ahead is signed as it is sent.
    assert verified(CopySigning(signer).sign(POST), DNS, count=2)


def test_the_record_is_cut_into_strings_of_255_bytes() -> None:
    line = DkimKey("2026a", DOMAIN, rsa_key()).record()
    assert line.startswith(f'2026a._domainkey.{DOMAIN} IN TXT "v=DKIM1; k=rsa; p=MIIB')
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 2 and len(strings[0]) == 255
    assert DkimKey("e", DOMAIN, ed_key()).record().count('"') == 2


# -- the config and the command line --------------------------------------------------

def dkim_config(folder: Path, **dkim_keys: str) -> dict[str, dict[str, str]]:
    return {"site": {"domain": DOMAIN}, "dkim": dkim_keys}


def test_no_dkim_section_means_no_signer(tmp_path: Path) -> None:
    assert domainkeys.signer(from_dict({}, tmp_path)) is None


@pytest.mark.parametrize(("keys_given", "message"), [
    ({"selector": "2026a"}, "dkim.key_file: cannot read"),
    ({"ed25519_selector": "e"}, "dkim.ed25519_selector: set dkim.selector too"),
    ({"selector": "a b"}, "dkim.selector: expected a DNS label"),
])
def test_a_dkim_mistake_is_one_line_naming_the_key(tmp_path: Path, keys_given: dict[str, str],
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        domainkeys.signer(from_dict(dkim_config(tmp_path, **keys_given), tmp_path))


def test_an_ed25519_file_named_as_the_rsa_key_is_refused(tmp_path: Path) -> None:
    domainkeys.generate(tmp_path / "var/dkim/2026a.pem", ed25519_key=True)
    with pytest.raises(ConfigError, match="dkim.key_file: .* is no RSA key"):
        domainkeys.signer(from_dict(dkim_config(tmp_path, selector="2026a"), tmp_path))


def test_keygen_writes_a_private_key_once_and_prints_its_record(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[site]\ndomain = "{DOMAIN}"\n[dkim]\nselector = "2026a"\n')
    record = cli(config, "dkim", "keygen").strip().splitlines()[-1]
    key_file = tmp_path / "var/dkim/2026a.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert record.startswith(f"2026a._domainkey.{DOMAIN} IN TXT \"v=DKIM1; k=rsa; p=")
    before = key_file.read_bytes()
    assert "exists; a key is never overwritten" in cli_error(config, "dkim", "keygen")
    assert key_file.read_bytes() == before
    ed = cli(config, "dkim", "keygen", "--ed25519", "--selector", "2026e").strip()
    assert "k=ed25519" in ed
    assert cli(config, "dkim", "record").strip().splitlines()[-1] == record
    signer = domainkeys.signer(from_dict(
        dkim_config(tmp_path, selector="2026a", ed25519_selector="2026e"), tmp_path))
    assert signer is not None
    assert verified(signer.sign(POST), dns_of(record, ed.splitlines()[-1]), count=2)


# -- the daemon: every message it sends is signed -------------------------------------

def install_keys(folder: Path) -> None:
    """The test keys where the config expects them: var/dkim/SELECTOR.pem."""
    (folder / "var/dkim").mkdir(parents=True)
    for key in keys():
        (folder / f"var/dkim/{key.selector}.pem").write_bytes(key.pem())


async def test_every_list_copy_and_robot_mail_is_signed(tmp_path: Path, sqlite_url: str,
                                                         sink: Sink) -> None:
    install_keys(tmp_path)
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         dkim={"selector": "2026a"})
    people = members(3)
    make_list(config, "steering", people)
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], people[0], [LIST], mail(people[0], LIST))
        await sink.wait_for(3)
        await send(daemon.ports["smtp"], "new@party.test", [f"steering-join@{DOMAIN}"],
                   mail("new@party.test", f"steering-join@{DOMAIN}"))
        received = await wait_quiet(sink, 4)
    copies = [d.data for d in received[:3]]
    assert len({re.search(rb"List-Unsubscribe: (.*)", c).group(1)  # type: ignore[union-attr]
                for c in copies}) == 3
    dns = dns_of(DkimKey("2026a", DOMAIN, rsa_key()).record())
    assert all(verified(d.data, dns) for d in received)
    assert "(join steering)" in received[3].message["Subject"]


async def test_invitations_are_signed_twice_in_a_worker_process(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    install_keys(tmp_path)
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         dkim={"selector": "2026a", "ed25519_selector": "2026e"},
                         router={"processes": 1})
    path = config_file(config, tmp_path)
    board_of_two(path)
    create_meeting(path, "board")
    async with running(config):
        received = await wait_quiet(sink, 2)   # the scheduler sends them: send-at is now
    assert all(verified(d.data, DNS, count=2) for d in received)
    assert all(d.message.get_content_type() == "multipart/mixed" for d in received)


async def test_copies_are_signed_as_they_go_when_signing_ahead_fails(
        tmp_path: Path, sqlite_url: str, sink: Sink) -> None:
    install_keys(tmp_path)
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         dkim={"selector": "2026a"})
    make_list(config, "steering", members(3))

    async def worker_died(batch: list[domainkeys.Unsigned]) -> list[bytes]:
        raise RuntimeError("the worker process died")

    async with running(config) as daemon:
        assert daemon.dispatcher.signing is not None
        daemon.dispatcher.signing.elsewhere = worker_died
        await send(daemon.ports["smtp"], "m00001@members.test", [LIST],
                   mail("m00001@members.test", LIST))
        received = await wait_quiet(sink, 3)
    assert all(verified(d.data, DNS) for d in received)


async def test_without_dkim_nothing_is_signed(tmp_path: Path, sqlite_url: str,
                                              sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port)
    make_list(config, "steering", members(2))
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "m00001@members.test", [LIST],
                   mail("m00001@members.test", LIST))
        received = await wait_quiet(sink, 2)
    assert not any(b"DKIM-Signature" in d.data for d in received)
