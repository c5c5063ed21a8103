"""DMARC: find the poster's domain policy, and rewrite From when that policy would bounce.

A list changes the posts it relays (List-* fields, subject prefix, footer), so the
poster's DKIM signature no longer verifies, and the list's server is not in the poster's
SPF record. A receiver that checks DMARC then sees a From domain whose mail fails
authentication, and a domain that publishes `p=reject` or `p=quarantine` asks it to bounce
or bin the copy (RFC 7489 §6.3, §10.1; RFC 7960 §3.2.3). The remedy that mail clients
handle best is the one Mailman and Google Groups use: the list sends the copy From its
own address, with the poster's name kept in the display name and the poster's address
in Reply-To or Cc (RFC 7960 §4.1.3).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.policy import default as default_policy
from email.utils import getaddresses

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
from publicsuffixlist import PublicSuffixList

from mailer import rawmail
from mailer.config import ConfigError, parse_listen

log = logging.getLogger(__name__)

POLICIES = ("none", "quarantine", "reject")

# A failed lookup is tried again sooner than an answer is, so a DNS outage delays each
# post by at most one timeout a minute per domain, and the outage is soon forgotten.
FAILURE_SECONDS = 60.0
CACHE_ENTRIES = 10_000
# Names past this length are cut: a From field must stay under 998 octets (RFC 5322 §2.1.1).
MAX_NAME = 100

Records = tuple[str, ...]


def needs_munging(mode: str, policy: str | None) -> bool:
    """Whether the list copy goes out From the list (mode `always`, `dmarc-policy`, `never`).

    >>> needs_munging("dmarc-policy", "quarantine"), needs_munging("dmarc-policy", "none")
    (True, False)
    >>> needs_munging("always", None), needs_munging("never", "reject")
    (True, False)
    """
    if mode == "always":
        return True
    if mode == "never":
        return False
    return policy in ("reject", "quarantine")


# -- the policy of a domain --------------------------------------------------------------

def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None if it is not one (RFC 7489 §6.3, §6.4).

    The record must start with `v=DMARC1` exactly; tag names are case-insensitive.

    >>> parse_record("v=DMARC1; p=Reject; sp=none; rua=mailto:d@example.org")["p"]
    'reject'
    >>> parse_record("v=spf1 -all") is None
    True
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    first = text.split(";", 1)[0].partition("=")
    if first[0].strip() != "v" or first[2].strip() != "DMARC1":
        return None
    for key in ("p", "sp"):
        if key in tags:
            tags[key] = tags[key].lower()
    return tags


def policy_of(records: Records, subdomain: bool) -> str | None:
    """The requested policy: `sp=` for a subdomain when given, else `p=` (RFC 7489 §6.3).

    More than one DMARC record means no policy at all (RFC 7489 §6.6.3 step 5).

    >>> policy_of(("v=DMARC1; p=reject; sp=none",), subdomain=True)
    'none'
    >>> policy_of(("v=DMARC1; p=quarantine",), subdomain=True)
    'quarantine'
    >>> policy_of(("v=DMARC1; p=reject", "v=DMARC1; p=none"), subdomain=False) is None
    True
    """
    parsed = [tags for tags in map(parse_record, records) if tags is not None]
    if len(parsed) != 1:
        return None
    tags = parsed[0]
    if subdomain and tags.get("sp") in POLICIES:
        return tags["sp"]
    return tags.get("p") if tags.get("p") in POLICIES else None


def nameserver_address(nameserver: str) -> tuple[str, int]:
    """The IP address and port of `dns.nameserver` ("host", "host:port", "[v6]:port").

    >>> nameserver_address("127.0.0.1:5353"), nameserver_address("::1")
    (('127.0.0.1', 5353), ('::1', 53))
    """
    if nameserver.startswith("[") or nameserver.count(":") == 1:
        host, port = parse_listen(nameserver, "dns.nameserver")
    else:
        host, port = nameserver, 53
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]), port
    except OSError as error:
        raise ConfigError(f"dns.nameserver: cannot resolve {host!r} ({error})") from None


class DmarcLookup:
    """Finds a domain's DMARC policy over DNS, remembering answers for `cache_seconds`.

    `nameserver` is "" for the system's resolver, or "host[:port]". Lookups never raise:
    a DNS failure is logged and answers None, and the post goes on unchanged.
    """

    def __init__(self, nameserver: str, timeout: float, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic, *,
                 cache_entries: int = CACHE_ENTRIES) -> None:
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.cache_entries = cache_entries
        self.clock = clock
        self.server = nameserver_address(nameserver) if nameserver else None
        self.suffixes = PublicSuffixList()
        self.cache: OrderedDict[str, tuple[float, Records | None]] = OrderedDict()
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def policy(self, domain: str) -> str | None:
        """"reject", "quarantine", "none", or None: no record, or no answer (RFC 7489 §6.6.3).

        `_dmarc.<domain>` is asked first; without a record there, the organisational
        domain (the registrable domain by the Public Suffix List, RFC 7489 §3.2) is asked,
        and its `sp=` applies to its subdomains.
        """
        try:
            name = dns.name.from_text(domain.strip().rstrip(".")).to_text(omit_final_dot=True)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return None
        name = name.lower()
        records = await self._records(name)
        if records is None:
            return None
        if any(parse_record(record) is not None for record in records):
            return policy_of(records, subdomain=False)
        organisational = self.suffixes.privatesuffix(name)
        if organisational is None or organisational == name:
            return None
        records = await self._records(organisational)
        return None if records is None else policy_of(records, subdomain=True)

    async def _records(self, domain: str) -> Records | None:
        """The TXT strings at `_dmarc.<domain>`, () when there are none, None on failure."""
        now = self.clock()
        cached = self.cache.get(domain)
        if cached is not None and cached[0] > now:
            self.cache.move_to_end(domain)
            return cached[1]
        records = await self._query(domain)
        lasting = self.cache_seconds if records is not None else min(FAILURE_SECONDS,
                                                                      self.cache_seconds)
        self.cache[domain] = (now + lasting, records)
        self.cache.move_to_end(domain)
        while len(self.cache) > self.cache_entries:
            self.cache.popitem(last=False)
        return records

    async def _query(self, domain: str) -> Records | None:
        try:
            answer = await self.resolver().resolve(f"_dmarc.{domain}", "TXT",
                                                   lifetime=self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except Exception as error:  # a lookup must never lose the post (issue 4)
            log.warning("DMARC lookup for %s failed: %s", domain, error or type(error).__name__)
            return None
        return tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer)

    def resolver(self) -> dns.asyncresolver.Resolver:
        """The resolver, made on first use (reading resolv.conf for the system's)."""
        if self._resolver is None:
            if self.server is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [self.server[0]]
                resolver.port = self.server[1]
            resolver.timeout = resolver.lifetime = self.timeout
            resolver.cache = None
            self._resolver = resolver
        return self._resolver


# -- the list copy From the list ------------------------------------------------------

def _decoded(name: str) -> str:
    """A display name with its RFC 2047 words decoded; as written if they are broken.

    Adjacent encoded-words join without the space between them (RFC 2047 §6.2), which
    `email.headerregistry`'s address parser gets wrong, so names are decoded here.

    >>> _decoded("=?utf-8?q?Jos=C3=A9?= =?utf-8?q?_M=C3=BCller?=")
    'José Müller'
    """
    try:
        return str(make_header(decode_header(name)))
    except (LookupError, UnicodeError, ValueError, HeaderParseError):
        return name


def mailboxes(data: bytes, field: str) -> list[tuple[str, str]]:
    """(display name, address) of every address in the `field` fields, in order.

    Entries without an '@' (groups, garbage) are skipped; raw UTF-8 is read as RFC 6532.

    >>> mailboxes(b"From: =?utf-8?q?M=C3=BCller=2C_Hans?= <h@example.org>\\r\\n\\r\\n", "from")
    [('Müller, Hans', 'h@example.org')]
    """
    fields, _ = rawmail.split(data)
    values = [f.split(b":", 1)[1].decode("utf-8", "replace").replace("\r\n", "")
              for f in fields if rawmail.name_of(f) == field.lower() and b":" in f]
    return [(_decoded(name), address) for name, address in getaddresses(values)
            if "@" in address]


def from_domain(data: bytes) -> str | None:
    """The domain of the first From address: the one DMARC judges (RFC 7489 §3.1)."""
    for _, address in mailboxes(data, "from"):
        return address.rpartition("@")[2] or None
    return None


def _clean(text: str) -> str:
    """A name with control characters (CR, LF) turned to spaces and runs of space closed."""
    return " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())


def poster_name(name: str, address: str) -> str:
    """What the poster is called: the display name, else the local part.

    A name that looks like an address keeps only its local part, since a second domain in
    From is what spoofed mail looks like (Mailman does the same).

    >>> poster_name("Jane", "jane@example.org"), poster_name("", "jane@example.org")
    ('Jane', 'jane')
    >>> poster_name("jane@example.org", "jane@example.org")
    'jane'
    """
    shown = _clean(name) or address.rpartition("@")[0]
    return (shown.split("@", 1)[0].strip() if "@" in shown else shown)[:MAX_NAME]


def mailbox(name: str, addr_spec: str) -> str:
    """One address on one line: an ASCII name quoted, any other in RFC 2047 words.

    >>> mailbox('Ana "Lula" Silva', "ana@example.org")
    '"Ana \\\\"Lula\\\\" Silva" <ana@example.org>'
    >>> mailbox("Zoë via Board", "board@example.org")
    '=?utf-8?q?Zo=C3=AB?= via Board <board@example.org>'
    """
    name = _clean(name)
    if not name:
        return addr_spec
    if name.isascii():
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{addr_spec}>'
    # The email package encodes only the words that need it, keeps each encoded-word
    # within 75 characters (RFC 2047 §2) and folds; unfolding is removing the line breaks
    # (RFC 5322 §2.2.3). An address that is itself UTF-8 needs an SMTPUTF8 header.
    policy = default_policy.clone(utf8=not addr_spec.isascii())
    try:
        field = policy.header_factory("To", Address(name, addr_spec=addr_spec))
        return field.fold(policy=policy).split(":", 1)[1].replace("\n", "").strip()
    except Exception:  # an address the email package cannot redo keeps going without name
        return addr_spec


def munge_from(data: bytes, *, list_address: str, list_name: str, poster_in: str) -> bytes:
    """The copy From `"Poster via List" <list address>`, the poster in Reply-To or Cc.

    RFC 7960 §4.1.3, as Mailman 3 does it: an existing Reply-To (or Cc) keeps its
    addresses and gains the poster's unless already there. Nothing else changes.

    DKIM-Signature fields stay, as in Mailman (whose `remove_dkim_headers` is off by
    default): once From is the list's, the poster's signature no longer counts towards
    DMARC either way (RFC 7489 §3.1.1), a broken signature is treated as no signature
    (RFC 6376 §6.1), and an intact one still tells receivers where the text came from.
    """
    posters = mailboxes(data, "from")
    if not posters:
        return data
    field = "Cc" if poster_in == "cc" else "Reply-To"
    kept = mailboxes(data, field)
    known = {address.lower() for _, address in kept}
    for name, address in posters:
        if address.lower() not in known:
            kept.append((name, address))
            known.add(address.lower())
    via = f"{poster_name(*posters[0])} via {_clean(list_name)[:MAX_NAME]}"
    return rawmail.rewrite(data, {"from", field.lower()}, [
        ("From", mailbox(via, list_address)),
        (field, ", ".join(mailbox(name[:MAX_NAME], address) for name, address in kept)),
    ])
