"""What the tests share: a recording smarthost, configs, running daemons, mail as clients
send it, the command line, the list and meeting sites, and a DNS server on loopback.

Everything is real: the daemon listens on port 0 in the test's own event loop, the sink is
an aiosmtpd server on port 0, and the databases are SQLite files and PostgreSQL databases.
Pytest fixtures live in tests/conftest.py; test modules import helpers from here only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosmtplib
import psycopg
import pytest
from aiosmtpd.smtp import SMTP
from alembic import command
from alembic.config import Config as AlembicConfig
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from icalendar import Calendar
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from lists import service
from lists.dmarc import DmarcLookup
from lists.list_site import ListSite
from lists.models import MailingList
from lists.post import Post, PostFacts, make_post
from mailer import templates
from mailer.addresses import Role, Route
from mailer.cli import main
from mailer.config import Config, from_dict
from mailer.daemon import Daemon, build
from mailer.db import MIGRATIONS, Database, resolve_url
from mailer.inbound import Inbound, parse
from mailer.models import Delivery, Work
from mailer.tokens import Signer
from meetings.meeting_site import MeetingSite
from meetings.models import Body, CoordinationTerm, Delegate, Invitation, Meeting, Party

DOMAIN = "lists.example.org"
SECRET = b"test-secret"       # the configured site secret, which keys every token
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DATA = Path(__file__).resolve().parent / "data"


# -- the smarthost --------------------------------------------------------------------

def read(data: bytes) -> EmailMessage:
    """A message as a mail client reads it: lines end in plain newlines."""
    parsed = BytesParser(policy=default_policy).parsebytes(data.replace(b"\r\n", b"\n"))
    assert isinstance(parsed, EmailMessage)
    return parsed


@dataclass
class Delivered:
    mail_from: str
    rcpt: str
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return read(self.data)


@dataclass
class Sink:
    """A smarthost that records every delivery and answers as a test tells it to."""

    port: int = 0
    received: list[Delivered] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)   # recipient -> RCPT reply
    tempfail_data: int = 0                                  # answer DATA with 451 n times
    delay: float = 0.0                                      # seconds before each DATA reply
    pipelining: bool = True                 # offer PIPELINING (RFC 2920), as Postfix does
    server: asyncio.Server | None = None

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING"] * self.pipelining + responses[-1:]

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.tempfail_data > 0:
            self.tempfail_data -= 1
            return "451 4.3.0 Try again later"
        for rcpt in envelope.rcpt_tos:
            self.received.append(Delivered(envelope.mail_from, rcpt,
                                           envelope.original_content))
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test"), "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    @property
    def recipients(self) -> Counter[str]:
        return Counter(d.rcpt for d in self.received)

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Delivered]:
        """Wait until `count` deliveries have arrived (or fail the test)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"sink got {len(self.received)} of {count} deliveries")
            await asyncio.sleep(0.02)
        return self.received


async def wait_quiet(sink: Sink, count: int, settle: float = 0.3) -> list[Delivered]:
    """Wait for `count` deliveries, then a moment more to see that no others follow."""
    await sink.wait_for(count)
    await asyncio.sleep(settle)
    assert len(sink.received) == count, [d.message["Subject"] for d in sink.received]
    return sink.received


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- databases ------------------------------------------------------------------------

def _postgres_or_skip() -> None:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI needs PostgreSQL on 127.0.0.1:5432: {error}") from error
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({error})")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    _postgres_or_skip()
    name = f"alliance_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade_to(url: str, revision: str) -> None:
    """Bring the database to an old schema `revision`, as an old version left it."""
    engine = create_engine(resolve_url(url, Path(".")))
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, revision)
    engine.dispose()


# -- certificates the tests make ---------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    """A private CA and a certificate it signed for localhost and 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(folder: Path) -> Pki:
    """A CA, and a server certificate it signed (cryptography's x509 builder)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Alliance test CA"))
          .issuer_name(_name("Alliance test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


# -- configs and daemons ----------------------------------------------------------------

def make_config(base: Path, database_url: str, *, smarthost_port: int | None = None,
                **sections: dict[str, Any]) -> Config:
    """A config for tests: port-0 listeners, quick retries, the given smarthost."""
    data: dict[str, dict[str, Any]] = {
        "site": {"domain": DOMAIN, "secret": SECRET.decode()},
        "database": {"url": database_url},
        "smtp": {"listen": "127.0.0.1:0"},
        "http": {"listen": "127.0.0.1:0", "base_url": "https://lists.example.org"},
        # No test depends on outside DNS: nothing answers here, so DMARC look-ups end
        # quickly with "no policy" unless a test starts its own DNS server.
        "dns": {"nameserver": "127.0.0.1:9", "timeout": 0.05},
        "lmtp": {"listen": "127.0.0.1:0"},
        "outbound": {"url": f"smtp://127.0.0.1:{smarthost_port}" if smarthost_port
                     else "maildir:outbox",
                     "retry_initial": 0.2, "retry_max": 0.5, "connections": 4},
        # Replies are read in the daemon's own process, where the tests' clock and fakes
        # reach; test_workers.py runs the worker processes.
        "router": {"processes": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(data, base)


def config_file(config: Config, folder: Path) -> Path:
    """The same site and database as a config file, for the command line."""
    path = folder / "cli.toml"
    path.write_text(f'[site]\ndomain = "{config.site.domain}"\nsecret = "{SECRET.decode()}"\n'
                    f'[database]\nurl = "{config.database.url}"\n')
    return path


def fresh_config(folder: Path) -> Path:
    """A first config file as an operator writes it: a domain and a database, no more."""
    path = folder / "config.toml"
    path.write_text('[site]\ndomain = "lists.example.org"\n'
                    '[database]\nurl = "sqlite:///state/alliance.sqlite3"\n')
    return path


@contextlib.asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Daemon]:
    """A started daemon, stopped at the end of the block."""
    daemon = build(config, poll=0.1, **kwargs)
    await daemon.start()
    try:
        yield daemon
    finally:
        if not daemon.stopped.is_set():
            await daemon.stop(grace=5)


async def quiet(daemon: Daemon, timeout: float = 15.0) -> None:
    """Wait until every received message is handled and every delivery has an outcome;
    then nothing may be quarantined (work that failed for good is a failed test)."""
    def busy(session: Session) -> int:
        work = session.scalar(select(func.count()).select_from(Work).where(
            Work.state.in_(("pending", "working"))))
        sending = session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.state.in_(("pending", "sending"))))
        return int(work or 0) + int(sending or 0)
    deadline = time.monotonic() + timeout
    while await daemon.db.read(busy):
        assert time.monotonic() < deadline, "the daemon did not settle"
        await asyncio.sleep(0.05)
    quarantined = await daemon.db.read(lambda s: list(s.scalars(
        select(Work.error).where(Work.state == "quarantined"))))
    assert quarantined == []


class Clock:
    """A clock a test can move forward; handed to the daemon through build()."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float = 0, seconds: float = 0) -> None:
        self.now += days * 86_400 + seconds


# -- mail as clients send it -----------------------------------------------------------

def mail(sender: str, to: str, subject: str = "Hello", body: str = "Hello, list.\n",
         **headers: str) -> bytes:
    """A small, well-formed message as a mail client would send it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@client.test>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes(policy=default_policy.clone(linesep="\r\n"))


async def send(port: int, sender: str, recipients: list[str], data: bytes) -> Any:
    """Send one message over SMTP; returns aiosmtplib's (refusals, reply)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                               timeout=10) as client:
        return await client.sendmail(sender, recipients, data)


def reply_to(robot_mail: Delivered, sender: str, body: str = "",
             **headers: str) -> tuple[str, bytes]:
    """(address, bytes) of a person's reply to a robot's message: quoted, Re: subject."""
    original = robot_mail.message
    target = str(original.get("reply-to") or original["from"])
    address = target.split("<")[-1].rstrip(">").strip()
    quoted = "\n".join("> " + line for line in original.get_content().splitlines()[:5])
    data = mail(sender, address, subject=f"Re: {original['subject']}",
                body=(body + "\n\n" if body else "") + quoted + "\n",
                In_Reply_To=str(original["message-id"]), **headers)
    return address, data


# -- the command line -------------------------------------------------------------------

def invoke(config: Path | str, *args: str, input: str | None = None) -> Result:
    """Run `alliance --config CONFIG ARGS` in this process, as an owner would."""
    return CliRunner().invoke(main, ["--config", str(config), *args], input=input)


def run(config: Path, *args: str) -> tuple[int, str]:
    """Run `alliance ARGS`: (exit code, what it printed)."""
    result = invoke(config, *args)
    return result.exit_code, result.output


def cli(config: Path, *args: str) -> str:
    """Run `alliance ARGS`; it must succeed. Returns what it printed."""
    result = invoke(config, *args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def cli_error(config: Path, *args: str) -> str:
    """Run `alliance ARGS`; it must fail with one line. Returns that line."""
    code, output = run(config, *args)
    assert code == 1, (args, output)
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0].removeprefix("Error: ")


# -- lists ------------------------------------------------------------------------------

def members(count: int) -> list[str]:
    return [f"m{n:05d}@members.test" for n in range(1, count + 1)]


def make_list(config: Config, name: str, members: list[str], **options: Any) -> None:
    """Create a list with members, as an owner would with the CLI."""
    db = Database(config.database.url, config.base_dir)
    db.upgrade()
    try:
        def create(session: Session) -> None:
            made = service.create(session, name, **options)
            service.add_members(session, made, members)
        db.transaction(create)
    finally:
        db.close()


def make_role(config: Config, name: str, address: str, role: str) -> None:
    """Give `address` a role on the list (owner, moderator, poster)."""
    db = Database(config.database.url, config.base_dir)
    try:
        db.transaction(lambda s: service.add_members(s, service.find(s, name), [address],
                                                     role=role))
    finally:
        db.close()


def post_of(mailing_list: MailingList, raw: bytes, *, facts: PostFacts | None = None,
            site: ListSite | None = None, message_id: int = 1) -> Post:
    """The post the list's handler makes of `raw`, sent to the list by its From address
    (`message_id` is the stored message's, which only the fan-out refers to)."""
    site = site or list_site()
    message = parse(raw)
    sender = message["from"].addresses[0].addr_spec
    inbound = Inbound(1, message_id, Route(Role.POST, mailing_list.name),
                      site.address(mailing_list.name),
                      sender, raw, prepared=facts or PostFacts())
    return make_post(site, mailing_list, inbound)


def set_option(config: Config, name: str, key: str, value: str) -> None:
    """`alliance list set NAME KEY VALUE`, as the owner would."""
    cli(config_file(config, config.base_dir), "list", "set", name, key, value)


# -- the sites, for calling list and meeting functions directly -------------------------

MEMBER_TOKENS = Signer(SECRET, "member")         # VERP: the member a bounce is about


def site_config(base_url: str = "") -> Config:
    """The test site's config; no published pages unless `base_url` is given."""
    http = {"listen": "127.0.0.1:0", "base_url": base_url} if base_url else {"listen": ""}
    return make_config(Path("."), "sqlite://", http=http)


def list_site(config: Config | None = None, *, clock: Callable[[], float] = time.time,
              dmarc: DmarcLookup | None = None) -> ListSite:
    """The list side's view of the test site, as the daemon builds it."""
    return ListSite.from_config(config or site_config(), SECRET, templates.environment(),
                                clock=clock, dmarc=dmarc)


def meeting_site(config: Config | None = None, *,
                 clock: Callable[[], float] = time.time) -> MeetingSite:
    """The meetings side's view of the test site, as the daemon builds it."""
    return MeetingSite.from_config(config or site_config(), SECRET, templates.environment(),
                                   clock=clock)


# -- meetings from the command line -----------------------------------------------------

ICALJS = Path(__file__).resolve().parent / "icaljs"
NEXT_YEAR = time.gmtime().tm_year + 1


def local(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")


def days_from_now(days: float, tz: str = "Europe/Berlin", *, base: float | None = None) -> str:
    """A local wall time `days` after now (or after `base`), for --start and --end."""
    moment = datetime.fromtimestamp(base if base is not None else time.time(), ZoneInfo(tz))
    return local((moment + timedelta(days=days)).replace(second=0, microsecond=0))


def seat(config: Path, address: str, name: str, party: str, body: str,
         language: str = "en", *extra: str) -> str:
    return cli(config, "delegate", "add", address, "--name", name, "--party", party,
               "--body", body, "--language", language, *extra)


def party(config: Path, name: str, country: str = "FR", region: str = "europe") -> None:
    cli(config, "party", "add", name, "--country", country, "--region", region)


ANA, JORG = "ana@ps.example", "jorg@spd.example"


def board_of_two(config: Path) -> None:
    """Two parties with one Board delegate each, in French and in German."""
    party(config, "Parti Socialiste", "FR")
    party(config, "SPD", "DE")
    seat(config, ANA, "Ana Silva", "Parti Socialiste", "board", "fr")
    seat(config, JORG, 'Jörg "Jo" Müller', "SPD", "board", "de")


def organisation_cli(folder: Path, database_url: str) -> tuple[Path, Database]:
    """A migrated database and a config file for the command line: (config, database)."""
    config = make_config(folder, database_url)
    db = Database(config.database.url, config.base_dir)
    db.upgrade()
    return config_file(config, folder), db


async def http(port: int, method: str, path: str, body: bytes = b"",
               language: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """One HTTP/1.1 request over a real socket, the connection closed after it:
    (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    accept = "Connection: close\r\n"
    accept += f"Accept-Language: {language}\r\n" if language is not None else ""
    accept += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write((f"{method} {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n{accept}"
                  f"Content-Type: application/x-www-form-urlencoded\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, text = response.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), fields, text.decode()


def create_meeting(config: Path, body: str = "board", *extra: str,
                   start: str | None = None, end: str | None = None,
                   draft: bool = False) -> int:
    """A meeting next year (unless told otherwise), its invitations due at once (unless
    a draft, or --send-at is given); returns its id."""
    when = [] if draft or "--send-at" in extra else ["--send-at", "now"]
    output = cli(config, "meeting", "create", "--body", body, "--title", "Board meeting",
                 "--start", start or f"{NEXT_YEAR}-03-14T09:00",
                 "--end", end or f"{NEXT_YEAR}-03-14T17:00", "--tz", "Europe/Berlin",
                 "--location", "Rotes Rathaus, Berlin", *when, *extra)
    found = re.match(r"meeting (\d+) created", output)
    assert found, output
    return int(found[1])


# -- invitations at the sink ---------------------------------------------------------------

def bare_line_feeds(data: bytes) -> list[str]:
    """The text parts of a message, as it went over the wire, whose decoded content has
    a line feed without its carriage return (RFC 2046 §4.1.1 wants CRLF): their types."""
    message = BytesParser(policy=default_policy).parsebytes(data)
    found = []
    for part in message.walk():
        body = part.get_payload(decode=True) if part.get_content_maintype() == "text" else b""
        if isinstance(body, bytes) and re.search(rb"(?<!\r)\n", body):
            found.append(part.get_content_type())
    return found


def calendars(message: EmailMessage) -> tuple[bytes, bytes]:
    """The inline text/calendar part's bytes and the invite.ics attachment's bytes."""
    inline = attached = b""
    for part in message.walk():
        if part.get_content_type() == "text/calendar":
            inline = part.get_payload(decode=True)
        elif part.get_filename() == "invite.ics":
            attached = part.get_payload(decode=True)
    return inline, attached


def event_of(data: bytes) -> tuple[Calendar, Any]:
    """The parsed calendar (icalendar, from bytes) and its one VEVENT."""
    calendar = Calendar.from_ical(data)
    [event] = calendar.events
    return calendar, event


def icaljs(data: bytes) -> dict[str, Any]:
    """What Thunderbird's parser finds in the calendar (skips without node and ical.js).

    ical.js is Thunderbird's own iCalendar parser; `tests/icaljs/parse.mjs` runs it under
    node. Install it with `npm ci --prefix tests/icaljs` (CI does); without it the checks
    that need it skip, except under CI, where they fail.
    """
    node = shutil.which("node")
    if node is None or not (ICALJS / "node_modules" / "ical.js").exists():
        if os.environ.get("CI"):
            raise AssertionError("CI needs node and `npm ci --prefix tests/icaljs`")
        pytest.skip("ical.js is not installed (npm ci --prefix tests/icaljs)")
    result = subprocess.run([node, str(ICALJS / "parse.mjs")], input=data,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


# What an invitation template sees (meetings/letters.py), shared by the four kinds of mail.
INVITE: dict[str, Any] = {
    "meeting": {"id": 4, "title": "Steering Committee, Nairobi", "body": "Steering Committee",
                "location": "KICC, Nairobi", "description": "Budget and campaigns.",
                "alongside": "World Social Forum", "agenda_url": "https://example.org/a.pdf",
                "host": "ODM", "status": "CONFIRMED", "sequence": 1, "date": "Sun, 14 Mar 2027",
                "start": "2027-03-14 09:00", "end": "2027-03-14 17:00", "tz": "Africa/Nairobi",
                "when": "Sunday, 14 March 2027, 09:00–17:00",
                "zone": "Africa/Nairobi, East Africa Time",
                "utc": "Sunday, 14 March 2027, 06:00–14:00 UTC"},
    "organizer": "Parti Socialiste", "whole": True, "days_left": 3,
    "rsvp": "rsvp+4-abcdefghijklmnopqrstuvwxyz@lists.example.org",
    "invitee": {"name": "Ana Silva", "address": "ana@party.test"},
    "delegated_from": "Kofi Mensah",
    "answer": {"partstat": "ACCEPTED", "delegated_to": "", "comment": "Late, after 11:00"},
    "links": {choice: f"https://lists.example.org/rsvp/4-abcdefghijklmnopqrstuvwxyz/{choice}"
              for choice in ("accept", "tentative", "decline", "substitute")},
    "changes": [{"field": "when",
                 "old": "Saturday, 13 March 2027, 09:00–17:00 (Africa/Nairobi, East Africa Time)",
                 "new": "Sunday, 14 March 2027, 09:00–17:00 (Africa/Nairobi, East Africa Time)"},
                {"field": "location", "old": "", "new": "KICC, Nairobi"},
                {"field": "description", "old": "Budget.", "new": "Budget and campaigns."}],
    "reason": "The hall is closed."}


# -- a meeting of ours and its invitations, made directly in the database ---------------

ATTENDEE_TOKENS = Signer(SECRET, "attendee")     # an invitee's rsvp+TOKEN@ address
COORDINATOR = "coord@parties.test"
ZONE = ZoneInfo("Africa/Nairobi")
PEOPLE = {"ana@party.test": "Ana Silva", "kofi@party.test": "Kofi Mensah",
          "lena@party.test": "Lena Vogel", "yann@party.test": "Yann Le Goff",
          "zara@party.test": "Zara Haddad"}


@dataclass
class World:
    """One meeting of ours and the invitation of each person in PEOPLE."""

    meeting_id: int
    uid: str
    invitations: dict[str, int] = field(default_factory=dict)

    def rsvp(self, address: str) -> str:
        return f"rsvp+{ATTENDEE_TOKENS.sign(self.invitations[address])}@{DOMAIN}"


def organise(session: Session, *, sequence: int = 0, uid: str = "") -> World:
    """A custom body, two parties, a meeting in a month and its sent invitations."""
    now = time.time()
    ours = Party(name="Frente Amplio", country="UY", region="latin-america", created_at=now)
    theirs = Party(name="African National Congress", country="ZA", region="africa",
                   created_at=now)
    session.add_all([ours, theirs])
    session.flush()
    body = Body(slug="nairobi-forum", name="Nairobi Forum", kind="custom",
                one_delegate_per_party=True, meetings_per_year=1, created_at=now)
    session.add(body)
    session.add(CoordinationTerm(party_id=ours.id, started_at=now, ended_at=None,
                                 contact=COORDINATOR))
    start = (datetime.now(ZONE) + timedelta(days=30)).replace(hour=9, minute=0, second=0,
                                                              microsecond=0)
    end = start.replace(hour=17)
    session.flush()
    meeting = Meeting(uid=uid or f"{time.time_ns()}@{DOMAIN}", body_id=body.id,
                      title="Steering Committee, Nairobi", location="KICC, Nairobi",
                      tz="Africa/Nairobi", start_local=start.strftime("%Y-%m-%dT%H:%M:%S"),
                      end_local=end.strftime("%Y-%m-%dT%H:%M:%S"),
                      starts_at=start.timestamp(), ends_at=end.timestamp(), send_at=now,
                      status="CONFIRMED", sequence=sequence, created_at=now, updated_at=now)
    session.add(meeting)
    session.flush()
    world = World(meeting.id, meeting.uid)
    for address, name in PEOPLE.items():
        party = ours if address == "ana@party.test" else theirs
        delegate = Delegate(address=address, name=name, party_id=party.id, language="en",
                            created_at=now)
        session.add(delegate)
        session.flush()
        if address == "lena@party.test":
            continue  # a delegate of the other party, not invited to this meeting
        invitation = Invitation(meeting_id=meeting.id, delegate_id=delegate.id,
                                address=address, name=name, language="en",
                                sent_sequence=sequence, reset_sequence=sequence)
        session.add(invitation)
        session.flush()
        world.invitations[address] = invitation.id
    return world


@dataclass(frozen=True)
class Standing:
    """Where an invitee stands: their answer, its comment, the invitation's state, and the
    last problem delivering mail to them."""

    partstat: str
    comment: str
    state: str
    delegated_to: str = ""
    problem: str = ""


def standing(db: Database, world: World, address: str) -> Standing:
    def read(session: Session) -> Standing:
        row = session.get(Invitation, world.invitations[address])
        assert row is not None
        return Standing(row.partstat, row.comment, row.state, row.delegated_to, row.problem)
    return db.query(read)


# -- replies as each client sends them, addressed to our meeting -------------------------

REPLIES = DATA / "replies"
FIXTURE_UID = "a6c0b1e2-4f3d-4b8e-9c7a-2d5e8f1a3b4c@lists.example.org"
FIXTURE_INVITEE = "ana@party.test"
FIXTURE_RSVP = "rsvp+TOKEN@lists.example.org"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def addressed(raw: bytes, changes: dict[str, str]) -> bytes:
    """The message with each old text replaced: in the raw bytes, and inside base64 parts.

    Everything else stays byte for byte, so that each client's own encoding (Apple's
    quoted-printable, Outlook's base64, Google's two copies) is what the daemon reads.
    """
    for old, new in changes.items():
        raw = raw.replace(old.encode(), new.encode())
    for part in parse(raw).walk():
        if part.is_multipart() or \
                str(part.get("content-transfer-encoding", "")).lower() != "base64":
            continue
        encoded = str(part.get_payload()).strip()
        decoded = part.get_payload(decode=True)
        assert isinstance(decoded, bytes)
        changed = decoded
        for old, new in changes.items():
            changed = changed.replace(old.encode(), new.encode())
        if changed != decoded:
            fresh = base64.encodebytes(changed).decode().strip().replace("\n", "\r\n")
            raw = raw.replace(encoded.encode(), fresh.encode())
    return raw


def fixture(name: str, world: World, invitee: str = "ana@party.test",
            **more: str) -> bytes:
    """One of our client fixtures (tests/data/replies/), as that client would send it
    about our meeting."""
    changes = {**more, FIXTURE_UID: world.uid, FIXTURE_RSVP: world.rsvp(invitee),
               FIXTURE_INVITEE: invitee}
    return addressed(crlf((REPLIES / name).read_bytes()), changes)


# -- a DNS server on loopback ------------------------------------------------------------

@dataclass
class DnsServer:
    """A real DNS server on loopback UDP, in the test's own event loop, built with dnslib.

    Answers `txt[name]` (a list of records) for TXT queries; NXDOMAIN for other names.
    `silent` makes it read queries and answer none (a server that times out);
    `servfail` makes it answer SERVFAIL; `queries` counts the names asked. The code under
    test talks DNS over a socket exactly as in production; nothing in the resolver is patched.
    """

    txt: dict[str, list[str]] = field(default_factory=dict)
    silent: bool = False
    servfail: bool = False
    queries: Counter[str] = field(default_factory=Counter)
    port: int = 0
    transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dmarc(self, domain: str, record: str) -> None:
        """Publish `record` at `_dmarc.<domain>`."""
        self.txt[f"_dmarc.{domain}"] = [record]

    def answer(self, packet: bytes) -> bytes | None:
        request = DNSRecord.parse(packet)
        name = str(request.q.qname).rstrip(".").lower()
        self.queries[name] += 1
        if self.silent:
            return None
        reply = request.reply()
        if self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
        elif name not in self.txt:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for record in self.txt[name]:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(record), ttl=60))
        return bytes(reply.pack())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DnsProtocol(self), local_addr=("127.0.0.1", self.port))
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


# -- a raw SMTP conversation ------------------------------------------------------------

class Dialogue:
    """A raw SMTP/LMTP conversation, line by line, to see every reply exactly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Dialogue:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dialogue = cls(reader, writer)
        await dialogue.reply()
        return dialogue

    @classmethod
    async def open_raw(cls, port: int) -> str:
        """Connect, and return the greeting (or refusal) the server opens with."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await cls(reader, writer).reply()
        writer.close()
        return greeting

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode()
            lines.append(line.rstrip("\r\n"))
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    async def say(self, line: str | bytes) -> str:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()


# -- a full database ---------------------------------------------------------------------

def cap_pages(session: Any, extra: int | None) -> None:
    """Cap the database at its size now (+ `extra` pages): SQLite then answers
    "database or disk is full", as on a full disk. None lifts the cap."""
    pages = session.execute(text("PRAGMA page_count")).scalar()
    limit = 2_147_483_646 if extra is None else int(pages or 0) + extra
    session.execute(text(f"PRAGMA max_page_count = {limit}"))


# -- signing in to the web pages (mailer.webauth) -------------------------------------------

async def sign_in(port: int, sink: Sink, address: str) -> str:
    """Sign `address` in as a person does: ask for a link, take it from the mail the sink
    got, press its button. Returns the `Cookie:` value for later requests."""
    from urllib.parse import quote

    before = len(sink.received)
    status, _, page = await http(port, "POST", "/sign-in", f"address={quote(address)}".encode())
    assert status == 200, page
    await sink.wait_for(before + 1)
    found = re.search(r"https?://[^/\s]+(/sign-in/[0-9a-z-]+)",
                      sink.received[before].message.get_content())
    assert found is not None, sink.received[before].message.get_content()
    status, headers, _ = await http(port, "POST", found[1])
    assert status == 303, headers
    return headers["set-cookie"].split(";", 1)[0]


def csrf_of(page: str) -> str:
    """The CSRF token the forms of a signed-in page carry."""
    found = re.search(r'name="csrf" value="([0-9a-f]{32})"', page)
    assert found is not None, page
    return found[1]


# -- a real browser: Debian's Chromium through Playwright (the end-to-end tests) -----------
# The daemon runs in the test's event loop, and Playwright's async API shares it. axe-core
# (npm, tests/browser) is injected into each page checked; the pages' own CSP allows no
# script, so the browser context the tests use bypasses CSP for the test tooling only.
# Screenshots of the main pages, at phone and desktop widths, go to one folder
# (`ALLIANCE_SCREENSHOTS`, else artifacts/screenshots), which CI keeps.

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")    # Debian's package
AXE = REPO_ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = Path(os.environ.get("ALLIANCE_SCREENSHOTS") or REPO_ROOT / "artifacts" / "screenshots")
WIDTHS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}


def browser_or_skip() -> None:
    """Skip, saying why, where Chromium, Playwright or axe-core is missing; in CI they
    must be there (`.ci/run` installs them)."""
    missing = []
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright")
    if not CHROMIUM.exists():
        missing.append(f"Debian's chromium ({CHROMIUM})")
    if not AXE.exists():
        missing.append("axe-core (npm ci --prefix tests/browser)")
    if missing:
        if os.environ.get("CI"):
            raise RuntimeError("CI needs " + ", ".join(missing))
        pytest.skip("no " + ", ".join(missing))


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium and one browser context (phone width first)."""
    browser_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                               args=["--no-sandbox"])
        try:
            context = await browser.new_context(bypass_csp=True, viewport=WIDTHS["desktop"])
            yield context
        finally:
            await browser.close()


async def axe_problems(page: Any) -> list[str]:
    """The serious and critical accessibility violations axe-core finds in the page."""
    await page.add_script_tag(content=AXE.read_text())
    result = await page.evaluate("async () => await axe.run(document)")
    return [f"{v['id']} ({v['impact']}): {v['help']} — {len(v['nodes'])} node(s)"
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def shoot(page: Any, name: str) -> list[Path]:
    """Screenshots of the page at phone and desktop widths; the paths written."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^a-z0-9_-]+", "-", name.lower())
    written = []
    for width, size in WIDTHS.items():
        await page.set_viewport_size(size)
        path = SHOTS / f"{safe}-{width}.png"
        await page.screenshot(path=str(path), full_page=True)
        written.append(path)
    await page.set_viewport_size(WIDTHS["desktop"])
    return written


async def check_page(page: Any, name: str) -> None:
    """What every main page must hold: no serious or critical axe violation, a phone
    width with no sideways scrolling, and its screenshots kept."""
    problems = await axe_problems(page)
    assert problems == [], f"{name}: {problems}"
    await page.set_viewport_size(WIDTHS["phone"])
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} scrolls sideways on a phone by {overflow}px"
    await shoot(page, name)
