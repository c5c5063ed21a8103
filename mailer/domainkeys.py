"""DKIM: every message we send is signed just before it leaves (RFC 6376, RFC 8463).

The canonicalisation is done here (relaxed/relaxed, RFC 6376 §3.4.2 and §3.4.4) and the
signature by OpenSSL through `cryptography`: about 0.3 ms a copy for RSA-2048, twenty times
dkimpy's pure-Python RSA, which matters at one signature per list copy (each copy has its
own List-Unsubscribe). The body hash is computed once per distinct body: a post's copies
differ only in their header. dkimpy is used by the tests, to verify every signature.

The delivery engine renders every copy (list copies, digests, robot mail, invitations)
and hands it to the transport: `CopySigning` signs it there, after its last change.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mailer.config import Config, ConfigError

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# The fields we sign when present (RFC 6376 §5.4.1; RFC 8058 §4 for the List-Unsubscribe
# pair), each one more time than it occurs ("oversigned", §8.15), so that none can be added.
SIGNED = ("from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
          "references", "mime-version", "content-type", "list-id", "list-unsubscribe",
          "list-unsubscribe-post")
# Signed even when absent: a relay must not add a From, or a one-click unsubscribe that
# would then carry our signature.
ALWAYS = frozenset(("from", "list-unsubscribe", "list-unsubscribe-post"))
RSA_BITS = 2048
SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_EOL = re.compile(rb"[ \t]+\r\n")
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_FIELD_START = re.compile(rb"\r\n(?![ \t])")


def crlf(message: bytes) -> bytes:
    """The message as it goes over SMTP (RFC 5321 §2.3.8), and as aiosmtplib sends it: every
    lone CR or LF made CRLF, and a CRLF at the end.

    >>> crlf(b"a\\nb\\rc\\r\\nd")
    b'a\\r\\nb\\r\\nc\\r\\nd\\r\\n'
    """
    ends = message.count(b"\r\n")
    if message.count(b"\n") != ends or message.count(b"\r") != ends:
        message = _LINE_ENDS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def split(message: bytes) -> tuple[bytes, bytes]:
    """The header block (without the empty line after it) and the body of a CRLF message."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    return (message, b"") if end < 0 else (message[:end + 2], message[end + 4:])


def header_fields(head: bytes) -> list[bytes]:
    """The fields of a header block, each with its folds and without its final CRLF.

    >>> header_fields(b"A: 1\\r\\n folded\\r\\nB: 2\\r\\n")
    [b'A: 1\\r\\n folded', b'B: 2']
    """
    if head.endswith(b"\r\n"):
        head = head[:-2]
    return _FIELD_START.split(head) if head else []


def relaxed_header(field: bytes) -> bytes:
    """One field in the relaxed header canonical form, CRLF included (RFC 6376 §3.4.2).

    >>> relaxed_header(b"SubJect : a  \\t b\\r\\n\\t c ")
    b'subject:a b c\\r\\n'
    """
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """The body in the relaxed canonical form (RFC 6376 §3.4.4; an empty body is empty).

    >>> relaxed_body(b"a  b \\r\\n\\r\\n\\r\\n")
    b'a b\\r\\n'
    >>> relaxed_body(b"no final line end"), relaxed_body(b"\\r\\n")
    (b'no final line end\\r\\n', b'')
    """
    body = _WSP_RUN.sub(b" ", _WSP_EOL.sub(b"\r\n", body)).rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def body_hash(body: bytes) -> bytes:
    """bh=: SHA-256 of the relaxed body (RFC 6376 §3.7)."""
    return base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())


def header_list(fields: Sequence[bytes], signed: Sequence[str] = SIGNED,
                always: frozenset[str] = ALWAYS) -> list[bytes]:
    """h=: the names of `signed` present, each oversigned, plus `always` (RFC 6376 §5.4.2)."""
    return _names(_by_name(fields), signed, always)


def header_data(fields: Sequence[bytes], names: Sequence[bytes]) -> bytes:
    """The signed fields, canonical, in h= order: the last unused instance first (§5.4.2)."""
    return _data(_by_name(fields), names)


def _by_name(fields: Sequence[bytes]) -> dict[bytes, list[bytes]]:
    """The fields under their lower-case names, in order."""
    by_name: dict[bytes, list[bytes]] = {}
    for field in fields:
        by_name.setdefault(field.partition(b":")[0].rstrip(b" \t").lower(), []).append(field)
    return by_name


def _names(by_name: dict[bytes, list[bytes]], signed: Sequence[str],
           always: frozenset[str]) -> list[bytes]:
    names = []
    for text in signed:
        name = text.encode()
        found = by_name.get(name)
        if found or text in always:
            names += [name] * (len(found or ()) + 1)
    return names


def _data(by_name: dict[bytes, list[bytes]], names: Sequence[bytes]) -> bytes:
    unused = {name: list(found) for name, found in by_name.items()}
    return b"".join(relaxed_header(unused[name].pop()) for name in names if unused.get(name))


def fold(tags: Sequence[str], name: str = "DKIM-Signature") -> str:
    """A DKIM-Signature field (or an ARC one, RFC 8617 §4.1) of these tags, folded into
    lines of at most 78 characters.

    A base64 value (bh=, b=) is cut anywhere, h= only after a colon (RFC 6376 §3.5):

    >>> field = fold(["v=1", "h=" + ":".join(["subject"] * 10), "b=" + "A" * 80])
    >>> print(field.replace("\\r\\n", "\\n").replace("\\t", "<TAB>"), end="")
    DKIM-Signature: v=1; h=subject:subject:subject:subject:subject:subject:
    <TAB>subject:subject:subject:subject;
    <TAB>b=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
    <TAB>AAAAAAAAAAAAAAAAAA
    """
    return _field(_fold_into([name + ":"], tags))


def _fold_into(lines: list[str], tags: Sequence[str], more: bool = False) -> list[str]:
    """`lines` (not changed) and then `tags`, folded; `more`: tags follow these."""
    lines = list(lines)
    last = len(tags) - 1
    for position, tag in enumerate(tags):
        for number, atom in enumerate(_atoms(tag + (";" if more or position < last else ""))):
            space = "" if number else " "
            if len(lines[-1]) + len(space) + len(atom) > 78:
                lines.append("\t" + atom)
            else:
                lines[-1] += space + atom
    return lines


def _field(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def _atoms(tag: str) -> list[str]:
    """The pieces a tag may be folded between."""
    name = tag.partition("=")[0]
    if name in ("b", "bh"):
        return [tag[at:at + 64] for at in range(0, len(tag), 64)]
    if name == "h":
        names = tag.split(":")
        return [part + ":" for part in names[:-1]] + names[-1:]
    return [tag]


@dataclass(frozen=True)
class DkimKey:
    """One signing key and the name it is published under (SELECTOR._domainkey.DOMAIN)."""

    selector: str
    domain: str
    private: PrivateKey

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.private, ed25519.Ed25519PrivateKey) \
            else "rsa-sha256"

    def sign(self, data: bytes) -> bytes:
        """b= over the header data: PKCS#1 v1.5 of its SHA-256, or Ed25519 of its SHA-256
        (RFC 8463 §3)."""
        digest = hashlib.sha256(data).digest()
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(digest)
        return self.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))

    def record(self) -> str:
        """The DNS TXT record that publishes the public key, in 255-byte strings (RFC 6376
        §3.6.1; RFC 8463 §4 for k=ed25519)."""
        return record(self.selector, self.domain, self.private)

    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())


def public_key_text(private: PrivateKey) -> str:
    """p=: the public key in base64 (SubjectPublicKeyInfo for RSA, raw for Ed25519)."""
    public = private.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode()


def record(selector: str, domain: str, private: PrivateKey) -> str:
    """`SELECTOR._domainkey.DOMAIN IN TXT "v=DKIM1; k=…; p=…"`, cut into 255-byte strings."""
    kind = "ed25519" if isinstance(private, ed25519.Ed25519PrivateKey) else "rsa"
    text = f"v=DKIM1; k={kind}; p={public_key_text(private)}"
    strings = " ".join(f'"{text[at:at + 255]}"' for at in range(0, len(text), 255))
    return f"{selector}._domainkey.{domain} IN TXT {strings}"


class Unsigned(NamedTuple):
    """What the signatures of one message need: its header block, bh= and t=."""

    head: bytes
    body_hash: bytes
    timestamp: int


def signatures(keys: Sequence[DkimKey], unsigned: Unsigned) -> bytes:
    """The DKIM-Signature fields of one message, one per key (RFC 6376 §3.7, §5)."""
    by_name = _by_name(header_fields(unsigned.head))
    names = _names(by_name, SIGNED, ALWAYS)
    data = _data(by_name, names)
    common = [f"t={unsigned.timestamp}", "h=" + b":".join(names).decode(),
              "bh=" + unsigned.body_hash.decode()]
    signed = []
    for key in keys:
        # Folded once up to b=, which is folded onto that twice: empty, as the verifier
        # will see the field when it checks it (§3.5), then with the signature.
        lines = _fold_into(["DKIM-Signature:"], [
            "v=1", f"a={key.algorithm}", "c=relaxed/relaxed", f"d={key.domain}",
            f"s={key.selector}", *common], more=True)
        value = key.sign(data + relaxed_header(_field(_fold_into(lines, ["b="])).encode())[:-2])
        signed.append(_field(_fold_into(lines, ["b=" + base64.b64encode(value).decode()]))
                      .encode())
    return b"".join(signed)


class DkimSigner:
    """Signs messages with one key, or two (RSA, then Ed25519 beside it: RFC 8463 §3)."""

    CACHE = 256  # bodies whose hash is remembered (a post's copies share one body)

    def __init__(self, keys: Sequence[DkimKey], clock: Callable[[], float] = time.time) -> None:
        self.keys = tuple(keys)
        self.clock = clock
        self._body_hashes: OrderedDict[bytes, bytes] = OrderedDict()

    @property
    def key_texts(self) -> tuple[KeyText, ...]:
        """The keys as PEM, for a worker process (`sign_batch`)."""
        return tuple((key.selector, key.domain, key.pem()) for key in self.keys)

    def prepare(self, message: bytes) -> tuple[Unsigned, bytes]:
        """What `signatures` needs, and the message with its line ends made CRLF."""
        message = crlf(message)
        head, body = split(message)
        return Unsigned(head, self._body_hash(body), int(self.clock())), message

    def sign(self, message: bytes) -> bytes:
        """The message with line ends made CRLF and a DKIM-Signature field per key on top."""
        unsigned, message = self.prepare(message)
        return signatures(self.keys, unsigned) + message

    def _body_hash(self, body: bytes) -> bytes:
        """bh=, from the cache when the same body was signed lately."""
        key = hashlib.sha256(body).digest()
        found = self._body_hashes.get(key)
        if found is None:
            found = self._body_hashes[key] = body_hash(body)
            if len(self._body_hashes) > self.CACHE:
                self._body_hashes.popitem(last=False)
        else:
            self._body_hashes.move_to_end(key)
        return found


KeyText = tuple[str, str, bytes]   # selector, domain, PEM
_loaded: dict[tuple[KeyText, ...], tuple[DkimKey, ...]] = {}


def sign_batch(keys: tuple[KeyText, ...], batch: Sequence[Unsigned]) -> list[bytes]:
    """The signature fields of many messages, in a worker process (mailer.workers)."""
    loaded = _loaded.get(keys)
    if loaded is None:
        loaded = _loaded[keys] = tuple(
            DkimKey(selector, domain, _private(serialization.load_pem_private_key(pem, None)))
            for selector, domain, pem in keys)
    return [signatures(loaded, unsigned) for unsigned in batch]


class CopySigning:
    """DKIM for the delivery engine: the copies of a claim signed ahead, in one call.

    `sign_heads` turns copies' header blocks into signed ones, the signatures made by
    `elsewhere` (the daemon's worker processes: at 0.3 ms a copy, RSA would hold the event
    loop three seconds for a 10,000-member post) or, without it, here; the body, the same
    in every copy of a post, is hashed once. The delivery engine puts each signed header
    block on the body just before the copy is sent; `sign` signs a copy whose header was
    not signed ahead. What is sent is what was signed.
    """

    def __init__(self, signer: DkimSigner,
                 elsewhere: Callable[[list[Unsigned]], Awaitable[list[bytes]]] | None = None,
                 ) -> None:
        self.signer = signer
        self.elsewhere = elsewhere

    @staticmethod
    def body_hash(body: bytes) -> bytes:
        """bh= of a body with CRLF line ends, for `sign_heads`."""
        return body_hash(body)

    async def sign_heads(self, copies: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """Each copy's header block (CRLF line ends) with its DKIM-Signature fields on top;
        a copy is given as its header block and the bh= of its body."""
        timestamp = int(self.signer.clock())
        unsigned = [Unsigned(head, bh, timestamp) for head, bh in copies]
        if self.elsewhere is not None:
            fields = await self.elsewhere(unsigned)
        else:
            fields = [signatures(self.signer.keys, one) for one in unsigned]
        return [signed + one.head for signed, one in zip(fields, unsigned, strict=True)]

    def sign(self, copy: bytes) -> bytes:
        """A copy signed now, here."""
        return self.signer.sign(copy)


def key_path(config: Config, selector: str, configured: str) -> Path:
    """A key's file: the one the config names, else var/dkim/SELECTOR.pem beside it."""
    return config.path(configured or f"var/dkim/{selector}.pem")


def load_key(path: Path, selector: str, domain: str, kind: str, name: str) -> DkimKey:
    """A PEM private key of the kind the config expects, or ConfigError naming the key."""
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise ConfigError(f"{name}: cannot read {path} ({error.strerror or error}); "
                          f"`alliance dkim keygen` makes one") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{name}: {path} is no unencrypted PEM private key ({error})") \
            from None
    if kind == "rsa" and not isinstance(private, rsa.RSAPrivateKey):
        raise ConfigError(f"{name}: {path} is no RSA key")
    if kind == "ed25519" and not isinstance(private, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{name}: {path} is no Ed25519 key")
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < 1024:
        raise ConfigError(f"{name}: {path} has {private.key_size} bits; "
                          "RFC 8301 needs at least 1024 (2048 here by default)")
    return DkimKey(selector, domain, _private(private))


def _private(key: Any) -> PrivateKey:
    """The key, if it is of a kind DKIM signs with (RSA, Ed25519)."""
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"no DKIM key: {type(key).__name__}")
    return key


def signer(config: Config) -> DkimSigner | None:
    """The signer the [dkim] section asks for; None when it names no selector (DKIM off)."""
    section = config.dkim
    if not section.selector:
        if section.ed25519_selector:
            raise ConfigError("dkim.ed25519_selector: set dkim.selector too (the RSA "
                              "signature every verifier reads; RFC 8463 §4)")
        return None
    for name, value in (("dkim.selector", section.selector),
                        ("dkim.ed25519_selector", section.ed25519_selector)):
        if value and not SELECTOR.fullmatch(value):
            raise ConfigError(f"{name}: expected a DNS label such as 2026a, got {value!r}")
    domain = section.domain or config.site.domain
    keys = [load_key(key_path(config, section.selector, section.key_file), section.selector,
                     domain, "rsa", "dkim.key_file")]
    if section.ed25519_selector:
        keys.append(load_key(key_path(config, section.ed25519_selector,
                                      section.ed25519_key_file),
                             section.ed25519_selector, domain, "ed25519",
                             "dkim.ed25519_key_file"))
    return DkimSigner(keys)


def generate(path: Path, *, ed25519_key: bool = False) -> PrivateKey:
    """Make a key and write it to `path` as PEM, mode 0600; never over an existing file."""
    private: PrivateKey = (ed25519.Ed25519PrivateKey.generate() if ed25519_key
                           else rsa.generate_private_key(public_exponent=65537,
                                                         key_size=RSA_BITS))
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return private
