"""iMIP messages (RFC 6047): the MIME shape that every calendar client recognises.

```
multipart/mixed
  multipart/alternative                      first child: Outlook 2007 looks only there
    text/plain; charset=utf-8
    text/html; charset=utf-8
    text/calendar; method=REQUEST; charset=UTF-8
  application/ics; name="invite.ics"          the same bytes, as an attachment
```
(reference/itip.md §2.2, CalConnect iMIP best practices). Pure: no database, no I/O.

A `Letterhead` is built once per (method, subject, sender name) with the `email` package;
`Letterhead.letter` then writes one recipient's message by putting their headers and their
base64 parts into it. Every leaf is base64, whose alphabet cannot form a MIME boundary, so
the substitution cannot change the structure; addresses are checked before they get here,
and names are stripped of line breaks and written as `Address` objects, which the email
policy quotes or RFC 2047-encodes and folds, so no header can be injected.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

_FROM = "from-marker@alliance.invalid"
_TO = "to-marker@alliance.invalid"
_TO_LINE = f"To: {_TO}\r\n".encode()
_MESSAGE_ID = "<message-id-marker@alliance.invalid>"
_PLAIN, _HTML, _CALENDAR = "@@plain-part@@", "@@html-part@@", "@@calendar-part@@"


@dataclass(frozen=True)
class Letter:
    """What differs for one recipient: their address, their token, their parts."""

    to_address: str
    to_name: str
    sender: str            # rsvp+TOKEN@domain: From, Reply-To and ORGANIZER alike
    plain: str
    html: str
    calendar: bytes


def one_line(text: str) -> str:
    """Text fit for a header: line breaks and runs of space become one space.

    >>> one_line("Ana\\r\\nBcc: x@y")
    'Ana Bcc: x@y'
    """
    return " ".join(text.split())


def mailbox(name: str, address: str) -> Address:
    """`Name <address>` as the email policy writes it (RFC 5322 §3.4, RFC 2047 §5).

    The policy quotes an ASCII name, encodes any other, and folds the header at 78
    columns (RFC 5322 §2.2.3); the name loses its line breaks first.
    """
    return Address(display_name=one_line(name), addr_spec=address)


def address_line(field: str, name: str, address: str) -> bytes:
    """One folded `Field: Name <address>` header line, CRLF-terminated.

    >>> address_line("To", "Zoë", "zoe@example.org")
    b'To: =?utf-8?q?Zo=C3=AB?= <zoe@example.org>\\r\\n'
    """
    _, header = SMTP.header_store_parse(field, mailbox(name, address))
    return SMTP.fold_binary(field, header)


def _leaf(content_type: str, marker: str, disposition: str = "") -> EmailMessage:
    part = EmailMessage(policy=SMTP)
    part["Content-Type"] = content_type
    part["Content-Transfer-Encoding"] = "base64"
    if disposition:
        part["Content-Disposition"] = disposition
    part.set_payload(marker)
    return part


def canonical(text: str) -> bytes:
    """Text as a text/* part must carry it: UTF-8, every line ending in CRLF (RFC 2046
    §4.1.1), also inside base64, which would otherwise keep the bare line feeds.

    >>> canonical("Hello\\nworld\\r\\n")
    b'Hello\\r\\nworld\\r\\n'
    """
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _b64(data: bytes) -> bytes:
    """Base64 in 76-column CRLF lines (RFC 2045 §6.8), without the last line break."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


@dataclass(frozen=True)
class Letterhead:
    """A serialised message with markers where each recipient's parts go."""

    skeleton: bytes
    domain: str

    def letter(self, letter: Letter) -> bytes:
        """One recipient's complete message."""
        calendar = _b64(letter.calendar)
        return (self.skeleton
                .replace(_FROM.encode(), letter.sender.encode("ascii"))
                .replace(_TO_LINE, address_line("To", letter.to_name, letter.to_address))
                .replace(_MESSAGE_ID.encode(), make_msgid(domain=self.domain).encode())
                .replace(_PLAIN.encode(), _b64(canonical(letter.plain)))
                .replace(_HTML.encode(), _b64(canonical(letter.html)))
                .replace(_CALENDAR.encode(), calendar))


def letterhead(*, method: str, subject: str, sender_name: str, domain: str) -> Letterhead:
    """The message shape of reference/itip.md §2.2 for one method and one subject.

    The text/calendar `method` parameter equals the METHOD inside (RFC 6047 §2.4).
    """
    alternative = EmailMessage(policy=SMTP)
    alternative["Content-Type"] = "multipart/alternative"
    for part in (_leaf('text/plain; charset="utf-8"', _PLAIN),
                 _leaf('text/html; charset="utf-8"', _HTML),
                 _leaf(f'text/calendar; charset="UTF-8"; method={method}', _CALENDAR)):
        alternative.attach(part)
    message = EmailMessage(policy=SMTP)
    message["From"] = mailbox(sender_name, _FROM)
    message["Reply-To"] = _FROM
    message["To"] = _TO
    message["Subject"] = one_line(subject)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = _MESSAGE_ID
    message["MIME-Version"] = "1.0"
    # RFC 3834: robot mail, so that out-of-office responders stay quiet; Exchange reads
    # X-Auto-Response-Suppress for the same purpose.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    message["Content-Type"] = "multipart/mixed"
    message.attach(alternative)
    message.attach(_leaf('application/ics; name="invite.ics"', _CALENDAR,
                         'attachment; filename="invite.ics"'))
    # The email package quotes every parameter; write method=REQUEST bare, as Outlook and
    # Google do, for parsers that compare the raw token.
    skeleton = message.as_bytes().replace(f'method="{method}"'.encode(),
                                          f"method={method}".encode())
    return Letterhead(skeleton, domain)
