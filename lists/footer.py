"""Adding the list footer without breaking the message's MIME structure.

- A plain-text body in 7bit/8bit and US-ASCII or UTF-8 gets the footer appended in place.
- A multipart/mixed message gets the footer as one more text/plain part.
- Anything else (multipart/alternative, HTML, base64 or quoted-printable text, other
  charsets) is wrapped, untouched, as the first part of a new multipart/mixed, with the
  footer as the second part; the original bytes are kept exactly.
- A message with a text/calendar part (an invitation) or a signature (multipart/signed,
  RFC 1847) gets no footer: calendar clients must see the invitation as sent, and a
  signature must keep verifying.
"""

from __future__ import annotations

import re
import secrets
from email.message import EmailMessage

from mailer import rawmail
from mailer.inbound import parse

CONTENT_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition",
                  "content-id", "content-description", "content-language", "content-md5")


def _headers(raw: bytes) -> EmailMessage:
    head, _ = rawmail.split(raw)
    return parse(b"".join(head) + b"\r\n")


def skip_reason(message: EmailMessage) -> str | None:
    """Why this message must not get a footer, or None."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "text/calendar":
            return "it carries a calendar invitation"
        if kind in ("multipart/signed", "multipart/encrypted", "application/pkcs7-mime"):
            return "it is signed or encrypted"
    return None


def add_footer(raw: bytes, message: EmailMessage, footer: str) -> bytes:
    """The message with the footer added as the rules above say (or unchanged).

    >>> raw = b"Subject: x\\r\\n\\r\\nHello\\r\\n"
    >>> from email import message_from_bytes
    >>> add_footer(raw, _headers(raw), "Leave: x-leave@example.org")
    b'Subject: x\\r\\n\\r\\nHello\\r\\n\\r\\n-- \\r\\nLeave: x-leave@example.org\\r\\n'
    """
    if skip_reason(message):
        return raw
    text = footer.strip().replace("\r\n", "\n").replace("\n", "\r\n")
    head = _headers(raw)
    kind = head.get_content_type()
    encoding = str(head.get("content-transfer-encoding", "7bit")).strip().lower()
    charset = (head.get_content_charset() or "us-ascii").lower()
    if kind == "text/plain" and encoding in ("7bit", "8bit") and \
            charset in ("us-ascii", "utf-8", "ascii"):
        return _append(raw, text, charset)
    if kind == "multipart/mixed" and head.get_boundary():
        inserted = _insert_part(raw, str(head.get_boundary()), text)
        if inserted is not None:
            return inserted
    return _wrap(raw, text)


def _footer_part(text: str) -> bytes:
    return (b"Content-Type: text/plain; charset=\"utf-8\"\r\n"
            b"Content-Transfer-Encoding: 8bit\r\nContent-Disposition: inline\r\n"
            b"Content-Description: list footer\r\n\r\n" + text.encode() + b"\r\n")


def _append(raw: bytes, text: str, charset: str) -> bytes:
    fields, body = rawmail.split(raw)
    if not body.endswith(b"\r\n") and body:
        body += b"\r\n"
    addition = b"\r\n-- \r\n" + text.encode() + b"\r\n"
    if not text.isascii():
        fields = _eight_bit(fields, charset)
    return b"".join(fields) + b"\r\n" + body + addition


def _eight_bit(fields: list[bytes], charset: str) -> list[bytes]:
    """Label the part for 8-bit UTF-8 text (RFC 2045 §6.2), keeping its other parameters.

    UTF-8 is a superset of US-ASCII, so an ASCII part is relabelled, not rewritten.
    """
    kept = [f for f in fields if rawmail.name_of(f) != "content-transfer-encoding"]
    relabelled = []
    for field in kept:
        if rawmail.name_of(field) == "content-type" and charset != "utf-8":
            value = field.split(b":", 1)[1].strip()
            value = re.sub(rb';\s*charset\s*=\s*"?[^";\s]*"?', b"", value, flags=re.I)
            field = b"Content-Type: " + value + b'; charset="utf-8"\r\n'
        relabelled.append(field)
    if not any(rawmail.name_of(f) == "content-type" for f in relabelled):
        relabelled.append(b'Content-Type: text/plain; charset="utf-8"\r\n')
    return relabelled + [b"Content-Transfer-Encoding: 8bit\r\n"]


def _insert_part(raw: bytes, boundary: str, text: str) -> bytes | None:
    closing = b"\r\n--" + boundary.encode() + b"--"
    at = raw.rfind(closing)
    if at < 0:
        return None
    part = b"\r\n--" + boundary.encode() + b"\r\n" + _footer_part(text).rstrip(b"\r\n")
    return raw[:at] + part + raw[at:]


def _wrap(raw: bytes, text: str) -> bytes:
    fields, body = rawmail.split(raw)
    inner = [f for f in fields if rawmail.name_of(f) in CONTENT_FIELDS]
    outer = [f for f in fields if rawmail.name_of(f) not in CONTENT_FIELDS
             and rawmail.name_of(f) != "mime-version"]
    if not any(rawmail.name_of(f) == "content-type" for f in inner):
        inner.append(b"Content-Type: text/plain; charset=\"us-ascii\"\r\n")
    boundary = f"==alliance-{secrets.token_hex(12)}=="
    outer += [b"MIME-Version: 1.0\r\n",
              f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n".encode()]
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    sep = b"--" + boundary.encode()
    return (b"".join(outer) + b"\r\n" + sep + b"\r\n" + b"".join(inner) + b"\r\n" + body
            + sep + b"\r\n" + _footer_part(text) + sep + b"--\r\n")
