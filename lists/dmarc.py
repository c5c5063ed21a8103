"""DMARC: the poster's domain policy, and From rewritten when that policy would bounce.

A list changes the posts it relays (List-* fields, subject prefix, footer), so the
poster's DKIM signature no longer verifies, and the list's server is not in the poster's
SPF record. A receiver that checks DMARC then sees a From domain whose mail fails
authentication, and a domain that publishes `p=reject` or `p=quarantine` asks it to bounce
or bin the copy (RFC 7489 §6.3, §10.1; RFC 7960 §3.2.3). The remedy that mail clients
handle best is the one Mailman and Google Groups use: the list sends the copy From its
own address, with the poster's name kept in the display name and the poster's address
in Reply-To or Cc (RFC 7960 §4.1.3).

The rules are here; the DNS look-ups they need are asked through `TxtLookup`, which the
composition root implements (mailer.dns): this package never opens a socket.
"""

from __future__ import annotations

import logging
import re
from email.errors import CharsetError, HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.policy import default as default_policy
from email.utils import getaddresses
from typing import Protocol

import idna
from publicsuffixlist import PublicSuffixList

from mailer import rawmail

log = logging.getLogger(__name__)

POLICIES = ("none", "quarantine", "reject")

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


class TxtLookup(Protocol):
    """DNS as this module needs it (the composition root hands in mailer.dns.TxtResolver)."""

    async def txt(self, name: str) -> Records | None:
        """The TXT strings at `name`: () when there are none, None when DNS failed."""
        ...


def dns_name(domain: str) -> str | None:
    """A domain as DNS is asked for it: lower-case A-labels, no final dot; None if it
    cannot be a domain name (RFC 1035 §2.3.4, IDNA 2008 for Unicode labels).

    >>> dns_name("STRICT.example."), dns_name("bücher.example"), dns_name("a..b")
    ('strict.example', 'xn--bcher-kva.example', None)
    """
    labels = []
    for label in domain.strip().rstrip(".").split("."):
        try:
            ascii_label = label if label.isascii() else idna.encode(
                label, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
        if not 0 < len(ascii_label) <= 63:
            return None
        labels.append(ascii_label.lower())
    name = ".".join(labels)
    return name if len(name) <= 253 else None


class DmarcLookup:
    """Finds a domain's DMARC policy (RFC 7489 §6.6.3) from the TXT records `dns` gives.

    Lookups never raise: a DNS failure answers None, and the post goes on unchanged.
    """

    def __init__(self, dns: TxtLookup) -> None:
        self.dns = dns
        self.suffixes = PublicSuffixList()

    async def policy(self, domain: str) -> str | None:
        """"reject", "quarantine", "none", or None: no record, or no answer (RFC 7489 §6.6.3).

        `_dmarc.<domain>` is asked first; without a record there, the organisational
        domain (the registrable domain by the Public Suffix List, RFC 7489 §3.2) is asked,
        and its `sp=` applies to its subdomains.
        """
        name = dns_name(domain)
        if name is None:
            return None
        records = await self.dns.txt(f"_dmarc.{name}")
        if records is None:
            return None
        if any(parse_record(record) is not None for record in records):
            return policy_of(records, subdomain=False)
        organisational = self.suffixes.privatesuffix(name)
        if organisational is None or organisational == name:
            return None
        records = await self.dns.txt(f"_dmarc.{organisational}")
        return None if records is None else policy_of(records, subdomain=True)


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
    except (LookupError, UnicodeError, ValueError, HeaderParseError, CharsetError):
        return name     # CharsetError: a charset name the library refuses ("\x80tf-8")


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
        return str(field.fold(policy=policy)).split(":", 1)[1].replace("\n", "").strip()
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
