"""Configuration: `config.toml` loaded into frozen dataclasses.

Every key has a default and a help line (the README's table is made from the same help).
An unknown key or a value of the wrong type stops start-up with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class ConfigError(Exception):
    """A configuration problem, described in one line that names the key."""


def _key(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SiteSection:
    domain: str = _key("lists.example.org", "domain of every list and role address")
    name: str = _key("Progressive Alliance", "the network's name, shown in robot mail")
    secret: str = _key(
        "", "key for signed tokens (VERP, RSVP); empty: one is made and kept in the database"
    )
    admin: str = _key(
        "", "the site contact: postmaster@ and abuse@ reach this address, and so does mail "
        "with no other person (coordination@ before a contact, owner mail of a list with no "
        "owner, and its moderators' notices); empty: serve on a terminal asks; otherwise such "
        "mail waits in the quarantine, and serve warns at start")


@dataclass(frozen=True)
class DatabaseSection:
    url: str = _key(
        "sqlite:///var/alliance.sqlite3",
        "SQLAlchemy URL: sqlite:///relative/or/absolute/path or postgresql://user@host/db",
    )
    migrate: str = _key(
        "auto", 'auto: serve brings the schema to the code\'s newest at start; manual: serve '
        'refuses a database behind it, and "alliance db upgrade" migrates (after a backup)')


@dataclass(frozen=True)
class SmtpSection:
    listen: str = _key("127.0.0.1:8025", 'SMTP listener, host:port; "" turns it off')
    tls_cert: str = _key(
        "", "PEM certificate (with its chain) the SMTP listener offers STARTTLS with "
        "(RFC 3207); empty: no STARTTLS")
    tls_key: str = _key("", "PEM private key of tls_cert; empty: the key is in the tls_cert file")
    require_tls: bool = _key(
        False, "refuse mail (530) until the client has done STARTTLS; off, STARTTLS is "
        "offered and optional, as an MX must (RFC 3207 §4)")


@dataclass(frozen=True)
class LmtpSection:
    listen: str = _key("127.0.0.1:8024", 'LMTP listener for an MTA in front; "" turns it off')


@dataclass(frozen=True)
class IntakeSection:
    max_message_size: int = _key(10_485_760, "largest message accepted, bytes (552 above)")
    max_recipients: int = _key(100, "recipients per transaction (452 above)")
    max_line_length: int = _key(1000, "longest line, bytes with CRLF (RFC 5321 4.5.3.1.6)")
    timeout: float = _key(300.0, "seconds a client may stay silent before it is dropped")
    hostname: str = _key("", "name in the greeting; empty: site.domain")
    max_header_size: int = _key(102_400, "bytes in one header block (552 above)")
    max_header_count: int = _key(1000, "fields in one header block (552 above)")
    max_mime_depth: int = _key(20, "MIME parts nested in one another (554 above)")
    max_mime_parts: int = _key(500, "MIME parts in one message (554 above)")
    max_encoded_words: int = _key(
        500, "RFC 2047 encoded words and RFC 2231 segments in one header field (554 above)")
    max_connections: int = _key(1000, "SMTP and LMTP sessions at once (421 above)")
    max_connections_per_client: int = _key(
        50, "SMTP sessions at once from one client address (421 above; not for LMTP)")
    session_deadline: float = _key(
        600.0, "seconds a session may go without completing a message before it is closed")
    max_errors: int = _key(20, "refused commands and recipients before a session is closed")
    backlog: int = _key(1024, "connections the kernel queues for the listeners")


@dataclass(frozen=True)
class OutboundSection:
    url: str = _key(
        "maildir:var/outbox", "maildir:PATH, or a smarthost: smtp://host:port (STARTTLS when "
        "offered), smtp://host:port?starttls=required (never in clear), smtps://host:port "
        "(TLS from the first byte)")
    tls_ca_file: str = _key(
        "", "PEM CA certificates the smarthost's certificate is checked against; empty: the "
        "system's")
    tls_verify: bool = _key(
        True, "check the smarthost's certificate and name; false: encrypt without checking "
        "(a local Postfix with a self-signed certificate)")
    auth_file: str = _key(
        "", "file holding user:password for AUTH at the smarthost, readable by its owner "
        "only; empty: $ALLIANCE_SMARTHOST_USER and $ALLIANCE_SMARTHOST_PASSWORD, or no AUTH")
    connections: int = _key(24, "concurrent SMTP connections to the smarthost")
    connections_during_intake: int = _key(
        2, "of those, how many send while messages are arriving (intake goes first: "
        "the 250s stay quick while a large fan-out runs)")
    timeout: float = _key(60.0, "seconds to wait for the smarthost at each step")
    retry_initial: float = _key(60.0, "seconds before the first retry after a 4xx")
    retry_max: float = _key(3600.0, "longest wait between two retries, seconds")
    lifetime: float = _key(432_000.0, "seconds a delivery is retried before it fails (5 days)")
    lease: float = _key(300.0, "seconds a delivery being sent is reserved to one daemon")


@dataclass(frozen=True)
class HttpSection:
    listen: str = _key("127.0.0.1:8080", "HTTP listener for pages and one-click unsubscribe")
    base_url: str = _key("http://127.0.0.1:8080", "public URL of that listener")
    metrics_allow: tuple[str, ...] = _key(
        ("127.0.0.1/32", "::1/128"), "networks whose clients may read /metrics (others get "
        "404), such as [\"10.0.0.0/8\"]; a request a proxy forwarded (Forwarded, "
        "X-Forwarded-For or X-Real-IP) is never let in")


@dataclass(frozen=True)
class HealthSection:
    max_delivery_age: float = _key(
        3600.0, "seconds the oldest pending delivery may wait before /healthz answers 503")
    max_work_age: float = _key(
        600.0, "seconds a received message may wait to be handled before /healthz answers 503")


@dataclass(frozen=True)
class ListsSection:
    confirmations_per_address: int = _key(3, "confirmation mails one address may get per 24 h")
    confirmations_per_source: int = _key(
        10, "confirmation mails one sender or client address may cause per 24 h")
    replies_per_address: int = _key(10, "robot replies (help, errors) one address gets per 24 h")


@dataclass(frozen=True)
class DnsSection:
    nameserver: str = _key("", "DNS server for DMARC look-ups and `alliance check`, host or "
                                 "host:port; empty: system")
    timeout: float = _key(2.0, "seconds a DNS lookup may take before the post goes on without")
    cache_seconds: float = _key(3600.0, "how long a DMARC answer is remembered")


@dataclass(frozen=True)
class MeetingsSection:
    reminder_days: tuple[int, ...] = _key(
        (14, 3), "days before a meeting when invitees who have not answered are reminded")


@dataclass(frozen=True)
class RouterSection:
    max_attempts: int = _key(3, "tries before a message that fails processing is quarantined")
    processes: int = _key(2, "worker processes that sign copies (DKIM) and read replies to "
                             "invitations and large posts beside the daemon (0: in the "
                             "daemon itself)")
    worker_memory_mb: int = _key(
        1024, "address space each worker process may use, MiB; a message that needs more "
        "fails alone (0: no limit)")
    crash_settle: float = _key(
        5.0, "seconds after a start before work that was in flight at a crash is taken "
        "again (each alone): a crash of a process just started is not the message's")


@dataclass(frozen=True)
class TemplatesSection:
    folder: str = _key("", "folder of the robot mail templates; empty: the shipped templates/")


@dataclass(frozen=True)
class DkimSection:
    selector: str = _key(
        "", "selector of the RSA key that signs every message we send (RFC 6376); empty: "
        "no DKIM signature")
    key_file: str = _key("", "PEM private key of that selector; empty: var/dkim/SELECTOR.pem")
    domain: str = _key("", "signing domain (d=), where SELECTOR._domainkey is published; "
                           "empty: site.domain")
    ed25519_selector: str = _key(
        "", "selector of an Ed25519 key that adds a second signature (RFC 8463); empty: none")
    ed25519_key_file: str = _key(
        "", "PEM private key of that selector; empty: var/dkim/ED25519_SELECTOR.pem")


@dataclass(frozen=True)
class ArcSection:
    authserv_id: str = _key(
        "", "authserv-id of the Authentication-Results our MTA in front writes (RFC 8601); "
        "posts that carry them on top get an ARC set (RFC 8617) on their list copies, "
        "when DKIM is on; empty: no ARC")
    selector: str = _key("", "selector of the RSA key that seals; empty: dkim.selector's key")
    key_file: str = _key("", "PEM private key of that selector; empty: var/dkim/SELECTOR.pem")


@dataclass(frozen=True)
class Config:
    site: SiteSection = field(default_factory=SiteSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    smtp: SmtpSection = field(default_factory=SmtpSection)
    lmtp: LmtpSection = field(default_factory=LmtpSection)
    intake: IntakeSection = field(default_factory=IntakeSection)
    outbound: OutboundSection = field(default_factory=OutboundSection)
    dkim: DkimSection = field(default_factory=DkimSection)
    arc: ArcSection = field(default_factory=ArcSection)
    http: HttpSection = field(default_factory=HttpSection)
    router: RouterSection = field(default_factory=RouterSection)
    lists: ListsSection = field(default_factory=ListsSection)
    dns: DnsSection = field(default_factory=DnsSection)
    meetings: MeetingsSection = field(default_factory=MeetingsSection)
    templates: TemplatesSection = field(default_factory=TemplatesSection)
    health: HealthSection = field(default_factory=HealthSection)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    @property
    def base_url(self) -> str:
        """The public root of our pages, with no final slash; "" with no HTTP listener."""
        return self.http.base_url.rstrip("/") if self.http.listen else ""

    @property
    def templates_folder(self) -> Path | None:
        """The folder of the templates, when the config names one (else the shipped ones)."""
        return self.path(self.templates.folder) if self.templates.folder else None

    def path(self, relative: str) -> Path:
        """A path from the config, taken relative to the config file's folder."""
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.base_dir / candidate


def sections() -> list[tuple[str, type]]:
    """The config sections, in file order, with their dataclass."""
    return [
        (f.name, f.default_factory)  # type: ignore[misc]
        for f in dataclasses.fields(Config)
        if not f.metadata.get("internal")
    ]


def _check(name: str, value: Any, expected: type) -> Any:
    if expected is list:       # a tuple[str, ...] key: a TOML list of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: expected a list of strings, such as [\"127.0.0.1/32\"]")
        return tuple(value)
    if expected is tuple:
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ConfigError(f"{name}: expected a list of whole numbers, such as [14, 3]")
        return tuple(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{name}: expected {expected.__name__}, got a boolean")
    if not isinstance(value, expected):
        raise ConfigError(f"{name}: expected {expected.__name__}, got {type(value).__name__}")
    return value


def _section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a table, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key")
        expected = {"str": str, "int": int, "float": float, "bool": bool,
                    "tuple[int, ...]": tuple,
                    "tuple[str, ...]": list}[str(known[key].type)]
        kwargs[key] = _check(f"{name}.{key}", value, expected)
    return cls(**kwargs)


def from_dict(data: dict[str, Any], base_dir: Path = Path(".")) -> Config:
    """Build a Config from parsed TOML, refusing unknown keys and wrong types."""
    known = dict(sections())
    parts = {}
    for name, values in data.items():
        if name not in known:
            raise ConfigError(f"{name}: unknown section")
        parts[name] = _section(name, known[name], values)
    config = Config(base_dir=base_dir, **parts)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    for name, value in (("smtp.listen", config.smtp.listen), ("lmtp.listen", config.lmtp.listen),
                        ("http.listen", config.http.listen)):
        if value:
            parse_listen(value, name)
    if not config.site.domain or "@" in config.site.domain:
        raise ConfigError("site.domain: expected a domain name such as lists.example.org")
    if config.outbound.connections < 1:
        raise ConfigError("outbound.connections: must be at least 1")
    if config.outbound.connections_during_intake < 1:
        raise ConfigError("outbound.connections_during_intake: must be at least 1")
    if config.intake.max_recipients < 1:
        raise ConfigError("intake.max_recipients: must be at least 1")
    if not 0 <= config.router.processes <= 64:
        raise ConfigError("router.processes: expected 0 to 64 worker processes")
    if not config.outbound.url.startswith("maildir:"):
        parse_smarthost(config.outbound.url)
    if config.smtp.tls_key and not config.smtp.tls_cert:
        raise ConfigError("smtp.tls_key: set smtp.tls_cert too (the certificate of that key)")
    if config.smtp.require_tls and not config.smtp.tls_cert:
        raise ConfigError("smtp.require_tls: set smtp.tls_cert and smtp.tls_key first")
    if config.http.base_url:
        _check_url("http.base_url", config.http.base_url, ("http", "https"),
                   "http://host[:port] or https://host")
    _check_database_url(config.database.url)
    if config.database.migrate not in ("auto", "manual"):
        raise ConfigError(f"database.migrate: expected \"auto\" or \"manual\", "
                          f"got {config.database.migrate!r}")
    for network in config.http.metrics_allow:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"http.metrics_allow: {network!r} is no network, such as "
                              "127.0.0.1/32 or 10.0.0.0/8") from None
    server = config.dns.nameserver
    if server.startswith("[") or server.count(":") == 1:
        parse_listen(server, "dns.nameserver")
    if config.site.admin:
        check_admin(config.site.admin)


DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")
_ADDRESS = re.compile(r"[^@\s<>\"\\\\]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+")


def check_admin(address: str) -> str:
    """A site contact's address, or ConfigError saying what is wrong."""
    if not _ADDRESS.fullmatch(address):
        raise ConfigError(f"site.admin: expected an address such as admin@example.org, "
                          f"got {address!r}")
    return address


def with_site_admin(text: str, address: str) -> str:
    """A config file's text with `site.admin` set: what the first run writes.

    >>> print(with_site_admin('[site]\\ndomain = "x.org"\\n', "a@x.org"), end="")
    [site]
    admin = "a@x.org"
    domain = "x.org"
    >>> print(with_site_admin('[smtp]\\nlisten = ""', "a@x.org"), end="")
    [smtp]
    listen = ""
    <BLANKLINE>
    [site]
    admin = "a@x.org"
    """
    line = f'admin = "{check_admin(address)}"\n'
    section = re.search(r"^\[site\][ \t]*(#.*)?(\n|$)", text, re.M)
    if section:
        end = section.end() if text[section.end() - 1:section.end()] == "\n" else len(text)
        head = text[:end] + ("" if text[:end].endswith("\n") else "\n")
        return head + line + text[end:]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text else "") + "[site]\n" + line


def _check_database_url(url: str) -> None:
    """A SQLite or PostgreSQL URL (whose port, if any, is a number), or ConfigError.

    >>> _check_database_url("postgres://u@h/db")
    >>> _check_database_url("mysql://u@h/db")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mailer.config.ConfigError: database.url: expected sqlite:///PATH or ..., got 'mysql://u@h/db'
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        scheme = ""
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError("database.url: expected sqlite:///PATH or postgresql://user@host/db, "
                          f"got {url!r}")


def _check_url(name: str, value: str, schemes: tuple[str, ...], example: str) -> None:
    """A URL with one of `schemes` and a host, or ConfigError naming the key.

    >>> _check_url("http.base_url", "lists.example.org", ("http",), "http://host")
    Traceback (most recent call last):
    ...
    mailer.config.ConfigError: http.base_url: expected http://host, got 'lists.example.org'
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        parts = urlsplit("")
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ConfigError(f"{name}: expected {example}, got {value!r}")


@dataclass(frozen=True)
class SmarthostUrl:
    """What `outbound.url` says of the smarthost: where, and how TLS is used."""

    host: str
    port: int
    implicit_tls: bool      # smtps://: TLS from the first byte (RFC 8314 §3.3)
    require_starttls: bool  # smtp://...?starttls=required: never send in clear


CREDENTIALS_HOME = ("put user:password in the file outbound.auth_file names (mode 600), or "
                    "set $ALLIANCE_SMARTHOST_USER and $ALLIANCE_SMARTHOST_PASSWORD")


def parse_smarthost(url: str) -> SmarthostUrl:
    """The smarthost of `outbound.url`, or ConfigError; a password in it is refused.

    >>> parse_smarthost("smtp://relay.example.org?starttls=required")
    SmarthostUrl(host='relay.example.org', port=25, implicit_tls=False, require_starttls=True)
    >>> parse_smarthost("smtps://relay.example.org").port
    465
    >>> parse_smarthost("smtp://me:secret@relay.example.org")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mailer.config.ConfigError: outbound.url: no user or password in the URL: put user:...
    """
    if "@" in url.partition("?")[0].partition("://")[2]:
        # Said before anything else, and without the value: it may hold a password.
        raise ConfigError(f"outbound.url: no user or password in the URL: {CREDENTIALS_HOME}")
    if url.partition(":")[0].lower() not in ("smtp", "smtps"):
        raise ConfigError("outbound.url: expected maildir:PATH, smtp://host:port or "
                          "smtps://host:port")
    _check_url("outbound.url", url, ("smtp", "smtps"), "smtp://host:port or smtps://host:port")
    parts = urlsplit(url)
    implicit = parts.scheme.lower() == "smtps"
    query = parse_qs(parts.query, keep_blank_values=True)
    starttls = query.pop("starttls", ["opportunistic"])
    if query or parts.path not in ("", "/") or parts.fragment or len(starttls) > 1 or (
            starttls[0] not in ("opportunistic", "required")) or (implicit and parts.query):
        raise ConfigError("outbound.url: expected smtp://host:port, optionally with "
                          f"?starttls=required, or smtps://host:port; got {url!r}")
    return SmarthostUrl(parts.hostname or "", parts.port or (465 if implicit else 25),
                        implicit, starttls[0] == "required")


def parse_listen(value: str, name: str = "listen") -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into its parts.

    >>> parse_listen("127.0.0.1:8025")
    ('127.0.0.1', 8025)
    >>> parse_listen("[::1]:0")
    ('::1', 0)
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535 or not host:
        raise ConfigError(f"{name}: expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file; a missing file at the default place means all defaults."""
    explicit = path is not None or "ALLIANCE_CONFIG" in os.environ
    chosen = Path(path or os.environ.get("ALLIANCE_CONFIG", "config.toml"))
    if not chosen.exists():
        if explicit:
            raise ConfigError(f"{chosen}: no such config file")
        return from_dict({}, Path.cwd())
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{chosen}: not valid TOML ({error})") from None
    return from_dict(data, chosen.resolve().parent)
