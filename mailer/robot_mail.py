"""Robot mail: a plain-text automatic message, its headers set by code.

Every robot message says it is automatic (RFC 3834 `Auto-Submitted`), so that no other
robot answers it, and nothing we send ever answers one.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid


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
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = auto
    message["X-Auto-Response-Suppress"] = "All"
    if reply_to:
        message["Reply-To"] = reply_to
    if in_reply_to and "\n" not in in_reply_to and "\r" not in in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in headers:
        message[name] = value
    message.set_content(body, charset="utf-8")
    return message.as_bytes(policy=SMTP)
