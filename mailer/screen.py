"""Screening a message before the 250: bounded checks of its header blocks and MIME shape.

Python's email package spends time and memory that grow faster than the message on some
shapes: thousands of RFC 2047 encoded words in one field (quadratic), RFC 2231 parameter
floods, deep nesting, hundreds of thousands of parts (reference/reliability.md §3.2,
M07-M09). None of that is parsed here: the header blocks are read as bytes and the MIME
structure is followed by its boundary lines alone, in time linear in the message, so that
what is refused is refused at DATA with a clear 5xx and nothing unbounded ever reaches the
parser of the daemon.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from mailer import smtp_replies

# A boundary delimiter line (RFC 2046 §5.1.1): "--" at the start of a line.
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.I)
# What makes a field costly to decode: RFC 2047 encoded words and RFC 2231 segments.
_COSTLY = re.compile(rb"=\?|\*[0-9]+\*?\s*=")


@dataclass(frozen=True)
class Limits:
    """The caps, from the [intake] config section."""

    header_size: int = 102_400     # bytes in one header block
    header_count: int = 1_000      # fields in one header block
    mime_depth: int = 20           # multiparts and messages inside one another
    mime_parts: int = 500          # body parts in the whole message
    encoded_words: int = 500       # encoded words and RFC 2231 segments in one field


def _header_block(raw: bytes, start: int, limit: int) -> tuple[bytes, int]:
    """The header block that starts at `start`, and where its body starts. Only `limit`
    bytes are looked at: a longer block comes back longer than `limit`, and is refused."""
    if raw.startswith(b"\r\n", start):        # no fields at all
        return b"", start + 2
    if raw.startswith(b"\n", start):
        return b"", start + 1
    stop = min(len(raw), start + limit + 4)
    ends = [(found, len(gap)) for gap in (b"\r\n\r\n", b"\n\n")
            if (found := raw.find(gap, start, stop)) >= 0]
    if ends:
        end, gap = min(ends)
        return raw[start:end], end + gap
    if stop < len(raw):
        return raw[start:stop], stop        # over the limit
    return raw[start:], len(raw)


def _fields(block: bytes) -> list[bytes]:
    """The fields of a header block, each with its continuation lines."""
    fields: list[bytes] = []
    for line in block.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return [field for field in fields if field.strip()]


def check_header_block(block: bytes, limits: Limits) -> str | None:
    """The refusal for a header block over a cap, or None.

    >>> check_header_block(b"Subject: " + b"=?utf-8?q?a?= " * 600, Limits()) == (
    ...     smtp_replies.TOO_MANY_ENCODED_WORDS)
    True
    >>> check_header_block(b"Subject: hi\\r\\nFrom: a@b", Limits()) is None
    True
    """
    if len(block) > limits.header_size:
        return smtp_replies.HEADER_TOO_LARGE
    if block.count(b"\n") + 1 > limits.header_count * 4:   # cheap bound before the split
        return smtp_replies.TOO_MANY_HEADER_FIELDS
    fields = _fields(block)
    if len(fields) > limits.header_count:
        return smtp_replies.TOO_MANY_HEADER_FIELDS
    for field in fields:
        if len(_COSTLY.findall(field)) > limits.encoded_words:
            return smtp_replies.TOO_MANY_ENCODED_WORDS
    return None


def _content_type(block: bytes) -> tuple[bytes, bytes | None]:
    """(type/subtype in lower case, boundary or None) of a header block."""
    for field in _fields(block):
        name, _, value = field.partition(b":")
        if name.strip().lower() == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            found = _BOUNDARY.search(value) if kind.startswith(b"multipart/") else None
            boundary = (found.group(1) or found.group(2)) if found else None
            return kind, boundary
    return b"text/plain", None


def check(raw: bytes, limits: Limits) -> str | None:
    """The 5xx reply for a message over a cap, or None: NUL bytes (RFC 5322 §2.3), header
    blocks, MIME depth and part count. Linear in the size of the message.

    >>> check(b"Subject: hi\\r\\n\\r\\nBody\\r\\n", Limits()) is None
    True
    >>> check(b"Subject: hi\\r\\n\\r\\nBo\\x00dy\\r\\n", Limits()) == smtp_replies.NUL_BYTES
    True
    """
    if b"\x00" in raw:
        return smtp_replies.NUL_BYTES
    opened = _open(raw, 0, 0, limits)
    if isinstance(opened, str):
        return opened
    boundaries: list[tuple[bytes, int]] = [(opened[0], opened[1])] \
        if opened[0] is not None else []
    parts = 0
    position = _header_block(raw, 0, limits.header_size)[1]
    while boundaries:
        line = _delimiters([name for name, _ in boundaries]).search(raw, position)
        if line is None:
            break
        position = line.end()
        name, closing = line.group(1), bool(line.group(2))
        found = next(i for i, (b, _) in enumerate(boundaries) if b == name)
        depth = boundaries[found][1]
        del boundaries[found + (0 if closing else 1):]
        if closing:
            continue
        parts += 1
        if parts > limits.mime_parts:
            return smtp_replies.TOO_MANY_PARTS
        opened = _open(raw, min(len(raw), position + 1), depth, limits)
        if isinstance(opened, str):
            return opened
        if opened[0] is not None:
            boundaries.append((opened[0], opened[1]))
    return None


@functools.lru_cache(maxsize=256)
def _delimiters_of(names: tuple[bytes, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(name) for name in sorted(set(names), key=len,
                                                                 reverse=True))
    return re.compile(rb"^--(" + alternatives + rb")(--)?[ \t]*\r?$", re.M)


def _delimiters(names: list[bytes]) -> re.Pattern[bytes]:
    """The delimiter lines of the open multiparts (RFC 2046 §5.1.1): one search in C
    passes over every other line."""
    return _delimiters_of(tuple(names))


def _open(raw: bytes, start: int, depth: int,
          limits: Limits) -> tuple[bytes | None, int] | str:
    """The entity whose header block starts at `start`, `depth` levels down: its boundary
    if it is a multipart (else None) and its depth, through any message/rfc822 wrappers;
    or the refusal, if a header block or the depth is over a cap."""
    while True:
        block, body = _header_block(raw, start, limits.header_size)
        refusal = check_header_block(block, limits)
        if refusal is not None:
            return refusal
        kind, boundary = _content_type(block)
        if boundary is None and kind != b"message/rfc822":
            return None, depth
        depth += 1
        if depth > limits.mime_depth:
            return smtp_replies.MIME_TOO_DEEP
        if boundary is not None:
            return boundary, depth
        start = body
