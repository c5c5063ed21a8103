"""Robot mail: a plain-text automatic message, its headers set by code.

Every robot message says it is automatic (RFC 3834 `Auto-Submitted`), so that no other
robot answers it, and nothing we send ever answers one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid

from mailer import rawmail

CONTENT_FIELDS = ("content-type", "content-transfer-encoding", "mime-version")


def robot_message(*, sender: tuple[str, str], to: str, subject: str, body: str,
                  domain: str, reply_to: str | None = None,
                  in_reply_to: str | None = None, auto: str = "auto-replied",
                  headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A plain-text message from a robot address, with its headers set here.

    Made under the SMTP policy, so that its text ends lines in CRLF however it is encoded
    (RFC 2046 §4.1.1): the default policy would base64-encode bare line feeds.
    """
    message = EmailMessage(policy=SMTP)
    message["From"] = formataddr(sender)
    message["To"] = to
    # A subject is often made of a stranger's (their post's Subject): every kind of line
    # break Python knows (\x85, \u2028 as well as CR and LF) becomes a space.
    message["Subject"] = " ".join(subject.split())
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = auto
    message["X-Auto-Response-Suppress"] = "All"
    if reply_to:
        message["Reply-To"] = reply_to
    if in_reply_to and len(in_reply_to.splitlines()) == 1:      # also \x85, \u2028
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in headers:
        message[name] = " ".join(value.split())
    message.set_content(body, charset="utf-8")
    return message.as_bytes(policy=SMTP)


def with_original(robot: bytes, original: bytes) -> bytes:
    """A robot message with a message it is about attached, byte for byte.

    `multipart/mixed` (RFC 2046 §5.1.3): the robot's text first, then the original as
    `message/rfc822` (§5.2.1: 7bit or 8bit, never re-encoded), so that what a person wrote
    arrives as they wrote it, under a note that says what it is about.
    """
    fields, body = rawmail.split(robot)
    content = [f for f in fields if rawmail.name_of(f) in CONTENT_FIELDS[:2]]
    headers = [f for f in fields if rawmail.name_of(f) not in CONTENT_FIELDS]
    boundary = f"=_alliance_{secrets.token_hex(12)}".encode()
    inner = original if original.endswith(b"\r\n") else original + b"\r\n"
    encoding = b"7bit" if original.isascii() else b"8bit"
    return (b"".join(headers) + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
            b'boundary="' + boundary + b'"\r\n\r\n--' + boundary + b"\r\n"
            + b"".join(content) + b"\r\n" + body.rstrip(b"\r\n") + b"\r\n\r\n--" + boundary
            + b"\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n"
            b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + inner
            + b"\r\n--" + boundary + b"--\r\n")
