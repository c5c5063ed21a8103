"""Reading the iTIP objects that incoming mail carries (RFC 6047 §2.4, RFC 5546 §3.2).

Pure: a parsed message goes in, frozen dataclasses come out; nothing here touches the
database. Calendars are found the way clients really send them (reference/itip.md §2.2,
"Incoming"): `text/calendar` with or without `method=` (Apple), `application/ics` (Google's
`invite.ics`), `application/octet-stream` named `*.ics` (Outlook attachments), inside any
multipart and inside `message/rfc822`. Identical copies count once (Google sends two).

Each calendar is parsed from bytes with icalendar, and what it could not read is taken from
`component.errors`, never from an exception. The data is normalised: METHOD upper-case (the
object's METHOD wins over the MIME parameter), a missing ORGANIZER is allowed, a missing
DTSTAMP is the `Date:` header, a missing SEQUENCE is `X-MICROSOFT-CDO-APPT-SEQUENCE` or 0,
Windows TZIDs map to IANA zones, and the attendee's note is `X-RESPONSE-COMMENT` (Google) or
COMMENT (Outlook). Everything is bounded: parts looked at, nesting, bytes per calendar,
calendars per message, events per calendar, attendees, text lengths.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo

from icalendar import Calendar, Component
from icalendar.prop import vBroken
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

log = logging.getLogger(__name__)

MAX_PARTS = 100                 # MIME parts looked at in one message
MAX_DEPTH = 8                   # nesting of multiparts and attached messages
MAX_CALENDAR_BYTES = 256 * 1024  # a real REPLY is a few kilobytes
MAX_CALENDARS = 4               # distinct calendar parts parsed per message
MAX_EVENTS = 32                 # VEVENTs in one calendar (a master and its overrides)
MAX_ATTENDEES = 64
MAX_TEXT = 2000                 # characters kept of a comment, a location
BOM = b"\xef\xbb\xbf"            # a UTF-8 byte-order mark, as .NET's UTF8Encoding writes
ANSWERS = ("REPLY", "COUNTER", "REFRESH")   # what an attendee sends (RFC 5546 §1.4)
CALENDAR_TYPES = ("text/calendar", "application/ics")
_TOKEN = re.compile(r"[A-Z][A-Z0-9-]{0,15}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_METHOD = re.compile(rb"^METHOD:([A-Za-z-]+)\r?$", re.MULTILINE | re.IGNORECASE)
_FOLD = re.compile(rb"\r?\n[ \t]")
_NAME = re.compile(rb"([A-Za-z0-9-]{1,64})[;:]")
READ_FROM_REPLY = frozenset({b"BEGIN", b"END", b"METHOD", b"UID", b"SEQUENCE", b"DTSTAMP",
                             b"X-MICROSOFT-CDO-APPT-SEQUENCE", b"ORGANIZER", b"ATTENDEE",
                             b"COMMENT", b"RECURRENCE-ID"})
_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_PARAM = re.compile(r'([A-Za-z0-9!#$&^_.+*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


class ItipError(ValueError):
    """A calendar part that cannot be used, and why."""


@dataclass(frozen=True)
class AttendeeReply:
    """One ATTENDEE line, as an address and the parameters a reply may carry."""

    address: str
    name: str = ""
    partstat: str = "NEEDS-ACTION"
    sent_by: str = ""
    delegated_to: tuple[str, ...] = ()
    delegated_from: tuple[str, ...] = ()
    comment: str = ""               # Google's X-RESPONSE-COMMENT


@dataclass(frozen=True)
class ItipMessage:
    """The event of one iTIP object, normalised; `stamp` is epoch seconds or None."""

    method: str
    uid: str
    sequence: int
    stamp: float | None
    organizer: str
    attendees: tuple[AttendeeReply, ...]
    comment: str = ""
    recurrence_id: str = ""
    start: datetime | None = None
    end: datetime | None = None
    location: str = ""

    def attendee(self, address: str) -> AttendeeReply | None:
        """The ATTENDEE with this address, or None."""
        return next((a for a in self.attendees if a.address == address), None)

    def note(self, attendee: AttendeeReply) -> str:
        """What the attendee wrote: Google's X-RESPONSE-COMMENT, else the COMMENT."""
        return attendee.comment or self.comment


@dataclass(frozen=True)
class Calendars:
    """Every distinct iTIP object found in a message, and why any part was not used."""

    messages: tuple[ItipMessage, ...] = ()
    problems: tuple[str, ...] = ()

    def answer(self) -> ItipMessage | None:
        """The first REPLY, COUNTER or REFRESH (itip.md §2.2 "Incoming" step 2)."""
        return next((m for m in self.messages if m.method in ANSWERS), None)


@dataclass(frozen=True)
class Part:
    """A calendar-bearing MIME part: its bytes, its `method=` and its message's Date."""

    data: bytes
    method: str
    date: float | None


# -- finding the calendar parts ----------------------------------------------------------

def read(message: EmailMessage) -> Calendars:
    """Every distinct iTIP object in a message (RFC 6047 §2.4: all parts, any multipart)."""
    found: list[ItipMessage] = []
    problems: list[str] = []
    seen: set[bytes] = set()
    for part in parts(message, problems):
        digest = hashlib.sha256(part.data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        if len(seen) > MAX_CALENDARS:
            problems.append(f"more than {MAX_CALENDARS} calendars in one message")
            break
        try:
            parsed = parse(part.data, part.method, part.date)
        except ItipError as error:
            problems.append(str(error))
            continue
        if parsed not in found:
            found.append(parsed)
    return Calendars(tuple(found), tuple(problems))


def parts(message: Message, problems: list[str]) -> Iterator[Part]:
    """The calendar parts of a message in document order, within the walking bounds."""
    budget = [MAX_PARTS]
    yield from _walk(message, 0, message, budget, problems)


def _walk(part: Message, depth: int, dated: Message, budget: list[int],
          problems: list[str]) -> Iterator[Part]:
    """Depth-first over the MIME tree; `dated` is the message whose Date: applies."""
    budget[0] -= 1
    if budget[0] < 0:
        if budget[0] == -1:
            problems.append(f"more than {MAX_PARTS} MIME parts")
        return
    if depth > MAX_DEPTH:
        problems.append(f"MIME parts nested deeper than {MAX_DEPTH}")
        return
    content_type, params = content_type_of(part)
    if part.is_multipart():
        attached = content_type == "message/rfc822"
        children = part.get_payload()
        for child in children if isinstance(children, list) else ():
            if isinstance(child, Message):
                # An attached message's calendar is dated by that message (a DSN, a forward).
                yield from _walk(child, depth + 1, child if attached else dated, budget,
                                 problems)
        return
    if content_type == "application/ms-tnef":
        problems.append("an Outlook TNEF attachment (winmail.dat) without text/calendar")
        return
    if not is_calendar(part, content_type, params):
        return
    data = _payload(part, str(params.get("charset") or "utf-8").lower(), problems)
    if data is not None:
        yield Part(data, str(params.get("method") or "").upper(), _date(dated))


def content_type_of(part: Message) -> tuple[str, dict[str, str]]:
    """(type, parameters) of a part, read from the raw header with a light parser.

    The modern policy parses a header anew on every access, at a cost that would dominate
    a reply's processing; a part's type and its `method`, `charset` and `name` need far
    less. A part without a readable type is text/plain (RFC 2045 §5.2).

    >>> from mailer.inbound import parse
    >>> content_type_of(parse(b'Content-Type: Text/Calendar;\\r\\n METHOD=reply; '
    ...                       b'name="a; b.ics"\\r\\n\\r\\nx'))
    ('text/calendar', {'method': 'reply', 'name': 'a; b.ics'})
    >>> content_type_of(parse(b"Content-Type: nonsense\\r\\n\\r\\nx"))
    ('text/plain', {})
    """
    raw = next((str(value) for name, value in part.raw_items()
                if name.lower() == "content-type"), None)
    if raw is None:
        return part.get_content_type(), {}
    kind, _, rest = raw.replace("\r", "").replace("\n", "").partition(";")
    kind = kind.strip().lower()
    if not _MIME_TYPE.fullmatch(kind):
        return "text/plain", {}
    params = {name.lower(): value[1:-1] if value.startswith('"') else value
              for name, value in _PARAM.findall(rest)[:20]}
    return kind, params


def is_calendar(part: Message, content_type: str, params: dict[str, str]) -> bool:
    """Whether a leaf part holds iCalendar data (by type; octet-stream by its .ics name).

    >>> from email.message import EmailMessage
    >>> part = EmailMessage()
    >>> part.set_content(b"x", maintype="application", subtype="octet-stream",
    ...                  filename="Invite.ICS")
    >>> is_calendar(part, *content_type_of(part))
    True
    """
    if content_type in CALENDAR_TYPES:
        return True
    if content_type != "application/octet-stream":
        return False
    name = params.get("name") or part.get_filename() or ""
    return str(name).lower().endswith(".ics")


def _payload(part: Message, charset: str, problems: list[str]) -> bytes | None:
    """The decoded bytes of a calendar part, in UTF-8, or None if too large."""
    encoded = part.get_payload()
    if isinstance(encoded, str) and len(encoded) > MAX_CALENDAR_BYTES * 4 // 3 + 4096:
        problems.append(f"a calendar larger than {MAX_CALENDAR_BYTES} bytes")
        return None
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return None
    if len(data) > MAX_CALENDAR_BYTES:
        problems.append(f"a calendar larger than {MAX_CALENDAR_BYTES} bytes")
        return None
    if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
        # A charset Python does not know leaves the bytes to be read as UTF-8.
        with contextlib.suppress(LookupError, UnicodeError):
            data = data.decode(charset).encode("utf-8")
    return data


def _date(message: Message) -> float | None:
    """The Date: header of a message as epoch seconds, or None (RFC 5322 §3.6.1)."""
    value = message.get("date")
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# -- reading one calendar --------------------------------------------------------------

def parse(data: bytes, method: str = "", date_: float | None = None) -> ItipMessage:
    """One iTIP object from calendar bytes; ItipError says why it cannot be used.

    >>> reply = parse(b"BEGIN:VCALENDAR\\r\\nMETHOD:reply\\r\\nBEGIN:VEVENT\\r\\nUID:m1\\r\\n"
    ...               b"ATTENDEE;PARTSTAT=accepted:MAILTO:Ana@Party.test\\r\\n"
    ...               b"END:VEVENT\\r\\nEND:VCALENDAR\\r\\n", date_=1.0)
    >>> reply.method, reply.uid, reply.sequence, reply.stamp, reply.organizer
    ('REPLY', 'm1', 0, 1.0, '')
    >>> reply.attendees[0].address, reply.attendees[0].partstat
    ('ana@party.test', 'ACCEPTED')

    A UTF-8 byte-order mark before BEGIN:VCALENDAR is no content line (RFC 5545 §3.1):
    it is dropped, as RFC 3629 §6 allows a reader to (some Windows libraries write one).
    """
    calendar = _calendar(essentials(data.removeprefix(BOM)))
    events = calendar.walk("VEVENT")
    if not events:
        raise ItipError("a calendar without a VEVENT")
    if len(events) > MAX_EVENTS:
        raise ItipError(f"a calendar with more than {MAX_EVENTS} events")
    own = _text(calendar.get("METHOD"), 20).upper()
    if own in ANSWERS and len({_text(e.get("UID"), 255) for e in events}) > 1:
        raise ItipError("an answer about more than one UID (RFC 5546 §1.4: one per object)")
    if not own and method:
        raise ItipError(f"a calendar without METHOD in a part of method={method.upper()} "
                        "(RFC 5546 §1.4, RFC 6047 §2.4)")
    if own and method and method.upper() != own:
        raise ItipError(f"METHOD:{own} in a part of method={method.upper()} "
                        "(RFC 6047 §2.4: they must match)")
    event = next((e for e in events if e.get("RECURRENCE-ID") is None), events[0])
    _log_errors(calendar)
    return ItipMessage(
        method=own,
        uid=_text(event.get("UID"), 255),
        sequence=_sequence(event),
        stamp=_stamp(event, date_),
        organizer=_address(event.get("ORGANIZER")),
        attendees=_attendees(event),
        comment=_text(_first(event.get("COMMENT")), MAX_TEXT),
        recurrence_id=_text(_raw(event.get("RECURRENCE-ID")), 64),
        start=_when(event.get("DTSTART")),
        end=_when(event.get("DTEND")),
        location=_text(event.get("LOCATION"), MAX_TEXT),
    )


def essentials(data: bytes) -> bytes:
    """A REPLY or REFRESH cut down to the properties read from it; other data as it is.

    Only the attendee's PARTSTAT and note are taken from those (RFC 5546 §3.2.3), never a
    time, and icalendar's cost is per content line: time-zone rules, descriptions and
    Outlook's X- properties are most of a reply and are left out, which makes the parse
    three times cheaper. Lines are unfolded first (RFC 5545 §3.1). A COUNTER keeps all.

    >>> essentials(b"METHOD:REPLY\\r\\nBEGIN:VTIMEZONE\\r\\nTZID:X\\r\\nEND:VTIMEZONE\\r\\n"
    ...            b"BEGIN:VEVENT\\r\\nATTENDEE;CN=A\\r\\n B:mailto:a@b.test\\r\\nX-A:1\\r\\n")
    b'METHOD:REPLY\\r\\nBEGIN:VEVENT\\r\\nATTENDEE;CN=AB:mailto:a@b.test\\r\\n'
    """
    method = _METHOD.search(data)
    if method is None or method.group(1).upper() not in (b"REPLY", b"REFRESH"):
        return data
    lines = _without_time_zones(_FOLD.sub(b"", data).splitlines())
    kept = [line for line in lines
            if (name := _NAME.match(line)) and name.group(1).upper() in READ_FROM_REPLY]
    return b"\r\n".join(kept) + b"\r\n"


def _without_time_zones(lines: list[bytes]) -> list[bytes]:
    """The lines outside VTIMEZONE blocks, in one pass; a block never closed runs to the
    end (the calendar is then unusable, and goes to a person).

    >>> _without_time_zones([b"A", b"BEGIN:VTIMEZONE", b"X", b"END:VTIMEZONE", b"B"])
    [b'A', b'B']
    """
    kept: list[bytes] = []
    in_zone = False
    for line in lines:
        upper = line.strip().upper()
        if in_zone or upper == b"BEGIN:VTIMEZONE":
            in_zone = upper != b"END:VTIMEZONE"
            continue
        kept.append(line)
    return kept


def _calendar(data: bytes) -> Calendar:
    """The first VCALENDAR in the bytes; ItipError if there is none."""
    try:
        components = Calendar.from_ical(data, multiple=True)
    except Exception as error:
        # icalendar raises ValueError for unreadable content lines, and a hostile file
        # may find other ways to make a parser fail: whatever it is, the calendar is
        # unusable and the message goes to a person, never into quarantine.
        raise ItipError(f"unreadable iCalendar data ({type(error).__name__})") from error
    assert isinstance(components, list)
    calendar = next((c for c in components if isinstance(c, Calendar)), None)
    if calendar is None:
        raise ItipError("no VCALENDAR in the calendar data")
    return calendar


def _log_errors(calendar: Component) -> None:
    for component in calendar.walk():
        for name, error in component.errors[:5]:
            log.info("itip: %s %s not read: %s", component.name, name, str(error)[:200])


def _raw(value: Any) -> Any:
    """The text of a property even when icalendar could not type it (vBroken)."""
    if value is None:
        return None
    to_ical = getattr(value, "to_ical", None)
    if callable(to_ical):
        try:
            raw = to_ical()
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        except Exception:
            return str(value)
    return str(value)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _text(value: Any, limit: int) -> str:
    """A property or parameter as one clean line of text, bounded.

    >>> _text("  a\\x00b\\n c ", 10)
    'ab\\n c'
    """
    if value is None or isinstance(value, list):
        return ""
    return _CONTROL.sub("", str(value)).strip()[:limit]


def _address(value: Any) -> str:
    """A calendar address (`mailto:` URI, RFC 6047 §2.3) as a lower-case mail address.

    >>> _address("MAILTO:Ana@Party.test ")
    'ana@party.test'
    >>> _address(None)
    ''
    """
    text = _text(_first(value), 320)
    if text.lower().startswith("mailto:"):
        text = text[7:]
    return text.strip().lower()


def _addresses(value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value] if value else []
    return tuple(a for a in (_address(v) for v in values[:MAX_ATTENDEES]) if a)


def _partstat(value: Any) -> str:
    """PARTSTAT in upper case; NEEDS-ACTION when absent (RFC 5545 §3.2.12).

    Unknown x-names and IANA tokens are kept as they are; anything else is unreadable.

    >>> _partstat("accepted"), _partstat(None), _partstat("X-MAYBE"), _partstat("a b")
    ('ACCEPTED', 'NEEDS-ACTION', 'X-MAYBE', '')
    """
    text = _text(value, 40).upper() or "NEEDS-ACTION"
    return text if _TOKEN.fullmatch(text) else ""


def _attendees(event: Component) -> tuple[AttendeeReply, ...]:
    value = event.get("ATTENDEE")
    values = value if isinstance(value, list) else [value] if value is not None else []
    found = []
    for item in values[:MAX_ATTENDEES]:
        params = getattr(item, "params", {})
        found.append(AttendeeReply(
            address=_address(item),
            name=_text(params.get("CN"), 200),
            partstat=_partstat(params.get("PARTSTAT")),
            sent_by=_address(params.get("SENT-BY")),
            delegated_to=_addresses(params.get("DELEGATED-TO")),
            delegated_from=_addresses(params.get("DELEGATED-FROM")),
            comment=_text(params.get("X-RESPONSE-COMMENT"), MAX_TEXT)))
    return tuple(found)


def _integer(value: Any) -> int | None:
    """A non-negative integer property, or None if absent or unreadable.

    >>> _integer("7"), _integer("x"), _integer(None), _integer("-3")
    (7, None, None, 0)
    """
    try:
        number = int(str(_raw(value)).strip()) if value is not None else None
    except ValueError:
        return None
    return None if number is None else max(0, min(number, 2**31 - 1))


def _sequence(event: Component) -> int:
    """SEQUENCE; when absent, unreadable or 0, Outlook's X-MICROSOFT-CDO-APPT-SEQUENCE.

    Thunderbird reads the Outlook property the same way (itip.md §1.3).
    """
    sequence = _integer(event.get("SEQUENCE"))
    if sequence:
        return sequence
    return _integer(event.get("X-MICROSOFT-CDO-APPT-SEQUENCE")) or 0


def _stamp(event: Component, date_: float | None) -> float | None:
    """DTSTAMP as epoch seconds; when absent or unreadable, the message's Date: header."""
    when = _when(event.get("DTSTAMP"))
    if when is None:
        return date_
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _when(value: Any) -> datetime | None:
    """A DATE-TIME property as an aware datetime where a zone is known (Windows TZIDs too).

    A TZID that icalendar could not resolve (no VTIMEZONE, a Windows name) is looked up
    as an IANA name, then in the Windows table; a floating time stays naive, and DTSTAMP
    is UTC by definition (RFC 5545 §3.8.7.2).
    """
    if value is None or isinstance(value, vBroken):
        return None  # icalendar could not read it (RFC 5545 §3.3.5); its error is logged
    moment = getattr(value, "dt", None)
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            zone = zone_of(str(getattr(value, "params", {}).get("TZID", "") or ""))
            if zone is not None:
                moment = moment.replace(tzinfo=zone)
        return moment
    if isinstance(moment, date):
        return datetime(moment.year, moment.month, moment.day)
    return None


def zone_of(tzid: str) -> ZoneInfo | None:
    """The IANA zone a TZID names, directly or as a Windows name; None if unknown.

    >>> zone_of("W. Europe Standard Time")
    zoneinfo.ZoneInfo(key='Europe/Berlin')
    >>> zone_of("Africa/Nairobi")
    zoneinfo.ZoneInfo(key='Africa/Nairobi')
    >>> zone_of("GMT +0100 (Standard) / GMT +0200 (Daylight)") is None
    True
    """
    tzid = tzid.strip().strip('"')
    for name in (tzid, WINDOWS_TO_OLSON.get(tzid, "")):
        if not name or len(name) > 64 or ".." in name or name.startswith("/"):
            continue
        try:
            return ZoneInfo(name)
        except (ValueError, OSError, KeyError):
            continue
    return None
