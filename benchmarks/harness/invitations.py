"""Scenario E's mail: invitations at the sink taken apart, and replies as Thunderbird's.

Only the stdlib: `email` for the MIME structure, and a small iCalendar line reader
(RFC 5545 §3.1) for the text/calendar part.
"""

from __future__ import annotations

import base64
import email
import email.utils
import re
import time
from dataclasses import dataclass


def unfold(text: str) -> list[str]:
    """The content lines of an iCalendar text, unfolded (RFC 5545 §3.1).

    >>> unfold("SUMMARY:Bench\\r\\n  Forum\\r\\nUID:1\\r\\n")
    ['SUMMARY:Bench Forum', 'UID:1']
    """
    return [line for line in re.sub(r"\r?\n[ \t]", "", text).splitlines() if line]


def split_property(line: str) -> tuple[str, dict[str, str], str]:
    """NAME, its parameters (upper-cased names) and its value; quoted ':' and ';' kept.

    >>> split_property('attendee;cn="A: B";partstat=ACCEPTED:mailto:a@b.test')
    ('ATTENDEE', {'CN': 'A: B', 'PARTSTAT': 'ACCEPTED'}, 'mailto:a@b.test')
    """
    parts, current, quoted, value = [], "", False, ""
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        if not quoted and char in ";:":
            parts.append(current)
            current = ""
            if char == ":":
                value = line[index + 1:]
                break
            continue
        current += char
    params = {}
    for part in parts[1:]:
        key, _, text = part.partition("=")
        params[key.upper()] = text.strip('"')
    return parts[0].upper() if parts else line.upper(), params, value


def components(lines: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(the VCALENDAR's own lines, the first VEVENT's own lines, the VTIMEZONE lines).

    The event's own lines leave out its sub-components (a VALARM's DESCRIPTION is not
    the event's); the VTIMEZONE lines are kept whole, BEGIN to END.
    """
    calendar: list[str] = []
    event: list[str] = []
    zone: list[str] = []
    stack: list[str] = []
    events = 0
    for line in lines:
        name, _, value = split_property(line)
        if name == "BEGIN":
            stack.append(value.upper())
            events += value.upper() == "VEVENT"
        if "VTIMEZONE" in stack:
            zone.append(line)
        elif stack == ["VCALENDAR"] and name not in ("BEGIN", "END"):
            calendar.append(line)
        elif stack == ["VCALENDAR", "VEVENT"] and events == 1 and name not in ("BEGIN",
                                                                                  "END"):
            event.append(line)
        if name == "END" and stack:
            stack.pop()
    return calendar, event, zone


@dataclass(frozen=True)
class Invited:
    """One transaction at the sink, read as an invitation."""

    recipients: tuple[str, ...]     # X-Rcpt-Args: the envelope recipients
    mail_from: str                  # X-Mail-Args: the envelope sender
    to: tuple[str, ...]             # the To: addresses
    sender: str                     # the From: address
    parts: tuple[str, ...]          # content types, depth first
    method_param: str               # the text/calendar part's method parameter
    calendar: str                   # that part, decoded

    def props(self, name: str) -> list[tuple[dict[str, str], str]]:
        """The VEVENT's own properties of that name: (parameters, value)."""
        return [(params, value) for key, params, value in
                map(split_property, components(unfold(self.calendar))[1]) if key == name]

    def prop(self, name: str) -> str:
        """The value of the VEVENT's first property of that name ("" if none)."""
        found = self.props(name)
        return found[0][1] if found else ""


def read_invited(record: bytes) -> Invited:
    """An smtp-sink transaction (its X- lines, then the message) as an invitation."""
    message = email.message_from_bytes(record)

    def envelope(name: str) -> list[str]:
        return [str(v).split(">", 1)[0].strip(" <").lower() for v in message.get_all(name, [])]

    def addresses(name: str) -> tuple[str, ...]:
        return tuple(a.lower() for _, a in email.utils.getaddresses(message.get_all(name, []))
                     if a)

    calendar, method, parts = "", "", []
    for part in message.walk():
        parts.append(part.get_content_type())
        if part.get_content_type() == "text/calendar" and not calendar:
            payload = part.get_payload(decode=True)
            calendar = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            method = str(part.get_param("method") or "")
    return Invited(tuple(envelope("X-Rcpt-Args")), (envelope("X-Mail-Args") or [""])[0],
                   addresses("To"), (addresses("From") or ("",))[0], tuple(parts), method,
                   calendar)


def check_invitation(invited: Invited, uid: str) -> list[str]:
    """What is wrong with one invitation taken apart (RFC 6047 §2.4, RFC 5546 §3.2.2)."""
    wrong = []
    [recipient] = invited.recipients[:1] or [""]
    if invited.to != (recipient,):
        wrong.append(f"To: {invited.to}, envelope {invited.recipients}")
    if invited.parts[:5] != ("multipart/mixed", "multipart/alternative", "text/plain",
                             "text/html", "text/calendar"):
        wrong.append(f"MIME parts {invited.parts}")
    if invited.method_param != "REQUEST":
        wrong.append(f"text/calendar method={invited.method_param!r}")
    calendar, _, _ = components(unfold(invited.calendar))
    if "METHOD:REQUEST" not in calendar:
        wrong.append(f"calendar METHOD lines {[c for c in calendar if 'METHOD' in c]}")
    attendees = [value.lower() for _, value in invited.props("ATTENDEE")]
    if attendees != [f"mailto:{recipient}"]:
        wrong.append(f"ATTENDEE {attendees}, not {recipient}")
    organizer = invited.prop("ORGANIZER").lower()
    if not (invited.sender.startswith("rsvp+") and organizer == f"mailto:{invited.sender}"
            == f"mailto:{invited.mail_from}"):
        wrong.append(f"ORGANIZER {organizer}, From {invited.sender}, "
                     f"MAIL FROM {invited.mail_from}")
    if invited.prop("UID") != uid or invited.prop("SEQUENCE") != "0":
        wrong.append(f"UID {invited.prop('UID')!r} SEQUENCE {invited.prop('SEQUENCE')!r}")
    return [f"{recipient}: {w}" for w in wrong]


def fold(line: str) -> str:
    """One content line folded at 75 octets (RFC 5545 §3.1), CRLF-terminated."""
    raw, out = line.encode(), list[bytes]()
    while len(raw) > 75:
        cut = 75 if not out else 74
        while cut and (raw[cut] & 0xC0) == 0x80:   # never inside a UTF-8 sequence
            cut -= 1
        out.append(raw[:cut])
        raw = raw[cut:]
    out.append(raw)
    return b"\r\n ".join(out).decode() + "\r\n"


def base64_lines(data: bytes) -> bytes:
    """Base64 in 76-column CRLF lines (RFC 2045 §6.8), without the last line break."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def attendee_name(invited: Invited) -> str:
    """The CN of the invitation's (first) ATTENDEE ("" if none)."""
    attendee = invited.props("ATTENDEE")
    return attendee[0][0].get("CN", "") if attendee else ""


def reply_calendar(invited: Invited) -> bytes:
    """The METHOD:REPLY calendar, ACCEPTED, as Thunderbird writes it (see make_reply)."""
    invitee = invited.recipients[0]
    _, event, zone = components(unfold(invited.calendar))
    own = {split_property(line)[0]: line for line in reversed(event)}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    sequence = invited.prop("SEQUENCE") or "0"
    lines = ["BEGIN:VCALENDAR", "PRODID:-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN",
             "VERSION:2.0", "METHOD:REPLY", *zone, "BEGIN:VEVENT",
             f"CREATED:{stamp}", f"LAST-MODIFIED:{stamp}", f"DTSTAMP:{stamp}",
             f"UID:{invited.prop('UID')}", own.get("SUMMARY", "SUMMARY:"), own["ORGANIZER"],
             f"ATTENDEE;CN={attendee_name(invited)};PARTSTAT=ACCEPTED;ROLE=REQ-PARTICIPANT;"
             f"CUTYPE=INDIVIDUAL:mailto:{invitee}", own["DTSTART"], own["DTEND"],
             f"SEQUENCE:{sequence}", own.get("LOCATION", "LOCATION:"), "TRANSP:OPAQUE",
             f"X-MOZ-RECEIVED-SEQUENCE:{sequence}",
             f"X-MOZ-RECEIVED-DTSTAMP:{invited.prop('DTSTAMP')}", "X-MOZ-GENERATION:1",
             "END:VEVENT", "END:VCALENDAR"]
    return "".join(fold(line) for line in lines).encode()


def make_reply(invited: Invited, index: int, run_id: str) -> tuple[str, bytes]:
    """ACCEPTED, as Thunderbird sends it (tests/data/replies/thunderbird-reply-*.eml).

    From the invitee to the rsvp+TOKEN@ address the invitation came from; the UID, the
    SEQUENCE, DTSTART/DTEND, SUMMARY, LOCATION, ORGANIZER and the VTIMEZONE are those of
    the invitation, DTSTAMP is the time of the reply, and the invitation's own DTSTAMP
    and SEQUENCE are echoed in X-MOZ-RECEIVED-*, as Thunderbird does.
    """
    invitee, rsvp, name = invited.recipients[0], invited.sender, attendee_name(invited)
    calendar = reply_calendar(invited)
    summary = invited.prop("SUMMARY").replace("\\,", ",").replace("\\;", ";")
    message_id = f"<reply.{run_id}.{index}@delegates.test>"
    outer, inner = f"------------{index:012d}Mixed", f"------------{index:012d}Alter"
    data = (f"Message-ID: {message_id}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            "MIME-Version: 1.0\r\nUser-Agent: Mozilla Thunderbird\r\n"
            f"From: {name} <{invitee}>\r\nTo: {rsvp}\r\n"
            f"Subject: Accepted: {summary}\r\n"
            f'Content-Type: multipart/mixed; boundary="{outer}"\r\n\r\n'
            "This is a multi-part message in MIME format.\r\n"
            f"--{outer}\r\nContent-Type: multipart/alternative;\r\n boundary=\"{inner}\"\r\n\r\n"
            f"--{inner}\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"{name} <{invitee}> has accepted your invitation.\r\n\r\n"
            f"--{inner}\r\nContent-Type: text/calendar; method=REPLY; charset=UTF-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + calendar + (
            f"\r\n--{inner}--\r\n--{outer}\r\n"
            'Content-Type: application/ics; name="invite.ics"\r\n'
            'Content-Disposition: attachment; filename="invite.ics"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + base64_lines(calendar) + (
            f"\r\n--{outer}--\r\n").encode()
    return message_id, data
