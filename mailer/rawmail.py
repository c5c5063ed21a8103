"""Editing the header block of a message as bytes, leaving the body untouched.

Re-serialising a parsed message can re-wrap headers and re-encode bodies, which breaks
signatures and changes what the poster wrote. List mail only adds and removes header
fields, so it edits the raw header block instead.
"""

from __future__ import annotations

from email.header import Header


def split(raw: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines, CRLF-ended) and the body.

    >>> split(b"A: 1\\r\\nB: 2\\r\\n x\\r\\n\\r\\nbody")
    ([b'A: 1\\r\\n', b'B: 2\\r\\n x\\r\\n'], b'body')
    """
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        head, body = (raw, b"") if raw.endswith(b"\r\n") or not raw else (raw + b"\r\n", b"")
    else:
        head, body = raw[: end + 2], raw[end + 4:]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line if line.endswith(b"\r\n") else line.rstrip(b"\r\n") + b"\r\n")
    return fields, body


def encoded(text: str) -> str:
    """Header text as ASCII: itself, or RFC 2047 encoded words folded with CRLF SP.

    >>> encoded("Agenda")
    'Agenda'
    >>> "\\r\\n " in encoded("Réunion du comité de coordination à Dakar : ordre du jour")
    True
    """
    if text.isascii():
        return text
    return Header(text, "utf-8").encode(linesep="\r\n")


def phrase(text: str) -> str:
    """A display name safe for a header: quoted, or RFC 2047 encoded if not ASCII."""
    if text.isascii():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return encoded(text)


def name_of(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def rewrite(raw: bytes, remove: set[str], add: list[tuple[str, str]]) -> bytes:
    """Drop the named fields (lower-case names) and put `add` at the top.

    >>> rewrite(b"Subject: hi\\r\\nList-Id: old\\r\\n\\r\\nbody", {"list-id"},
    ...         [("List-Id", "<new.example>")])
    b'List-Id: <new.example>\\r\\nSubject: hi\\r\\n\\r\\nbody'
    >>> rewrite(b"\\r\\nbody", set(), [("X", "a\\r\\nBcc: victim@example.org")])
    Traceback (most recent call last):
    ...
    ValueError: header value with a line break
    """
    fields, body = split(raw)
    for _, value in add:
        # Folding (CRLF then a space or tab, RFC 5322 §2.2.3) is the only line break allowed.
        if "\r" in value.replace("\r\n ", "").replace("\r\n\t", "") or \
                "\n" in value.replace("\r\n ", "").replace("\r\n\t", ""):
            raise ValueError("header value with a line break")
    kept = [field for field in fields if name_of(field) not in remove]
    added = [f"{name}: {value}\r\n".encode() for name, value in add]
    return b"".join(added + kept) + b"\r\n" + body


def header_unsafe(text: str) -> str | None:
    """Why `text` cannot go into a header field as it is, or None: a line break would
    start a field of its own (header injection), a NUL is not text (RFC 5322 §2.2).

    >>> header_unsafe("Steering Committee") is None
    True
    >>> header_unsafe("Board\\r\\nBcc: everyone@example.org")
    'it holds a line break (CR or LF)'
    """
    if "\r" in text or "\n" in text:
        return "it holds a line break (CR or LF)"
    if "\0" in text:
        return "it holds a NUL character"
    return None
