"""ARC (RFC 8617): a list copy carries what our MTA found when the post arrived.

A list changes the posts it relays (subject tag, footer, From for DMARC), so the poster's
DKIM signature no longer verifies at the members' providers. An ARC set lets a receiver
that trusts us see the results our MTA recorded before the change: the
ARC-Authentication-Results (AAR) copy those results, the ARC-Message-Signature (AMS)
signs the list copy as we send it, and the ARC-Seal (AS) signs the ARC sets of the chain.

What is trusted: the Authentication-Results fields (RFC 8601) at the top of a post that
came over LMTP (from the MTA in front of us, which the operator configures to remove any
with our authserv-id that arrive from outside, RFC 8601 §5), and only while they carry
our authserv-id. A post without them gets no ARC set: we would have nothing to vouch for.

One ARC set per post, not per copy: the AMS signs the fields every copy shares, so the
member's own `List-Unsubscribe` (and our per-copy DKIM-Signature, added later) are left
out of it; the body is the same for every member. Sealing is two RSA signatures a post.
The chain a post arrives with is checked once, before the post's transaction (its keys
come from DNS): cv=none, pass or fail (§5.2). The canonical forms, the body hash and the
keys are mailer.domainkeys's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailer.config import Config, ConfigError
from mailer.domainkeys import (
    SELECTOR,
    SIGNED,
    DkimKey,
    DkimSigner,
    body_hash,
    crlf,
    fold,
    header_data,
    header_fields,
    header_list,
    key_path,
    load_key,
    relaxed_header,
    split,
)

log = logging.getLogger(__name__)

MAX_SETS = 50          # RFC 8617 §4.2.1: i= runs from 1 to 50
AAR = b"arc-authentication-results"
AMS = b"arc-message-signature"
SEAL = b"arc-seal"
# The AMS signs what every copy of a post shares: DKIM's fields but the member's own
# List-Unsubscribe (RFC 8617 §4.1.2 leaves the choice to the sealer, as DKIM does).
AMS_SIGNED = tuple(name for name in SIGNED if name != "list-unsubscribe")
AMS_ALWAYS = frozenset(("from",))
_TAG = re.compile(rb"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=(.*)$", re.S)
_EMPTY_B = re.compile(rb"((?:^|;)\s*b\s*=)[^;]*")
_INSTANCE = re.compile(rb"^\s*i\s*=\s*([0-9]{1,3})\s*(?:;|$)")
_DNS_NAME = re.compile(rb"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")


class KeyLookup(Protocol):
    """DNS as the chain check needs it (mailer.dns.TxtResolver)."""

    async def txt(self, name: str) -> tuple[str, ...] | None:
        """The TXT strings at `name`: () when there are none, None when DNS failed."""
        ...


@dataclass(frozen=True)
class Assessment:
    """What the ARC set of a post will say: its instance, the chain's state as it arrived
    (cv=), and the trusted results the AAR copies (without `i=`)."""

    instance: int
    cv: str
    results: str


def field_name(field: bytes) -> bytes:
    return field.partition(b":")[0].rstrip(b" \t").lower()


def field_value(field: bytes) -> bytes:
    return field.partition(b":")[2]


def tags(value: bytes) -> dict[bytes, bytes] | None:
    """A DKIM tag list (RFC 6376 §3.2), values without white space; None if malformed.

    >>> tags(b" i=1; a=rsa-sha256;\\r\\n\\tb=ab\\r\\n cd; ")
    {b'i': b'1', b'a': b'rsa-sha256', b'b': b'abcd'}
    >>> tags(b"i=1; i=2") is None
    True
    """
    found: dict[bytes, bytes] = {}
    for part in value.split(b";"):
        if not part.strip():
            continue
        match = _TAG.match(part)
        if match is None or match.group(1) in found:
            return None
        found[match.group(1)] = re.sub(rb"\s+", b"", match.group(2))
    return found


def without_signature(field: bytes) -> bytes:
    """The field with its b= value emptied, as it was signed (RFC 6376 §3.7).

    >>> without_signature(b"ARC-Seal: i=1; bh=x; b=abc\\r\\n d; t=1")
    b'ARC-Seal: i=1; bh=x; b=; t=1'
    """
    name, _, value = field.partition(b":")
    return name + b":" + _EMPTY_B.sub(rb"\1", value)


# -- the results our MTA wrote -----------------------------------------------------------

def authserv_id(value: bytes) -> bytes:
    """The authserv-id of an Authentication-Results value, lower-case (RFC 8601 §2.2).

    It must come first, bare, as MTAs write it: a comment or quotes before it, which RFC
    8601 allows, would let a forged field slip past the MTA's removal (mailer.postfix's
    header_checks line), so such a field is nobody's here.

    >>> authserv_id(b" MX.Lists.Example.org 1; spf=pass"), authserv_id(b"mx.test;")
    (b'mx.lists.example.org', b'mx.test')
    >>> authserv_id(b" (ours) mx.test; spf=pass"), authserv_id(b'"mx.test"; spf=pass')
    (b'(ours)', b'"mx.test"')
    """
    head = value.partition(b";")[0].split()
    return head[0].lower() if head else b""


def trusted_results(fields: Sequence[bytes], ours: str) -> list[str] | None:
    """The results (resinfo) of the topmost Authentication-Results fields while they carry
    our authserv-id; None when the topmost is not ours (RFC 8601 §5: the MTA in front
    removes fields with its authserv-id that come from outside, and adds its own on top).

    >>> trusted_results([b"Received: x", b"Authentication-Results: mx.example; spf=pass",
    ...                  b"Authentication-Results: mx.example;\\r\\n\\tdkim=pass header.d=a.test",
    ...                  b"Authentication-Results: x.test; dmarc=pass",
    ...                  b"Authentication-Results: mx.example; dmarc=pass"], "mx.example")
    ['spf=pass', 'dkim=pass header.d=a.test']
    >>> trusted_results([b"Authentication-Results: other.example; spf=pass",
    ...                  b"Authentication-Results: mx.example; spf=pass"], "mx.example")
    """
    wanted = ours.lower().encode()
    run = []
    for field in fields:
        if field_name(field) != b"authentication-results":
            continue
        if authserv_id(field_value(field)) != wanted:
            break
        run.append(field_value(field))
    if not run:
        return None
    texts = (" ".join(one.decode("utf-8", "replace").split())
             for value in run for one in value.split(b";")[1:])
    return [text for text in texts if text and text.lower() != "none"]


# -- the chain a post arrives with (RFC 8617 §5.2) ------------------------------------

@dataclass(frozen=True)
class ArcSet:
    """One instance of the chain: its three fields, as they stand in the header."""

    instance: int
    aar: bytes
    ams: bytes
    seal: bytes


class Broken(Exception):
    """The chain fails (cv=fail), for the reason given."""


class Unknown(Exception):
    """The chain could not be checked (a key's DNS look-up failed, say)."""


def highest_instance(fields: Sequence[bytes]) -> int:
    """The highest i= of the ARC fields that have one; 0 without any."""
    found = [_INSTANCE.match(field_value(field)) for field in fields
             if field_name(field) in (AAR, AMS, SEAL)]
    return max((int(match.group(1)) for match in found if match), default=0)


def arc_sets(fields: Sequence[bytes]) -> list[ArcSet]:
    """The chain's sets in instance order; Broken unless every instance from 1 to the
    highest has exactly one of each field (RFC 8617 §5.2 step 3)."""
    found: dict[int, dict[bytes, list[bytes]]] = {}
    for field in fields:
        name = field_name(field)
        if name not in (AAR, AMS, SEAL):
            continue
        match = _INSTANCE.match(field_value(field))
        if match is None:
            raise Broken(f"a {name.decode()} field without a valid i= first")
        found.setdefault(int(match.group(1)), {}).setdefault(name, []).append(field)
    if not found:
        return []
    highest = max(found)
    if highest > MAX_SETS or sorted(found) != list(range(1, highest + 1)):
        raise Broken(f"instances {sorted(found)} are not 1 to {highest} (at most {MAX_SETS})")
    sets = []
    for instance in range(1, highest + 1):
        kinds = found[instance]
        if any(len(kinds.get(name, [])) != 1 for name in (AAR, AMS, SEAL)):
            raise Broken(f"instance {instance} has not one field of each kind")
        sets.append(ArcSet(instance, kinds[AAR][0], kinds[AMS][0], kinds[SEAL][0]))
    return sets


def public_key(records: Sequence[str]) -> rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    """The key a DKIM TXT record publishes (RFC 6376 §3.6.1); Broken if none."""
    if len(records) != 1:
        raise Broken(f"{len(records)} key records where one is wanted")
    found = tags(records[0].encode())
    if not found or not found.get(b"p"):
        raise Broken("no key, or a revoked one, in the record")
    try:
        raw = base64.b64decode(found[b"p"], validate=True)
        if found.get(b"k", b"rsa") == b"ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        key = serialization.load_der_public_key(raw)
    except ValueError as error:
        raise Broken(f"an unreadable key ({error})") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 1024:
        raise Broken("the key is not an RSA key of at least 1024 bits (RFC 8301)")
    return key


def verify(key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey, algorithm: bytes,
           signature: bytes, data: bytes) -> bool:
    """Whether `signature` (base64) signs `data` by `algorithm` (RFC 6376 §3.7, RFC 8463)."""
    try:
        raw = base64.b64decode(signature, validate=True)
        if algorithm == b"rsa-sha256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
            return True
        if algorithm == b"ed25519-sha256" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, hashlib.sha256(data).digest())
            return True
    except (InvalidSignature, ValueError):
        pass
    return False


Keys = dict[tuple[bytes, bytes], rsa.RSAPublicKey | ed25519.Ed25519PublicKey]


async def fetch_keys(sets: Sequence[ArcSet], dns: KeyLookup) -> Keys:
    """The public keys the chain's signatures name, looked up at once."""
    wanted: set[tuple[bytes, bytes]] = set()
    for one in sets:
        for field in (one.ams, one.seal):
            found = tags(field_value(field)) or {}
            selector, domain = found.get(b"s", b""), found.get(b"d", b"")
            if not (_DNS_NAME.fullmatch(selector) and _DNS_NAME.fullmatch(domain)):
                raise Broken(f"instance {one.instance}: a signature without a valid s= or d=")
            wanted.add((selector.lower(), domain.lower()))
    names = sorted(wanted)
    answers = await asyncio.gather(*(dns.txt(key_name(s, d)) for s, d in names))
    keys: Keys = {}
    for (selector, domain), records in zip(names, answers, strict=True):
        if records is None:
            raise Unknown(f"no DNS answer for {key_name(selector, domain)}")
        keys[(selector, domain)] = public_key(records)
    return keys


def key_name(selector: bytes, domain: bytes) -> str:
    """Where a key is published: SELECTOR._domainkey.DOMAIN (RFC 6376 §3.6.2.1)."""
    return f"{selector.decode('ascii')}._domainkey.{domain.decode('ascii')}"


def check_message_signature(fields: Sequence[bytes], body: bytes, last: ArcSet,
                            keys: Keys) -> None:
    """The newest AMS signs the message as it is (RFC 8617 §5.2 step 4); Broken if not."""
    found = tags(field_value(last.ams))
    if found is None or not {b"a", b"b", b"bh", b"d", b"h", b"s"} <= found.keys():
        raise Broken(f"AMS {last.instance}: a tag is missing or malformed")
    if found.get(b"c", b"relaxed/relaxed").lower() != b"relaxed/relaxed":
        # Not known to fail: we cannot tell, and a valid chain must not be stamped fail.
        raise Unknown(f"AMS {last.instance} uses c={found[b'c']!r}; only "
                      "relaxed/relaxed is checked here")
    names = [name.lower() for name in found[b"h"].split(b":")]
    if SEAL in names:
        raise Broken(f"AMS {last.instance} signs an ARC-Seal (RFC 8617 §4.1.2)")
    if body_hash(body) != found[b"bh"]:
        raise Broken(f"AMS {last.instance}: the body has changed since")
    data = header_data(fields, names) + relaxed_header(without_signature(last.ams))[:-2]
    key = keys[(found[b"s"].lower(), found[b"d"].lower())]
    if not verify(key, found[b"a"].lower(), found[b"b"], data):
        raise Broken(f"AMS {last.instance} does not verify")


def seal_data(sets: Sequence[ArcSet]) -> bytes:
    """What an ARC-Seal signs: every set up to its own, AAR, AMS, AS each, relaxed, its
    own b= empty and without the final CRLF (RFC 8617 §5.1.1)."""
    data = b"".join(relaxed_header(field) for one in sets[:-1]
                    for field in (one.aar, one.ams, one.seal))
    last = sets[-1]
    return data + relaxed_header(last.aar) + relaxed_header(last.ams) \
        + relaxed_header(without_signature(last.seal))[:-2]


def check_seals(sets: Sequence[ArcSet], keys: Keys) -> None:
    """Every AS, newest first, and the cv= each must carry (RFC 8617 §5.2 steps 3, 6)."""
    for count in range(len(sets), 0, -1):
        one = sets[count - 1]
        found = tags(field_value(one.seal))
        if found is None or not {b"a", b"b", b"cv", b"d", b"s"} <= found.keys() \
                or b"h" in found:
            raise Broken(f"AS {one.instance}: a tag is missing, malformed or not allowed")
        if found[b"cv"].lower() != (b"none" if one.instance == 1 else b"pass"):
            raise Broken(f"AS {one.instance} says cv={found[b'cv']!r}")
        key = keys[(found[b"s"].lower(), found[b"d"].lower())]
        if not verify(key, found[b"a"].lower(), found[b"b"], seal_data(sets[:count])):
            raise Broken(f"AS {one.instance} does not verify")


def terminated(sets: Sequence[ArcSet]) -> bool:
    """The newest seal already says cv=fail: the chain has ended (RFC 8617 §5.1 step 2)."""
    found = tags(field_value(sets[-1].seal)) or {}
    return found.get(b"cv", b"").lower() == b"fail"


async def chain_state(message: bytes, dns: KeyLookup) -> str | None:
    """cv= for the chain `message` arrives with: "none", "pass" or "fail" (RFC 8617
    §5.2); None when no set may be added (a chain already ended, or at 50 sets) or the
    chain could not be checked (a key's DNS look-up failed, a canonicalisation we do not
    check)."""
    head, body = split(crlf(message))
    fields = header_fields(head)
    try:
        sets = arc_sets(fields)
        if not sets:
            return "none"
        if terminated(sets) or len(sets) >= MAX_SETS:
            return None
        keys = await fetch_keys(sets, dns)
        check_message_signature(fields, body, sets[-1], keys)
        check_seals(sets, keys)
    except Broken as reason:
        log.info("ARC chain fails: %s", reason)
        return "fail"
    except Unknown as reason:
        log.warning("ARC chain not checked, no ARC set added: %s", reason)
        return None
    return "pass"


# -- sealing (RFC 8617 §5.1) ------------------------------------------------------------

def results_field(instance: int, results: str) -> bytes:
    """The ARC-Authentication-Results field (RFC 8617 §4.1.1), folded between words into
    lines of at most 78 characters where the words allow (RFC 5322 §2.2.3).

    >>> field = results_field(1, "mx.example; dkim=pass header.d=a.test header.s=s1; "
    ...                          "spf=pass smtp.mailfrom=ana@a.test")
    >>> print(field.decode().replace("\\r\\n", "\\n").replace("\\t", "<TAB>"), end="")
    ARC-Authentication-Results: i=1; mx.example; dkim=pass header.d=a.test
    <TAB>header.s=s1; spf=pass smtp.mailfrom=ana@a.test
    """
    lines = [f"ARC-Authentication-Results: i={instance};"]
    for word in results.split():
        if len(lines[-1]) + 1 + len(word) > 78:
            lines.append("\t" + word)
        else:
            lines[-1] += " " + word
    return ("\r\n".join(lines) + "\r\n").encode()


class Sealer:
    """Adds our ARC set to the list copy of a post whose results we trust."""

    def __init__(self, key: DkimKey, authserv_id: str, dns: KeyLookup,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(key.private, rsa.RSAPrivateKey):
            raise ValueError("ARC signs with rsa-sha256 only")
        self.key = key
        self.authserv_id = authserv_id
        self.dns = dns
        self.clock = clock

    async def assess(self, raw: bytes, protocol: str) -> Assessment | None:
        """The post's ARC set to be, or None: it did not come from the MTA in front (LMTP),
        its topmost results are not our MTA's, or no set may be added to its chain."""
        if protocol != "lmtp":
            return None
        fields = header_fields(split(crlf(raw))[0])
        results = trusted_results(fields, self.authserv_id)
        if results is None or highest_instance(fields) >= MAX_SETS:
            return None
        try:
            state = await chain_state(raw, self.dns)
        except Exception:   # a fault of ours must cost the post its ARC set, never the post
            log.exception("ARC chain check failed; no ARC set added")
            return None
        if state is None:
            return None
        if not any(text.lower().startswith("arc=") for text in results):
            results.append(f"arc={state}")   # our own check of the chain (RFC 8617 §5.2)
        return Assessment(highest_instance(fields) + 1, state,
                          "; ".join([self.authserv_id, *results]))

    def seal(self, message: bytes, assessment: Assessment) -> bytes:
        """The message with line ends made CRLF and our ARC set on top."""
        message = crlf(message)
        head, body = split(message)
        fields = header_fields(head)
        try:
            earlier = [] if assessment.cv == "fail" else arc_sets(fields)
        except Broken as reason:   # the chain checked before has changed since: no set
            log.warning("ARC chain changed since it was checked (%s); no ARC set", reason)
            return message
        instance = assessment.instance
        timestamp = int(self.clock())
        key = self.key
        aar = results_field(instance, assessment.results)
        names = header_list(fields, AMS_SIGNED, AMS_ALWAYS)
        ams_tags = [f"i={instance}", "a=rsa-sha256", "c=relaxed/relaxed", f"d={key.domain}",
                    f"s={key.selector}", f"t={timestamp}", "h=" + b":".join(names).decode(),
                    "bh=" + body_hash(body).decode()]
        data = header_data(fields, names) \
            + relaxed_header(fold([*ams_tags, "b="], "ARC-Message-Signature").encode())[:-2]
        ams = self._signed(ams_tags, data, "ARC-Message-Signature")
        seal_tags = [f"i={instance}", f"cv={assessment.cv}", "a=rsa-sha256",
                     f"d={key.domain}", f"s={key.selector}", f"t={timestamp}"]
        unsigned = fold([*seal_tags, "b="], "ARC-Seal").encode()
        own = ArcSet(instance, aar[:-2], ams[:-2], unsigned[:-2])
        seal = self._signed(seal_tags, seal_data([*earlier, own]), "ARC-Seal")
        return seal + ams + aar + message

    def _signed(self, tag_list: list[str], data: bytes, name: str) -> bytes:
        value = base64.b64encode(self.key.sign(data)).decode()
        return fold([*tag_list, "b=" + value], name).encode()


def configured_authserv_id(config: Config) -> str:
    """arc.authserv_id, a host name ("" when ARC is off), or ConfigError naming the key."""
    value = config.arc.authserv_id
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", value):
        raise ConfigError(f"arc.authserv_id: expected a host name such as "
                          f"mx.{config.site.domain}, got {value!r}")
    return value


def sealer(config: Config, dkim: DkimSigner | None, dns: KeyLookup) -> Sealer | None:
    """The sealer the [arc] section asks for: None without an authserv-id, or with DKIM
    off (ARC rides on the DKIM set-up: its key by default, its published records)."""
    section = config.arc
    if not configured_authserv_id(config) or dkim is None:
        if section.authserv_id:
            log.warning("arc.authserv_id is set but DKIM is off (no dkim.selector): no ARC")
        return None
    if not config.lmtp.listen:
        log.warning("arc.authserv_id is set but lmtp.listen is off: ARC sets are added only "
                    "to posts that come over LMTP, from the MTA in front")
    if not section.selector:
        return Sealer(dkim.keys[0], section.authserv_id, dns)
    if not SELECTOR.fullmatch(section.selector):
        raise ConfigError(f"arc.selector: expected a DNS label such as 2026a, "
                          f"got {section.selector!r}")
    key = load_key(key_path(config, section.selector, section.key_file), section.selector,
                   dkim.keys[0].domain, "rsa", "arc.key_file")
    return Sealer(key, section.authserv_id, dns)
