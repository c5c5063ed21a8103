"""`alliance check` (issue 12, item 5): the site as Gmail and Yahoo see it, one line a check.

Everything is real and on loopback: a DNS server (dnslib) publishing the site's MX, SPF,
DKIM, DMARC and PTR records, an aiosmtpd smarthost with STARTTLS and AUTH and a certificate
the test makes, a SQLite database. Each test takes one thing away and reads its line.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSRecord

from mailer import check, domainkeys
from mailer.config import Config
from mailer.db import Database, heads
from tests.helpers import DOMAIN, DnsServer, Sink, free_port, invoke, make_config, upgrade_to

SELECTOR = "2026a"
SENDING_IP = "192.0.2.25"        # where the test says mail leaves from (TEST-NET-1)
USER, PASSWORD = "alliance", "correct horse battery staple"
GOOD_SPF = f"v=spf1 ip4:{SENDING_IP} -all"
GOOD_DMARC = f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{DOMAIN}"


# -- a DNS zone on loopback ------------------------------------------------------------

@dataclass
class Zone(DnsServer):
    """The tests' DNS server, answering any type: records[(name, "MX")] = [MX(...)]."""

    records: dict[tuple[str, str], list[Any]] = field(default_factory=dict)

    def publish(self, name: str, kind: str, *rdata: Any) -> None:
        self.records[(name.lower(), kind)] = list(rdata)

    def text(self, name: str, *records: str) -> None:
        """TXT records, each cut into strings of 255 bytes as a zone file has them."""
        self.publish(name, "TXT", *(TXT([r[at:at + 255] for at in range(0, len(r), 255)])
                                    for r in records))

    def answer(self, packet: bytes) -> bytes | None:
        request = DNSRecord.parse(packet)
        name = str(request.q.qname).rstrip(".").lower()
        self.queries[name] += 1
        if self.silent:
            return None
        reply = request.reply()
        if name not in {known for known, _ in self.records}:
            reply.header.rcode = RCODE.NXDOMAIN
        kind = QTYPE[request.q.qtype]
        for rdata in self.records.get((name, kind), []):
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
        return bytes(reply.pack())


def dkim_record(key: domainkeys.DkimKey) -> str:
    return f"v=DKIM1; k=rsa; p={domainkeys.public_key_text(key.private)}"


def publish_site(zone: Zone, key: domainkeys.DkimKey) -> None:
    """Every record a site that passes all checks publishes."""
    zone.publish(DOMAIN, "MX", MX(f"mx.{DOMAIN}", 10))
    zone.publish(f"mx.{DOMAIN}", "A", A("127.0.0.1"))            # this host
    zone.text(DOMAIN, GOOD_SPF)
    zone.text(f"{SELECTOR}._domainkey.{DOMAIN}", dkim_record(key))
    zone.text(f"_dmarc.{DOMAIN}", GOOD_DMARC)
    reverse = ".".join(reversed(SENDING_IP.split("."))) + ".in-addr.arpa"
    zone.publish(reverse, "PTR", PTR(f"mail.{DOMAIN}"))
    zone.publish(f"mail.{DOMAIN}", "A", A(SENDING_IP))


# -- a smarthost with STARTTLS and AUTH ----------------------------------------------------

@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1, its own CA."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_certificate(folder: Path) -> Certificate:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smarthost.test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    found = Certificate(folder / "smarthost.pem", folder / "smarthost.key")
    found.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    found.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return found


@dataclass
class SecureSink(Sink):
    """The recording smarthost, offering STARTTLS and taking AUTH only over TLS."""

    tls: ssl.SSLContext | None = None
    logins: list[str] = field(default_factory=list)

    def authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:
        good = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(), PASSWORD.encode())
        if good:
            self.logins.append(USER)
        return AuthResult(success=good, handled=False)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test", tls_context=self.tls,
                         authenticator=self.authenticate, auth_require_tls=True),
            "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]


# -- the site --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / f"{SELECTOR}.pem"
    domainkeys.generate(path)
    return path


@pytest.fixture
async def zone() -> AsyncIterator[Zone]:
    server = Zone()
    await server.start()
    yield server
    server.stop()


@pytest.fixture
async def smarthost(tmp_path: Path) -> AsyncIterator[SecureSink]:
    certificate = make_certificate(tmp_path)
    sink = SecureSink(tls=certificate.server_context())
    await sink.start()
    yield sink
    await sink.stop()


@pytest.fixture
def no_credentials_in_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ALLIANCE_SMARTHOST_USER", raising=False)
    monkeypatch.delenv("ALLIANCE_SMARTHOST_PASSWORD", raising=False)
    yield


def site_sections(tmp_path: Path, sqlite_url: str, zone: Zone, smarthost: Sink,
                  signing_key: Path) -> dict[str, dict[str, Any]]:
    """The config of a site that passes every check, as TOML sections."""
    auth = tmp_path / "smarthost.auth"
    auth.write_text(f"{USER}:{PASSWORD}\n")
    auth.chmod(0o600)
    return {
        "site": {"domain": DOMAIN, "admin": f"admin@{DOMAIN}"},
        "database": {"url": sqlite_url},
        "outbound": {"url": f"smtp://127.0.0.1:{smarthost.port}?starttls=required",
                     "tls_ca_file": str(tmp_path / "smarthost.pem"), "auth_file": str(auth)},
        "http": {"listen": "127.0.0.1:0", "base_url": f"https://{DOMAIN}"},
        "dns": {"nameserver": zone.address, "timeout": 0.5},
        "dkim": {"selector": SELECTOR, "key_file": str(signing_key)},
    }


def site_config(tmp_path: Path, sqlite_url: str, zone: Zone, smarthost: Sink,
                signing_key: Path, **changes: dict[str, Any]) -> Config:
    sections = site_sections(tmp_path, sqlite_url, zone, smarthost, signing_key)
    for name, values in changes.items():
        sections.setdefault(name, {}).update(values)
    return make_config(tmp_path, sqlite_url, **sections)


def toml(sections: dict[str, dict[str, Any]]) -> str:
    """Sections as a config file (JSON's strings, numbers and booleans are TOML's too)."""
    return "".join(f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                           for key, value in values.items())
                   for name, values in sections.items())


def migrated(url: str, tmp_path: Path) -> None:
    db = Database(url, tmp_path)
    db.upgrade()
    db.close()


async def checked(config: Config, timeout: float = 30.0) -> dict[str, check.Finding]:
    """Every check's finding, by name; mail leaves from SENDING_IP."""
    probe = check.Probe(config, origin=Path("config.toml"), timeout=timeout, environ={},
                        sending_address=lambda: SENDING_IP)
    return {finding.check: finding for finding in await check.run(probe)}


@pytest.fixture
async def site(tmp_path: Path, sqlite_url: str, zone: Zone, smarthost: SecureSink,
               signing_key: Path) -> Config:
    """A site that passes every check: its records published, its database migrated."""
    migrated(sqlite_url, tmp_path)
    publish_site(zone, domainkeys.load_key(signing_key, SELECTOR, DOMAIN, "rsa", "key"))
    return site_config(tmp_path, sqlite_url, zone, smarthost, signing_key)


# -- the conversations -----------------------------------------------------------------

async def test_a_site_that_is_ready_passes_every_check(
        site: Config, smarthost: SecureSink) -> None:
    found = await checked(site)
    assert list(found) == [name for name, _ in check.CHECKS if name != "DKIM ed25519"]
    assert {name: f.status for name, f in found.items() if f.status != "ok"} == {}
    assert found["smarthost"].detail == (f"127.0.0.1:{smarthost.port}: connected, EHLO, "
                                         f"STARTTLS, AUTH as '{USER}'; no mail sent")
    assert smarthost.logins == [USER] and smarthost.received == []
    assert found["MX"].detail == f"{DOMAIN} MX mx.{DOMAIN}: this host"
    assert found["DKIM"].detail.startswith(f"{SELECTOR}._domainkey.{DOMAIN} publishes our")
    assert found["bulk senders: reverse DNS"].detail == (
        f"{SENDING_IP} (this host) -> mail.{DOMAIN} -> {SENDING_IP}")


async def test_a_missing_dkim_record_fails_with_the_record_to_publish(
        site: Config, zone: Zone, signing_key: Path) -> None:
    del zone.records[(f"{SELECTOR}._domainkey.{DOMAIN}", "TXT")]
    found = await checked(site)
    key = domainkeys.load_key(signing_key, SELECTOR, DOMAIN, "rsa", "key")
    assert found["DKIM"].line() == (
        f"fail  DKIM: no TXT record at {SELECTOR}._domainkey.{DOMAIN}: every signature fails "
        f"to verify; to fix: publish: {key.record()}")
    assert found["bulk senders: SPF+DKIM+DMARC"].status == "fail"
    assert "DKIM" in found["bulk senders: SPF+DKIM+DMARC"].detail


async def test_a_dkim_record_with_another_key_fails(site: Config, zone: Zone) -> None:
    other = domainkeys.DkimKey(SELECTOR, DOMAIN, domainkeys.generate(
        site.base_dir / "other.pem"))
    zone.text(f"{SELECTOR}._domainkey.{DOMAIN}", dkim_record(other))
    finding = (await checked(site))["DKIM"]
    assert finding.status == "fail"
    assert finding.detail == (f"the record at {SELECTOR}._domainkey.{DOMAIN} holds another "
                              "key than ours: every signature fails to verify")


async def test_dkim_off_fails_because_gmail_and_yahoo_require_it(
        tmp_path: Path, sqlite_url: str, site: Config, zone: Zone, smarthost: SecureSink,
        signing_key: Path) -> None:
    config = site_config(tmp_path, sqlite_url, zone, smarthost, signing_key,
                         dkim={"selector": "", "key_file": ""})
    found = await checked(config)
    assert found["DKIM"].status == "fail"
    assert found["DKIM"].detail == "DKIM is off: Gmail and Yahoo require it of bulk senders"
    assert "alliance dkim keygen" in found["DKIM"].fix
    assert found["alignment"].status == "warn"


async def test_two_spf_records_fail(site: Config, zone: Zone) -> None:
    zone.text(DOMAIN, GOOD_SPF, "v=spf1 include:_spf.example.net ~all")
    finding = (await checked(site))["SPF"]
    assert finding.line() == (
        f"fail  SPF: 2 SPF records at {DOMAIN}: receivers then fail SPF for all its mail "
        "(RFC 7208 §4.5); to fix: merge them into one v=spf1 record")


async def test_a_softfail_spf_record_warns_with_the_reason(site: Config, zone: Zone) -> None:
    zone.text(DOMAIN, "v=spf1 ip4:192.0.2.0/24 ~all", "google-site-verification=abc")
    finding = (await checked(site))["SPF"]
    assert finding.status == "warn"
    assert "softfail" in finding.detail and "-all" in finding.fix


async def test_an_spf_record_that_leaves_out_the_sending_address_fails(
        site: Config, zone: Zone) -> None:
    zone.text(DOMAIN, "v=spf1 include:_spf.example.net mx ~all")
    zone.text("_spf.example.net", "v=spf1 ip4:198.51.100.0/24 -all")
    finding = (await checked(site))["SPF"]
    assert finding.line() == (
        f'fail  SPF: "v=spf1 include:_spf.example.net mx ~all" at {DOMAIN} gives {SENDING_IP} '
        '(this host) "softfail", not "pass": Gmail and Yahoo see mail from there fail SPF; '
        f"to fix: add ip4:{SENDING_IP} to it")


async def test_an_spf_record_that_allows_the_sending_address_through_an_include_passes(
        site: Config, zone: Zone) -> None:
    zone.text(DOMAIN, "v=spf1 include:_spf.example.net -all")
    zone.text("_spf.example.net", "v=spf1 a:relay.example.net -all")
    zone.publish("relay.example.net", "A", A(SENDING_IP))
    finding = (await checked(site))["SPF"]
    assert finding.status == "ok"
    assert finding.detail.endswith(f"; it allows {SENDING_IP} (this host)")


async def test_an_mx_naming_another_host_warns(site: Config, zone: Zone) -> None:
    zone.publish(DOMAIN, "MX", MX("mx.provider.example", 10))
    zone.publish("mx.provider.example", "A", A("198.51.100.7"))
    finding = (await checked(site))["MX"]
    assert finding.status == "warn"
    assert finding.detail.startswith(f"{DOMAIN} MX mx.provider.example, not this host")
    assert "Postfix in front" in finding.fix


async def test_dmarc_of_the_organisational_domain_applies_with_its_sp(
        site: Config, zone: Zone) -> None:
    del zone.records[(f"_dmarc.{DOMAIN}", "TXT")]
    zone.text("_dmarc.example.org", "v=DMARC1; p=reject; sp=none")
    finding = (await checked(site))["DMARC"]
    assert finding.status == "warn", "sp=none is what a subdomain gets"
    assert finding.detail.startswith('"v=DMARC1; p=reject; sp=none" at _dmarc.example.org')


async def test_a_sending_address_without_reverse_dns_fails(site: Config, zone: Zone) -> None:
    zone.records = {key: value for key, value in zone.records.items()
                    if value and key[1] != "PTR"}
    finding = (await checked(site))["bulk senders: reverse DNS"]
    assert finding.line() == (
        f"fail  bulk senders: reverse DNS: {SENDING_IP} (this host) has no PTR record; to fix: "
        f"ask the address's provider for 25.2.0.192.in-addr.arpa. IN PTR mail.{DOMAIN}. and "
        f"publish mail.{DOMAIN}. IN A {SENDING_IP}")


async def test_no_dmarc_record_fails_with_the_record_to_publish(
        site: Config, zone: Zone) -> None:
    del zone.records[(f"_dmarc.{DOMAIN}", "TXT")]
    found = await checked(site)
    assert found["DMARC"].line() == (
        f"fail  DMARC: no DMARC record at _dmarc.{DOMAIN} nor at _dmarc.example.org: Gmail "
        f"and Yahoo require one of bulk senders; to fix: publish: _dmarc.{DOMAIN}. IN TXT "
        f'"v=DMARC1; p=none; rua=mailto:admin@{DOMAIN}"')
    assert zone.queries["_dmarc.example.org"] >= 1, "the organisational domain is asked too"


async def test_dmarc_p_none_warns_that_it_is_only_the_minimum(
        site: Config, zone: Zone) -> None:
    zone.text(f"_dmarc.{DOMAIN}", "v=DMARC1; p=none")
    found = await checked(site)
    assert found["DMARC"].status == "warn"
    assert "p=none meets Gmail's and Yahoo's minimum" in found["DMARC"].detail
    assert found["bulk senders: SPF+DKIM+DMARC"].status == "ok"


async def test_a_database_behind_the_code_fails_saying_to_upgrade(
        tmp_path: Path, database_url: str, zone: Zone, smarthost: SecureSink,
        signing_key: Path) -> None:
    url = database_url
    upgrade_to(url, "0010")
    config = site_config(tmp_path, url, zone, smarthost, signing_key)
    finding = (await checked(config))["database"]
    assert finding.status == "fail"
    newest = ", ".join(sorted(heads()))
    assert finding.detail == f"{url} is at schema 0010; the code's is {newest}"
    assert finding.fix == "back it up, then run `alliance db upgrade`"


async def test_a_database_server_that_is_down_fails_in_one_line(
        tmp_path: Path, zone: Zone, smarthost: SecureSink, signing_key: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/alliance"
    config = site_config(tmp_path, url, zone, smarthost, signing_key)
    finding = (await checked(config))["database"]
    assert finding.status == "fail"
    assert finding.detail.startswith(f"database {url}: cannot open it (")
    assert "\n" not in finding.detail and "database.url" in finding.detail


async def test_a_missing_database_is_not_created(
        tmp_path: Path, zone: Zone, smarthost: SecureSink, signing_key: Path) -> None:
    url = f"sqlite:///{tmp_path}/state/none.sqlite3"
    config = site_config(tmp_path, url, zone, smarthost, signing_key)
    finding = (await checked(config))["database"]
    assert finding.detail == f"no database at {tmp_path}/state/none.sqlite3"
    assert not (tmp_path / "state").exists()


async def test_a_smarthost_that_is_down_fails_and_tls_cannot_be_told(
        tmp_path: Path, sqlite_url: str, site: Config, zone: Zone, smarthost: SecureSink,
        signing_key: Path) -> None:
    port = free_port()
    config = site_config(tmp_path, sqlite_url, zone, smarthost, signing_key,
                         outbound={"url": f"smtp://127.0.0.1:{port}"})
    found = await checked(config)
    assert found["smarthost"].status == "fail"
    assert found["smarthost"].detail.startswith(f"127.0.0.1:{port} unreachable (")
    assert "outbound.url" in found["smarthost"].fix
    assert found["bulk senders: TLS"].status == "fail"
    assert found["DKIM"].status == "ok", "the other checks go on"


async def test_a_wrong_password_fails_naming_where_credentials_go(
        site: Config, smarthost: SecureSink) -> None:
    assert site.outbound.auth_file
    Path(site.outbound.auth_file).write_text(f"{USER}:wrong\n")
    finding = (await checked(site))["smarthost"]
    assert finding.status == "fail"
    assert f"refused AUTH as '{USER}' (535" in finding.detail
    assert "outbound.auth_file" in finding.fix and smarthost.logins == []


async def test_a_smarthost_over_smtps_is_checked_with_tls_from_the_first_byte(
        tmp_path: Path, sqlite_url: str, site: Config, zone: Zone, smarthost: SecureSink,
        signing_key: Path) -> None:
    implicit = SecureSink(tls=make_certificate(tmp_path).server_context())
    loop = asyncio.get_running_loop()
    implicit.server = await loop.create_server(
        lambda: SMTP(implicit, hostname="sink.test", authenticator=implicit.authenticate,
                     auth_require_tls=False), "127.0.0.1", 0, ssl=implicit.tls)
    port = implicit.server.sockets[0].getsockname()[1]
    try:
        config = site_config(tmp_path, sqlite_url, zone, smarthost, signing_key,
                             outbound={"url": f"smtps://127.0.0.1:{port}"})
        found = await checked(config)
    finally:
        await implicit.stop()
    assert found["smarthost"].detail == (f"127.0.0.1:{port}: connected, EHLO, smtps, AUTH as "
                                         f"'{USER}'; no mail sent")
    assert found["bulk senders: TLS"].line() == \
        f"ok    bulk senders: TLS: smtps to 127.0.0.1:{port}"


async def test_a_local_smarthost_in_clear_passes_but_tls_warns(
        tmp_path: Path, sqlite_url: str, site: Config, zone: Zone, smarthost: SecureSink,
        signing_key: Path, sink: Sink) -> None:
    config = site_config(tmp_path, sqlite_url, zone, smarthost, signing_key,
                         outbound={"url": f"smtp://127.0.0.1:{sink.port}", "auth_file": ""})
    found = await checked(config)
    assert found["smarthost"].detail == (f"127.0.0.1:{sink.port}: connected, EHLO, no TLS "
                                         "(none offered), no AUTH (no credentials set); no "
                                         "mail sent")
    assert found["bulk senders: TLS"].status == "warn"
    assert found["bulk senders: TLS"].detail == \
        f"in clear to 127.0.0.1:{sink.port}, on this machine"

    required = site_config(tmp_path, sqlite_url, zone, smarthost, signing_key, outbound={
        "url": f"smtp://127.0.0.1:{sink.port}?starttls=required", "auth_file": ""})
    finding = (await checked(required))["smarthost"]
    assert finding.line() == (
        f"fail  smarthost: 127.0.0.1:{sink.port} offers no STARTTLS, and the URL says "
        "starttls=required; to fix: turn STARTTLS on at the smarthost, or use "
        "smtps://HOST:465")
    assert sink.received == []


async def test_maildir_outbound_warns_that_nothing_is_sent(
        tmp_path: Path, sqlite_url: str, site: Config, zone: Zone, smarthost: SecureSink,
        signing_key: Path) -> None:
    config = site_config(tmp_path, sqlite_url, zone, smarthost, signing_key,
                         outbound={"url": "maildir:outbox", "auth_file": "",
                                   "tls_ca_file": ""})
    found = await checked(config)
    assert found["smarthost"].status == found["bulk senders: TLS"].status == "warn"
    assert found["smarthost"].detail == ("outbound.url is maildir:outbox: mail is written to "
                                         "files there, never sent")


async def test_a_dead_dns_server_fails_each_dns_check_in_one_line_at_its_timeout(
        site: Config, zone: Zone) -> None:
    zone.silent = True
    found = await checked(site, timeout=60.0)
    dead = f"DNS: no answer from DNS server {zone.address} ([dns] nameserver) within 0.5 s"
    for name in ("MX", "SPF", "DKIM", "DMARC", "alignment", "bulk senders: SPF+DKIM+DMARC",
                 "bulk senders: reverse DNS"):
        assert found[name].status == "fail", name
        # The DNS timeout (0.5 s) ended it, not the check's own (60 s).
        assert found[name].detail.startswith(dead), found[name].detail
        assert "[dns] nameserver" in found[name].fix
    assert (found["smarthost"].status, found["database"].status) == ("ok", "ok"), found


# -- the command line ----------------------------------------------------------------------

@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_the_command_prints_one_line_a_check_and_exits_0_when_none_fails(
        tmp_path: Path, sqlite_url: str, site: Config, zone: Zone, smarthost: SecureSink,
        signing_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "outward_address", lambda: SENDING_IP)
    path = tmp_path / "config.toml"
    path.write_text(toml(site_sections(tmp_path, sqlite_url, zone, smarthost, signing_key)))
    result = await asyncio.to_thread(invoke, path, "check")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(check.CHECKS) - 1
    assert all(line.startswith("ok    ") for line in lines), result.output
    assert lines[0] == f"ok    config: {path} loads; site.admin is admin@{DOMAIN}"

    result = await asyncio.to_thread(invoke, path, "check", "--json")
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["status"] == "ok"
    assert report["checks"][1] == {"check": "database", "status": "ok", "fix": "",
                                   "detail": report["checks"][1]["detail"]}


@pytest.mark.usefixtures("no_credentials_in_environment")
async def test_the_command_exits_1_when_dns_is_dead(
        tmp_path: Path, sqlite_url: str, site: Config, zone: Zone, smarthost: SecureSink,
        signing_key: Path) -> None:
    zone.silent = True
    path = tmp_path / "config.toml"
    path.write_text(toml(site_sections(tmp_path, sqlite_url, zone, smarthost, signing_key)))
    result = await asyncio.to_thread(invoke, path, "check", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["status"] == "fail"
    statuses = {entry["check"]: entry["status"] for entry in report["checks"]}
    assert statuses["SPF"] == statuses["MX"] == statuses["DMARC"] == "fail"
    assert statuses["smarthost"] == "ok"


def test_a_config_that_does_not_load_is_one_fail_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[outbound]\nurl = "smtp://me:secret@relay.example.org"\n')
    result = invoke(path, "check")
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("fail  config: outbound.url: no user or password in the URL")
    assert "secret" not in line
