"""`alliance check`: is this site ready to run, and to send mail Gmail and Yahoo will take?

Each check is a small coroutine that looks at one thing through the `Probe` and returns an
`Outcome`: ok, warn or fail, what it found, and for a warn or a fail how to fix it (the DNS
record to publish, the config key to set); or None when it does not apply. `run` starts
them all at once, each under its own timeout, so that a DNS server that does not answer
costs one timeout in all, and each check that needed it says so in its one line. The DNS
answers and the smarthost session are asked for once and shared by the checks that need
them (`Probe.once`).

What Gmail and Yahoo ask of bulk senders (from February 2024): SPF and DKIM, a DMARC record
(p=none is enough) with From aligned to one of them, RFC 8058 one-click unsubscribe, TLS,
and a sending IP address whose reverse DNS is forward-confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename
from publicsuffixlist import PublicSuffixList

from mailer import domainkeys, tls
from mailer.config import CREDENTIALS_HOME, Config, ConfigError, parse_smarthost
from mailer.dns import make_resolver, nameserver_address

T = TypeVar("T")
Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Outcome:
    """What one check found: ok, warn or fail, in words, and how to fix a warn or a fail."""

    status: Status
    detail: str
    fix: str = ""


def ok(detail: str) -> Outcome:
    return Outcome("ok", detail)


def warn(detail: str, fix: str) -> Outcome:
    return Outcome("warn", detail, fix)


def fail(detail: str, fix: str) -> Outcome:
    return Outcome("fail", detail, fix)


@dataclass(frozen=True)
class Finding:
    """One line of `alliance check`: the check's name and its outcome."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The line as printed: status, check, what was found, and how to fix it.

        >>> print(Finding("DMARC", "fail", "no record at _dmarc.example.org", "publish it").line())
        fail  DMARC: no record at _dmarc.example.org; to fix: publish it
        """
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return f"{text}; to fix: {self.fix}" if self.fix else text


class DnsTrouble(Exception):
    """A look-up that got no usable answer: no server answered, or it failed (SERVFAIL)."""


@dataclass(frozen=True)
class HopSession:
    """What one session with the smarthost showed (connect, EHLO, TLS, AUTH; no mail)."""

    name: str
    problem: str = ""       # "" when every step went through
    fix: str = ""
    tls: str = ""           # "smtps", "STARTTLS", or "" for a session in clear
    user: str = ""          # whom AUTH logged in as; "" without credentials
    loopback: bool = False  # a smarthost on this machine


class _Refused(Exception):
    """A step of the smarthost session failed: what, and how to fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


def outward_address() -> str | None:
    """This host's address on its default route, when it is a public one; no packet is sent
    (a UDP socket's connect only picks the route)."""
    for family, target in ((socket.AF_INET, "198.51.100.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 25))
                address = str(probe.getsockname()[0])
        except OSError:
            continue
        if ipaddress.ip_address(address).is_global:
            return address
    return None


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a daemon thread: a server that never answers (a database, the system's
    resolver) may make a check time out, but never holds up the command's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as problem:  # handed to the awaiting check
            result, error = None, problem
        # The loop may have closed: the check timed out long ago.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)
    threading.Thread(target=work, daemon=True, name="check").start()
    return await future


class Probe:
    """What the checks look at: the config, DNS (through `[dns] nameserver` when set), the
    smarthost and the database. Each look-up and the smarthost session happen once."""

    def __init__(self, config: Config, *, origin: Path | None = None, timeout: float = 10.0,
                 environ: Mapping[str, str] = os.environ,
                 sending_address: Callable[[], str | None] = outward_address) -> None:
        self.config = config
        self.origin = origin
        self.timeout = timeout
        self.environ = environ
        self.sending_address = sending_address
        self._started: dict[Any, asyncio.Future[Any]] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._suffixes: PublicSuffixList | None = None

    @property
    def domain(self) -> str:
        """The site domain: every list's, the From of robot mail and the envelope's."""
        return self.config.site.domain.lower()

    @property
    def dns_server(self) -> str:
        server = self.config.dns.nameserver
        return f"DNS server {server} ([dns] nameserver)" if server else \
            "the system's DNS resolver (/etc/resolv.conf)"

    async def once(self, key: Any, make: Callable[[], Awaitable[T]]) -> T:
        """make()'s result, made by the first check that asks and shared with the others;
        a check that times out does not cancel it for them."""
        started = self._started.get(key)
        if started is None:
            started = self._started[key] = asyncio.ensure_future(make())
        return await asyncio.shield(started)

    async def lookup(self, name: str, rdtype: str) -> tuple[Any, ...]:
        """The records of `name`, () when there are none; DnsTrouble when nobody answers."""
        return await self.once(("dns", name.lower(), rdtype),
                               lambda: self._resolve(name, rdtype))

    async def txt(self, name: str) -> list[str]:
        """The TXT records of `name`, each one's strings joined (RFC 7208 §3.3)."""
        return [b"".join(record.strings).decode("utf-8", "replace")
                for record in await self.lookup(name, "TXT")]

    async def _resolve(self, name: str, rdtype: str) -> tuple[Any, ...]:
        seconds = self.config.dns.timeout
        try:
            answer = await self.resolver().resolve(name, rdtype, lifetime=seconds, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except dns.exception.Timeout:
            raise DnsTrouble(f"no answer from {self.dns_server} within {seconds:g} s "
                             f"(asking {rdtype} {name})") from None
        except dns.resolver.NoNameservers:
            raise DnsTrouble(f"{self.dns_server} failed to answer {rdtype} {name} "
                             "(SERVFAIL or refused)") from None
        except (dns.exception.DNSException, ConfigError, OSError) as error:
            raise DnsTrouble(f"{rdtype} {name}: {error}") from None
        return tuple(answer)

    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            server = self.config.dns.nameserver
            self._resolver = make_resolver(nameserver_address(server) if server else None,
                                           self.config.dns.timeout)
        return self._resolver

    def organisational(self, domain: str) -> str:
        """The registrable domain of `domain` (RFC 7489 §3.2, by the Public Suffix List)."""
        if self._suffixes is None:
            self._suffixes = PublicSuffixList()
        return str(self._suffixes.privatesuffix(domain.lower()) or domain.lower())

    async def sender(self) -> tuple[str | None, str]:
        """The public address mail leaves from, and whose it is (`sending_address`)."""
        return await self.once("sender", lambda: sending_address(self))

    async def hop(self) -> HopSession:
        """The smarthost session, opened once."""
        return await self.once("smarthost", lambda: smarthost_session(self))


# -- running them ------------------------------------------------------------------------

Check = Callable[[Probe], Awaitable[Outcome | None]]
DNS_FIX = ("check [dns] nameserver in the config (or the system's resolver), and that the "
           "server answers")


async def guarded(name: str, check: Check, probe: Probe) -> Finding | None:
    """One check under its timeout; whatever goes wrong is its own fail line."""
    try:
        outcome = await asyncio.wait_for(check(probe), probe.timeout)
    except TimeoutError:
        outcome = fail(f"no answer within {probe.timeout:g} s", "see that what it checks "
                       "answers, or give it longer with --timeout")
    except DnsTrouble as trouble:
        outcome = fail(f"DNS: {trouble}", DNS_FIX)
    except Exception as error:   # a check that breaks is one line, never the whole report
        outcome = fail(f"the check itself failed: {type(error).__name__}: {error}",
                       "report this as a bug")
    if outcome is None:
        return None
    return Finding(name, outcome.status, outcome.detail, outcome.fix)


async def run(probe: Probe, checks: tuple[tuple[str, Check], ...] | None = None
              ) -> list[Finding]:
    """Every check at once; their findings in the order of CHECKS."""
    chosen = CHECKS if checks is None else checks
    found = await asyncio.gather(*(guarded(name, check, probe) for name, check in chosen))
    return [finding for finding in found if finding is not None]


def worst(findings: list[Finding]) -> Status:
    """fail if any failed, else warn if any warned, else ok."""
    statuses = {finding.status for finding in findings}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


# -- the site ----------------------------------------------------------------------------

async def configuration(probe: Probe) -> Outcome:
    """The config loaded (else `alliance check` stops before the probe), and site.admin."""
    loaded = f"{probe.origin} loads" if probe.origin else \
        "no config file: every key is at its default"
    if not probe.config.site.admin:
        return warn(f"{loaded}; site.admin is not set: mail to postmaster@ and abuse@ waits "
                    "in the quarantine", '[site] admin = "you@example.org"')
    if probe.origin is None:
        return warn(loaded, "write config.toml (or give --config PATH)")
    return ok(f"{loaded}; site.admin is {probe.config.site.admin}")


async def database(probe: Probe) -> Outcome:
    """The database answers, and its schema is the code's newest (Alembic's head)."""
    from sqlalchemy.engine import make_url

    from mailer.db import heads, known_revisions

    shown = make_url(probe.config.database.url).render_as_string(hide_password=True)
    missing = _missing_sqlite(probe.config)
    if missing is not None:
        return fail(f"no database at {missing}",
                    "run `alliance db upgrade` (or start `alliance serve`, which makes it)")
    found = await in_thread(_schema, probe.config)
    if isinstance(found, str):
        return fail(found, "")
    newest = ", ".join(sorted(heads()))
    at = ", ".join(sorted(found))
    if found == heads():
        return ok(f"{shown} answers; its schema is the newest ({newest})")
    if not found:
        return fail(f"{shown} has no schema yet", "run `alliance db upgrade`")
    if found - known_revisions():
        return fail(f"{shown} is at schema {at}, which this version does not know (a newer "
                    "version migrated it?)", "run that version, or restore a backup")
    return fail(f"{shown} is at schema {at}; the code's is {newest}",
                "back it up, then run `alliance db upgrade`")


def _missing_sqlite(config: Config) -> Path | None:
    """The file of a SQLite database that does not exist (which check must not create)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(config.database.url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = config.path(parsed.database or "")
    return None if path.exists() else path


def _schema(config: Config) -> set[str] | str:
    """The revisions recorded in the database, or why it cannot be read (one line)."""
    from sqlalchemy.exc import SQLAlchemyError

    from mailer.db import Database, unavailable

    try:
        db = Database(config.database.url, config.base_dir)
    except (OSError, SQLAlchemyError, ValueError, TypeError) as error:
        return unavailable(config.database.url, error)
    try:
        return db.revisions()
    except (OSError, SQLAlchemyError) as error:
        return unavailable(config.database.url, error)
    finally:
        db.close()


# -- the smarthost -----------------------------------------------------------------------

MAILDIR_FIX = 'in production set [outbound] url = "smtp://HOST:PORT" (the smarthost)'


async def smarthost(probe: Probe) -> Outcome:
    """Connect, EHLO, STARTTLS when configured or offered, AUTH when credentials are set;
    QUIT before any mail (RFC 5321 §4.1.1.10)."""
    url = probe.config.outbound.url
    if url.startswith("maildir:"):
        return warn(f"outbound.url is {url}: mail is written to files there, never sent",
                    MAILDIR_FIX)
    session = await probe.hop()
    if session.problem:
        return fail(f"{session.name} {session.problem}", session.fix)
    secured = session.tls or "no TLS (none offered)"
    login = f"AUTH as {session.user!r}" if session.user else "no AUTH (no credentials set)"
    return ok(f"{session.name}: connected, EHLO, {secured}, {login}; no mail sent")


async def smarthost_session(probe: Probe) -> HopSession:
    """One session with the smarthost, each step as the delivery does it (mailer.transport)."""
    config = probe.config
    try:
        hop = tls.smarthost(config, probe.environ)
    except ConfigError as error:
        return HopSession(config.outbound.url, f"cannot be used: {error}", "correct that key")
    name = hop.name
    loopback = hop.host == "localhost" or _is_loopback(hop.host)
    client = aiosmtplib.SMTP(hostname=hop.host, port=hop.port,
                             timeout=min(config.outbound.timeout, probe.timeout),
                             local_hostname=config.intake.hostname or config.site.domain,
                             use_tls=hop.implicit_tls, start_tls=False, tls_context=hop.tls)
    try:
        await client.connect()
        await client.ehlo()
        secured = "smtps" if hop.implicit_tls else await _starttls(client, hop)
        user = await _login(client, hop, secured)
        await client.quit()
    except _Refused as refused:
        client.close()
        return HopSession(name, str(refused), refused.fix, loopback=loopback)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
        client.close()
        problem, fix = _session_trouble(error)
        return HopSession(name, problem, fix, loopback=loopback)
    return HopSession(name, tls=secured, user=user, loopback=loopback)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _starttls(client: aiosmtplib.SMTP, hop: tls.Smarthost) -> str:
    """"STARTTLS" when offered (RFC 3207); "" when not and the URL allows clear."""
    if client.supports_extension("starttls"):
        await client.starttls()
        await client.ehlo()
        return "STARTTLS"
    if hop.require_starttls:
        raise _Refused("offers no STARTTLS, and the URL says starttls=required",
                       "turn STARTTLS on at the smarthost, or use smtps://HOST:465")
    return ""


async def _login(client: aiosmtplib.SMTP, hop: tls.Smarthost, secured: str) -> str:
    """AUTH as the configured user (RFC 4954), only over TLS, as the delivery does."""
    if hop.credentials is None:
        return ""
    if not secured:
        raise _Refused("offers no STARTTLS: the AUTH password is never sent in clear, so no "
                       "mail would go out", "turn STARTTLS on at the smarthost")
    if not client.supports_extension("auth"):
        raise _Refused("offers no AUTH, but credentials are set",
                       "remove outbound.auth_file (or $ALLIANCE_SMARTHOST_USER and "
                       "$ALLIANCE_SMARTHOST_PASSWORD), or turn AUTH on at the smarthost")
    try:
        await client.login(hop.credentials.user, hop.credentials.password)
    except aiosmtplib.SMTPAuthenticationError as error:
        raise _Refused(f"refused AUTH as {hop.credentials.user!r} ({error.code} "
                       f"{error.message})", f"check the credentials: {CREDENTIALS_HOME}") from None
    return hop.credentials.user


def _session_trouble(error: BaseException) -> tuple[str, str]:
    """What went wrong in the session, and what to do, in words."""
    cause = error.__cause__ if isinstance(error.__cause__, ssl.SSLError) else error
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"failed the TLS certificate check ({cause.verify_message})",
                "give its CA in outbound.tls_ca_file (or outbound.tls_verify = false for a "
                "smarthost on this machine)")
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed ({cause.reason or cause})", "check the smarthost's TLS settings"
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return (f"answered {error.code} {error.message}",
                "see the smarthost's log: it refuses this host")
    return (f"unreachable ({error})",
            "check outbound.url, and that the smarthost runs and takes connections from here")


# -- DNS: MX, SPF, DKIM, DMARC, alignment ----------------------------------------------

async def mx(probe: Probe) -> Outcome:
    """The site domain's MX (RFC 5321 §5.1), and whether it names this host."""
    domain = probe.domain
    here = probe.config.intake.hostname or socket.gethostname()
    publish = f"publish: {domain}. IN MX 10 {here}."
    hosts = sorted({str(record.exchange).rstrip(".").lower()
                    for record in await probe.lookup(domain, "MX")})
    if not hosts:
        return fail(f"no MX record for {domain}: mail to the lists (joins, replies, "
                    "bounces) has no clear way here", publish)
    if hosts == [""]:
        return fail(f"{domain} publishes a null MX (RFC 7505): it takes no mail at all",
                    publish)
    if await _names_this_host(probe, hosts):
        return ok(f"{domain} MX {', '.join(hosts)}: this host")
    return warn(f"{domain} MX {', '.join(hosts)}, not this host ({here})",
                "fine when that host hands the lists' mail to this one (Postfix in front: "
                f"relay_domains and a transport to our LMTP); otherwise {publish}")


async def _names_this_host(probe: Probe, hosts: list[str]) -> bool:
    """Whether an MX host is this machine: by its name, or by an address bound here."""
    names = {socket.gethostname().lower(), probe.config.intake.hostname.lower()} - {""}
    if names & set(hosts):
        return True
    for host in hosts:
        for rdtype in ("A", "AAAA"):
            for record in await probe.lookup(host, rdtype):
                if _is_local(record.address):
                    return True
    return False


def _is_local(address: str) -> bool:
    """Whether `address` is one of this host's (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


SPF_MECHANISM = re.compile(
    r"[-+~?]?(?:all|include:\S+|exists:\S+|ptr(?::\S+)?"
    r"|(?:a|mx)(?::[^/\s]+)?(?:/\d{1,2})?(?://\d{1,3})?"
    r"|ip4:[0-9.]+(?:/\d{1,2})?|ip6:[0-9A-Fa-f:.]+(?:/\d{1,3})?)", re.I)
SPF_MODIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*=\S*")
SPF_LOOKUPS = re.compile(r"[-+~?]?(?:include|exists|ptr|a|mx)(?=$|[:/])|redirect=", re.I)


def is_spf(record: str) -> bool:
    """Whether a TXT record is an SPF record: "v=spf1" alone or before a space (§4.5)."""
    return record.lower() == "v=spf1" or record.lower().startswith("v=spf1 ")


def judge_spf(record: str, domain: str) -> Outcome:
    """One SPF record's syntax (RFC 7208 §12) and how it ends.

    >>> judge_spf("v=spf1 mx -all", "example.org").status
    'ok'
    >>> judge_spf("v=spf1 ip4:192.0.2.0/24 ~all", "example.org").status
    'warn'
    >>> print(judge_spf("v=spf1 ip4:192.0.2.300 -all", "example.org").detail)
    "v=spf1 ip4:192.0.2.300 -all" at example.org is not valid SPF at 'ip4:192.0.2.300'
    """
    terms = record.split()[1:]
    for term in terms:
        if not (SPF_MECHANISM.fullmatch(term) or SPF_MODIFIER.fullmatch(term)) \
                or not _addresses_valid(term):
            return fail(f'"{record}" at {domain} is not valid SPF at {term!r}',
                        "correct that term (RFC 7208 §5)")
    shown = f'"{record}" at {domain}'
    if sum(bool(SPF_LOOKUPS.match(term)) for term in terms) > 10:
        return fail(f"{shown} needs more than 10 DNS look-ups: a permanent error "
                    "(RFC 7208 §4.6.4)", "list addresses (ip4:, ip6:) instead of names")
    ending = next((term.lower() for term in terms if term.lower().lstrip("-+~?") == "all"),
                  "")
    redirect = any(term.lower().startswith("redirect=") for term in terms)
    stronger = "end it in -all once every host that sends as the domain is in it"
    if ending in ("all", "+all"):
        return fail(f"{shown} ends in {ending}: anyone may send as {domain}", stronger)
    if ending == "~all":
        return warn(f"{shown} ends in ~all (softfail): a receiver may still take mail "
                    "forged in the domain's name", stronger)
    if ending == "?all" or not (ending or redirect):
        return warn(f"{shown} ends {'in ?all' if ending else 'without all'} (neutral): "
                    "it says nothing of other senders", stronger)
    return ok(shown)


def _addresses_valid(term: str) -> bool:
    """An ip4: or ip6: term holds a real address or network."""
    kind, _, value = term.lstrip("-+~?").partition(":")
    if kind.lower() not in ("ip4", "ip6"):
        return True
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return network.version == (4 if kind.lower() == "ip4" else 6)


async def spf(probe: Probe) -> Outcome:
    """The SPF record of the envelope domain: NAME-bounces+TOKEN@ on the site domain."""
    domain = probe.domain
    records = [record for record in await probe.txt(domain) if is_spf(record)]
    if not records:
        return fail(f"no SPF record (TXT v=spf1) at {domain}, the envelope domain of "
                    "every message we send",
                    f'publish: {domain}. IN TXT "{suggested_spf(probe.config)}"')
    if len(records) > 1:
        return fail(f"{len(records)} SPF records at {domain}: receivers then fail SPF for "
                    "all its mail (RFC 7208 §4.5)", "merge them into one v=spf1 record")
    verdict = judge_spf(records[0], domain)
    address, whose = await probe.sender()
    if verdict.status == "fail" or address is None:
        return verdict
    try:
        result = await spf_result(probe, domain, address, [0])
    except SpfUnfollowable as trouble:
        if trouble.permanent:
            return fail(f'"{records[0]}" at {domain}: {trouble}',
                        "list addresses (ip4:, ip6:) instead of names")
        return Outcome(verdict.status, f"{verdict.detail}; whether it allows {address} "
                       f"cannot be told ({trouble})", verdict.fix)
    if result != "pass":
        return fail(f'"{records[0]}" at {domain} gives {address} ({whose}) "{result}", '
                    'not "pass": Gmail and Yahoo see mail from there fail SPF',
                    f"add ip{ipaddress.ip_address(address).version}:{address} to it")
    return Outcome(verdict.status, f"{verdict.detail}; it allows {address} ({whose})",
                   verdict.fix)


class SpfUnfollowable(Exception):
    """An SPF record this check cannot follow to its end: a macro, ptr, or too many
    look-ups (`permanent`: a receiver cannot either, RFC 7208 §4.6.4)."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
HOST_MECHANISM = re.compile(r"(a|mx)(?::([^/]+))?(?:/(\d+))?(?://(\d+))?", re.I)


async def spf_result(probe: Probe, domain: str, address: str, lookups: list[int]) -> str:
    """What `address` sending as `domain` gets from its SPF record (RFC 7208 §4.6): pass,
    fail, softfail, neutral, none or permerror. `lookups` counts the DNS look-ups."""
    records = [record for record in await probe.txt(domain) if is_spf(record)]
    if len(records) != 1:
        return "permerror" if records else "none"
    redirect = ""
    for term in records[0].split()[1:]:
        if term.lower().startswith("redirect="):
            redirect = term.partition("=")[2]
        elif not SPF_MODIFIER.fullmatch(term):
            qualifier = term[0] if term[0] in QUALIFIERS else "+"
            if await _spf_matches(probe, term.lstrip("+-~?"), domain, address, lookups):
                return QUALIFIERS[qualifier]
    if redirect:
        _spf_lookup(lookups)
        return await spf_result(probe, redirect, address, lookups)
    return "neutral"


def _spf_lookup(lookups: list[int]) -> None:
    lookups[0] += 1
    if lookups[0] > 10:
        raise SpfUnfollowable("more than 10 DNS look-ups with its includes: a permanent "
                              "error (RFC 7208 §4.6.4)", permanent=True)


async def _spf_matches(probe: Probe, mechanism: str, domain: str, address: str,
                       lookups: list[int]) -> bool:
    """Whether one mechanism (its qualifier taken off) matches `address` (RFC 7208 §5)."""
    if "%" in mechanism:
        raise SpfUnfollowable(f"{mechanism} has a macro")
    kind, _, value = mechanism.partition(":")
    kind = kind.lower()
    ip = ipaddress.ip_address(address)
    if kind == "all":
        return True
    if kind in ("ip4", "ip6"):
        network = ipaddress.ip_network(value, strict=False)
        return network.version == ip.version and ip in network
    if kind in ("include", "exists"):
        _spf_lookup(lookups)
        if kind == "exists":
            return bool(await probe.lookup(value, "A"))
        return await spf_result(probe, value, address, lookups) == "pass"
    host = HOST_MECHANISM.fullmatch(mechanism)
    if host is None:
        raise SpfUnfollowable(f"{mechanism} is not followed here")
    _spf_lookup(lookups)
    target = host[2] or domain
    names = [target] if host[1].lower() == "a" else [
        str(record.exchange).rstrip(".") for record in await probe.lookup(target, "MX")]
    prefix = host[3] if ip.version == 4 else host[4]
    for name in names:
        for record in await probe.lookup(name, "A" if ip.version == 4 else "AAAA"):
            network = ipaddress.ip_network(f"{record.address}/{prefix or ip.max_prefixlen}",
                                           strict=False)
            if ip in network:
                return True
    return False


def suggested_spf(config: Config) -> str:
    """An SPF record naming the smarthost, or the MX host when mail leaves from here."""
    if config.outbound.url.startswith("maildir:"):
        return "v=spf1 mx -all"
    host = parse_smarthost(config.outbound.url).host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "v=spf1 mx -all" if host == "localhost" else f"v=spf1 a:{host} -all"
    if not address.is_global:
        return "v=spf1 mx -all"
    return f"v=spf1 ip{address.version}:{address} -all"


def dkim_tags(record: str) -> dict[str, str]:
    """The tags of a DKIM key record (RFC 6376 §3.6.1), spaces removed from values.

    >>> dkim_tags("v=DKIM1; k=rsa; p=MIIB IjAN")
    {'v': 'DKIM1', 'k': 'rsa', 'p': 'MIIBIjAN'}
    """
    tags = {}
    for part in record.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags[name.strip().lower()] = re.sub(r"\s", "", value)
    return tags


async def dkim(probe: Probe) -> Outcome:
    """The RSA key of [dkim] selector, published at SELECTOR._domainkey.DOMAIN."""
    if not probe.config.dkim.selector:
        return fail("DKIM is off: Gmail and Yahoo require it of bulk senders",
                    "run `alliance dkim keygen`, publish the record it prints, then set "
                    '[dkim] selector = "THE SELECTOR" and restart')
    try:
        signer = domainkeys.signer(probe.config)
    except ConfigError as error:
        return fail(f"the signing key cannot be used: {error}", "correct that key")
    assert signer is not None
    return await _published(probe, signer.keys[0])


async def dkim_ed25519(probe: Probe) -> Outcome | None:
    """The Ed25519 key of [dkim] ed25519_selector, when one is set (RFC 8463)."""
    if not probe.config.dkim.ed25519_selector:
        return None
    try:
        signer = domainkeys.signer(probe.config)
    except ConfigError as error:
        return fail(f"the signing key cannot be used: {error}", "correct that key")
    assert signer is not None
    return await _published(probe, signer.keys[-1])


async def _published(probe: Probe, key: domainkeys.DkimKey) -> Outcome:
    """Whether the key's TXT record is in DNS, holding this very public key."""
    name = f"{key.selector}._domainkey.{key.domain}"
    fix = f"publish: {key.record()}"
    records = await probe.txt(name)
    if not records:
        return fail(f"no TXT record at {name}: every signature fails to verify", fix)
    if len(records) > 1:
        return fail(f"{len(records)} TXT records at {name}: verifiers need exactly one", fix)
    tags = dkim_tags(records[0])
    kind = "ed25519" if key.algorithm.startswith("ed25519") else "rsa"
    if not tags.get("p"):
        return fail(f"the record at {name} has an empty p=: the key is revoked "
                    "(RFC 6376 §3.6.1)", fix)
    if tags.get("p") != domainkeys.public_key_text(key.private) or \
            tags.get("k", "rsa").lower() != kind:
        return fail(f"the record at {name} holds another key than ours: every signature "
                    "fails to verify", f"{fix} (or set the selector of the published key)")
    return ok(f"{name} publishes our {kind} key (d={key.domain}, s={key.selector})")


@dataclass(frozen=True)
class DmarcRecord:
    """The DMARC record that applies to the site domain, and where it was found."""

    name: str
    text: str
    tags: dict[str, str]
    inherited: bool        # found at the organisational domain: its sp= applies

    @property
    def policy(self) -> str:
        return (self.tags.get("sp") if self.inherited else None) or self.tags.get("p", "")


def dmarc_tags(record: str) -> dict[str, str] | None:
    """The tags of a DMARC record (RFC 7489 §6.4), None for a TXT record that is none.

    >>> dmarc_tags("v=DMARC1; p=Reject; rua=mailto:d@example.org")
    {'v': 'DMARC1', 'p': 'reject', 'rua': 'mailto:d@example.org'}
    """
    tags = {}
    for part in record.split(";"):
        name, _, value = part.partition("=")
        tags[name.strip().lower()] = value.strip()
    if tags.get("v") != "DMARC1":
        return None
    for name in ("p", "sp", "adkim", "aspf"):
        if name in tags:
            tags[name] = tags[name].lower()
    return tags


async def dmarc_record(probe: Probe) -> DmarcRecord | Outcome:
    """The record at _dmarc.DOMAIN, else at the organisational domain (RFC 7489 §6.6.3)."""
    domain = probe.domain
    organisational = probe.organisational(domain)
    names = [(f"_dmarc.{domain}", False)]
    if organisational != domain:
        names.append((f"_dmarc.{organisational}", True))
    for name, inherited in names:
        found = [(text, tags) for text in await probe.txt(name)
                 if (tags := dmarc_tags(text)) is not None]
        if len(found) > 1:
            return fail(f"{len(found)} DMARC records at {name}: receivers then apply none "
                        "(RFC 7489 §6.6.3)", "keep one")
        if found:
            return DmarcRecord(name, found[0][0], found[0][1], inherited)
    report = probe.config.site.admin or f"postmaster@{domain}"
    asked = " nor at ".join(name for name, _ in names)
    return fail(f"no DMARC record at {asked}: Gmail and Yahoo require one of bulk senders",
                f'publish: _dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:{report}"')


async def dmarc(probe: Probe) -> Outcome:
    """The DMARC policy for the site domain: present, p= valid; p=none said to be weak."""
    found = await probe.once("dmarc", lambda: dmarc_record(probe))
    if isinstance(found, Outcome):
        return found
    shown = f'"{found.text}" at {found.name}'
    policy = found.policy
    if policy not in ("none", "quarantine", "reject"):
        return fail(f"{shown} has no valid p= (RFC 7489 §6.3)",
                    "set p=none, p=quarantine or p=reject")
    if policy == "none":
        return warn(f"{shown}: p=none meets Gmail's and Yahoo's minimum for bulk senders, "
                    "but asks receivers to do nothing with mail forged in the domain's name",
                    "once its reports (rua=) show all your mail passing, publish "
                    "p=quarantine")
    return ok(f"{shown}: {'sp' if found.inherited and 'sp' in found.tags else 'p'}={policy}")


async def alignment(probe: Probe) -> Outcome:
    """Our From domain against DKIM's d= and the envelope's domain (RFC 7489 §3.1)."""
    domain = probe.domain
    found = await probe.once("dmarc", lambda: dmarc_record(probe))
    tags = found.tags if isinstance(found, DmarcRecord) else {}
    modes = {"dkim": tags.get("adkim", "r"), "spf": tags.get("aspf", "r")}
    signing = (probe.config.dkim.domain or domain).lower() if probe.config.dkim.selector \
        else ""

    def aligned(other: str, mode: str) -> bool:
        if mode == "s":
            return other == domain
        return probe.organisational(other) == probe.organisational(domain)

    words = {"r": "relaxed", "s": "strict"}
    seen = f"From {domain}, DKIM d={signing or '(off)'}, envelope {domain}"
    if not signing:
        return warn(f"{seen}: aligned through SPF alone, which forwarding breaks",
                    "turn DKIM on (see DKIM)")
    if not aligned(signing, modes["dkim"]):
        return warn(f"{seen}: d= is not aligned ({words.get(modes['dkim'], 'relaxed')}), "
                    "only SPF is, which forwarding breaks",
                    f'[dkim] domain = "{domain}" (or leave it empty)')
    return ok(f"{seen}: aligned (DKIM {words.get(modes['dkim'], 'relaxed')}, SPF "
              f"{words.get(modes['spf'], 'relaxed')}; envelope and From are one domain)")


# -- what Gmail and Yahoo ask of bulk senders -----------------------------------------

async def bulk_authentication(probe: Probe) -> Outcome:
    """SPF, DKIM and DMARC, all three (the lines above say what is wrong with each)."""
    outcomes = {"SPF": await spf(probe), "DKIM": await dkim(probe), "DMARC": await dmarc(probe)}
    wrong = [name for name, outcome in outcomes.items() if outcome.status == "fail"]
    if wrong:
        return fail(f"{', '.join(wrong)} missing or wrong: Gmail and Yahoo refuse or "
                    "junk bulk mail without all three", "see the lines above")
    return ok("SPF, DKIM and DMARC published")


async def one_click(probe: Probe) -> Outcome:
    """RFC 8058 one-click unsubscribe: every list copy carries it when the HTTP listener is
    on; the URL must be HTTPS (§3.1) and reachable from outside."""
    base = probe.config.base_url
    https = '[http] base_url = "https://HOST" (a proxy with a certificate in front)'
    if not base:
        return fail("the HTTP listener is off ([http] listen is empty): list mail carries "
                    "no one-click List-Unsubscribe", f"set [http] listen, and {https}")
    parts = urlsplit(base)
    if parts.scheme != "https":
        return fail(f"http.base_url is {base}: RFC 8058 one-click unsubscribe needs an "
                    "HTTPS URL", https)
    host = parts.hostname or ""
    if host == "localhost" or _is_loopback(host) or host.endswith(".localhost"):
        return fail(f"http.base_url is {base}: not reachable from other hosts", https)
    return ok(f"every list copy carries List-Unsubscribe <{base}/...> and "
              "List-Unsubscribe-Post: List-Unsubscribe=One-Click")


async def bulk_tls(probe: Probe) -> Outcome:
    """TLS on the way out: to the smarthost, which must use it onward too."""
    if probe.config.outbound.url.startswith("maildir:"):
        return warn("mail is not sent (outbound.url is maildir:)", MAILDIR_FIX)
    session = await probe.hop()
    if session.problem:
        return fail("cannot tell: the session with the smarthost failed (see smarthost)",
                    session.fix)
    hop = parse_smarthost(probe.config.outbound.url)
    if session.tls:
        required = hop.implicit_tls or hop.require_starttls
        return ok(f"{session.tls} to {session.name}" + (
            "" if required else "; opportunistic (?starttls=required refuses clear)"))
    if session.loopback:
        return warn(f"in clear to {session.name}, on this machine",
                    "make sure that smarthost uses TLS onward (Postfix: "
                    "smtp_tls_security_level = may)")
    return fail(f"{session.name} offers no STARTTLS: mail goes to it in clear",
                "turn TLS on at the smarthost, and use smtp://HOST:587?starttls=required or "
                "smtps://HOST:465")


async def reverse_dns(probe: Probe) -> Outcome:
    """Forward-confirmed reverse DNS (FCrDNS) of the address mail leaves from."""
    address, whose = await probe.sender()
    if address is None:
        return warn(f"cannot tell the address mail leaves from ({whose})",
                    "see that the PTR record of that address names a host whose A (or AAAA) "
                    "record is that address")
    reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
    names = [str(record.target).rstrip(".") for record in await probe.lookup(reverse, "PTR")]
    here = f"mail.{probe.domain}"
    if not names:
        return fail(f"{address} ({whose}) has no PTR record", f"ask the address's provider "
                    f"for {reverse}. IN PTR {here}. and publish {here}. IN A {address}")
    rdtype = "AAAA" if ":" in address else "A"
    for name in names:
        forward = {record.address for record in await probe.lookup(name, rdtype)}
        if address in forward:
            return ok(f"{address} ({whose}) -> {name} -> {address}")
    return fail(f"{address} ({whose}) -> {names[0]}, which does not resolve back to "
                f"{address}", f"publish: {names[0]}. IN {rdtype} {address}")


async def sending_address(probe: Probe) -> tuple[str | None, str]:
    """The public address mail leaves from, and whose it is; None when it cannot be told
    (a smarthost on this machine or a private network, and this host behind NAT)."""
    url = probe.config.outbound.url
    if not url.startswith("maildir:"):
        host = parse_smarthost(url).host
        for found in await in_thread(_addresses, host):
            if ipaddress.ip_address(found).is_global:
                return found, f"the smarthost {host}"
    address = probe.sending_address()
    if address is None:
        return None, "this host's own address is private: mail leaves through NAT or the " \
                     "smarthost's network"
    return address, "this host"


def _addresses(host: str) -> list[str]:
    """The addresses of `host` as the system resolves it (as the connection does)."""
    try:
        found = socket.getaddrinfo(host, 25, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [str(entry[4][0]) for entry in found]


CHECKS: tuple[tuple[str, Check], ...] = (
    ("config", configuration),
    ("database", database),
    ("smarthost", smarthost),
    ("MX", mx),
    ("SPF", spf),
    ("DKIM", dkim),
    ("DKIM ed25519", dkim_ed25519),
    ("DMARC", dmarc),
    ("alignment", alignment),
    ("bulk senders: SPF+DKIM+DMARC", bulk_authentication),
    ("bulk senders: one-click unsubscribe", one_click),
    ("bulk senders: TLS", bulk_tls),
    ("bulk senders: reverse DNS", reverse_dns),
)
