"""Meetings: created with their times checked, each with a stable UID and a SEQUENCE.

A meeting's times are the organiser's wall-clock times in an IANA zone (RFC 5545 §3.3.5
form 3, "date with local time and time zone reference"), stored with the UTC instants
beside them. Bad input is refused with one line naming the problem, before anything is
stored.
"""

from __future__ import annotations

import re
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import rawmail
from meetings.models import Invitation, Meeting
from meetings.organisation import MeetingError, find_body, find_party

if TYPE_CHECKING:
    from meetings import ical
    from meetings.meeting_site import MeetingSite

STATUSES = ("CONFIRMED", "TENTATIVE")


@dataclass(frozen=True)
class Times:
    """Checked start and end: wall-clock times in `tz`, and their UTC instants."""

    tz: str
    start_local: str
    end_local: str
    starts_at: float
    ends_at: float


@dataclass(frozen=True)
class Plan:
    """What `alliance meeting create` is given."""

    body: str
    title: str
    start: str
    end: str
    tz: str
    location: str = ""
    host: str = ""
    alongside: str = ""
    description: str = ""
    agenda_url: str = ""
    send_at: str = ""


# The areas of the IANA database's place names (tz-link.html, "Area/Location"). Other
# names are abbreviations (CET, EST), POSIX rules (EST5EDT) or the old names kept in
# `backward` (US/Eastern): they hide the place, and CET, for one, is now Brussels' rules.
AREAS = ("Africa", "America", "Antarctica", "Arctic", "Asia", "Atlantic", "Australia",
         "Europe", "Indian", "Pacific")
UNIVERSAL = ("UTC", "Etc/UTC")
# What to name instead of an abbreviation, when the database's own links do not say.
INSTEAD = {"CET": "Europe/Paris", "CEST": "Europe/Paris", "MET": "Europe/Paris",
           "EET": "Europe/Athens", "WET": "Europe/Lisbon", "GMT": "Europe/London",
           "BST": "Europe/London", "EST": "America/New_York", "EDT": "America/New_York",
           "EST5EDT": "America/New_York", "CST6CDT": "America/Chicago",
           "MST": "America/Denver", "MST7MDT": "America/Denver",
           "PST8PDT": "America/Los_Angeles", "HST": "Pacific/Honolulu",
           "IST": "Asia/Kolkata", "JST": "Asia/Tokyo", "EAT": "Africa/Nairobi",
           "WAT": "Africa/Lagos", "CAT": "Africa/Maputo", "SAST": "Africa/Johannesburg"}


def _place_name(name: str) -> bool:
    return name in UNIVERSAL or (name.partition("/")[0] in AREAS and "/" in name)


def _links() -> dict[str, str]:
    """The database's old names and the place names they stand for (`L` lines of
    tzdata.zi, where the system has it)."""
    for folder in zoneinfo.TZPATH:
        path = Path(folder) / "tzdata.zi"
        if path.is_file():
            return {old: new for kind, new, old in (line.split()[:3] for line in
                    path.read_text().splitlines() if line.startswith("L "))
                    if kind == "L"}
    return {}


def suggestion(name: str) -> str:
    """The IANA place name to use instead of `name`, or "".

    >>> suggestion("paris"), suggestion("new york"), suggestion("CET")
    ('Europe/Paris', 'America/New_York', 'Europe/Paris')
    """
    wanted = name.strip().replace(" ", "_").casefold()
    if name.strip().upper() in INSTEAD:
        return INSTEAD[name.strip().upper()]
    target = _links().get(name.strip(), "")
    if _place_name(target) and target not in UNIVERSAL:
        return target
    places = sorted(z for z in zoneinfo.available_timezones() if _place_name(z))
    return next((z for z in places if z.casefold() == wanted), "") or \
        next((z for z in places if z.rpartition("/")[2].casefold() == wanted), "")


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone of a place (or UTC), or MeetingError naming the one to use."""
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, KeyError):
        better = suggestion(name)
        raise MeetingError(f"unknown time zone {name!r}; "
                           + (f"did you mean {better}?" if better else
                              "use an IANA name such as Europe/Berlin")) from None
    if not _place_name(name):
        better = suggestion(name) or "Europe/Berlin"
        raise MeetingError(f"{name!r} is not the time zone of a place (its rules may not be "
                           f"those of yours); use an IANA name such as {better}")
    return zone


def wall_time(text: str, what: str, zone: ZoneInfo) -> datetime:
    """A date and time in `zone` that names exactly one instant, or MeetingError.

    A time in the hour skipped when the clocks go forward names no instant, and one in
    the hour repeated when they go back names two. RFC 5545 §3.3.5 reads them by a rule
    (the offset before the gap, the first of the two) the organiser may not have meant,
    and calendar clients differ, so both are refused. An offset, when given, must be the
    zone's own at that time, so that --start and --tz cannot disagree.

    >>> wall_time("2027-03-14T09:00", "start", ZoneInfo("Europe/Berlin")).isoformat()
    '2027-03-14T09:00:00+01:00'
    >>> wall_time("2027-03-28T02:30", "start", ZoneInfo("Europe/Berlin"))
    Traceback (most recent call last):
    meetings.organisation.MeetingError: start: 2027-03-28 02:30 Europe/Berlin does not \
exist (the clocks go forward); choose another time
    """
    if re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", text.strip()):
        raise MeetingError(f"{what}: {text.strip()} has no time; give one, such as "
                           f"{text.strip()}T09:00 (delegates in other zones need it)")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MeetingError(f"{what}: not a date and time (YYYY-MM-DDTHH:MM): "
                           f"{text!r}") from None
    local = moment.replace(tzinfo=zone)
    _check_exists(local, what)
    if moment.tzinfo is not None and moment.utcoffset() != local.utcoffset():
        raise MeetingError(f"{what}: the offset of {text.strip()!r} is not that of {zone} "
                           f"at that time ({local:%z}); give the local time without one")
    return local


def _check_exists(local: datetime, what: str) -> None:
    """Refuse a wall time in a gap (no instant) or a fold (two instants) of its zone."""
    shown = f"{local:%Y-%m-%d %H:%M} {local.tzinfo}"
    there_and_back = local.astimezone(UTC).astimezone(local.tzinfo)
    if there_and_back.replace(tzinfo=None) != local.replace(tzinfo=None):
        raise MeetingError(f"{what}: {shown} does not exist (the clocks go forward); "
                           "choose another time")
    if local.replace(fold=1).utcoffset() != local.replace(fold=0).utcoffset():
        raise MeetingError(f"{what}: {shown} happens twice (the clocks go back); "
                           "choose another time")


def times(start: str, end: str, tz: str, now: float) -> Times:
    """Check a meeting's times: a known zone, an end after the start, a start to come."""
    zone = time_zone(tz)
    begins, ends = wall_time(start, "start", zone), wall_time(end, "end", zone)
    if ends <= begins:
        raise MeetingError(f"the meeting would end ({_show(ends)}) before it starts "
                           f"({_show(begins)})")
    if begins.timestamp() <= now:
        raise MeetingError(f"the start ({_show(begins)}) is in the past")
    return Times(tz, _local(begins), _local(ends), begins.timestamp(), ends.timestamp())


def moved(meeting: Meeting, when: Times) -> bool:
    """Whether new times differ from the meeting's: zone, start or end."""
    return (meeting.tz, meeting.start_local, meeting.end_local) != \
        (when.tz, when.start_local, when.end_local)


def _local(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")


def _show(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} {moment.tzinfo}"


def _send_at(text: str, zone: ZoneInfo, now: float, starts_at: float) -> float | None:
    """When the invitations go out: None for a draft (no --send-at), now for "now"."""
    if not text.strip():
        return None
    if text.strip().casefold() == "now":
        return now
    moment = wall_time(text, "send-at", zone).timestamp()
    if moment >= starts_at:
        raise MeetingError("send-at must come before the meeting starts")
    return max(moment, now)


def text(value: str, what: str, limit: int) -> str:
    """One line of at most `limit` characters, or MeetingError (a line break or a NUL
    would reach the Subject and the calendar's fields)."""
    problem = rawmail.header_unsafe(value)
    if problem is not None:
        raise MeetingError(f"{what} cannot be used: {problem}")
    value = " ".join(value.split())
    if len(value) > limit:
        raise MeetingError(f"{what} is longer than {limit} characters")
    return value


def url(value: str) -> str:
    """An http(s) URL without spaces, or MeetingError."""
    value = value.strip()
    if value and not value.startswith(("https://", "http://")):
        raise MeetingError(f"the agenda URL must start with https:// ({value!r})")
    if any(c.isspace() for c in value) or len(value) > 1000:
        raise MeetingError("the agenda URL is not a single URL of up to 1000 characters")
    return value


def create(session: Session, site: MeetingSite, plan: Plan) -> Meeting:
    """A new meeting of a body, with a fresh UID and SEQUENCE 0 (RFC 5545 §3.8.4.7)."""
    body = find_body(session, plan.body)
    host = find_party(session, plan.host) if plan.host.strip() else None
    now = site.clock()
    when = times(plan.start, plan.end, plan.tz, now)
    title = text(plan.title, "the title", 300)
    if not title:
        raise MeetingError("a meeting needs a title")
    meeting = Meeting(uid=f"{uuid.uuid4()}@{site.domain}", body_id=body.id, title=title,
                      description=plan.description.strip(),
                      location=text(plan.location, "the location", 300),
                      tz=when.tz, start_local=when.start_local, end_local=when.end_local,
                      starts_at=when.starts_at, ends_at=when.ends_at,
                      host_party_id=host.id if host else None,
                      alongside=text(plan.alongside, "the alongside event", 300),
                      agenda_url=url(plan.agenda_url),
                      send_at=_send_at(plan.send_at, time_zone(plan.tz), now, when.starts_at),
                      status="CONFIRMED", sequence=0, created_at=now, updated_at=now)
    session.add(meeting)
    session.flush()
    return meeting


@dataclass(frozen=True)
class Changes:
    """What `alliance meeting update` may change; None leaves a field as it is."""

    title: str | None = None
    description: str | None = None
    location: str | None = None
    agenda_url: str | None = None
    alongside: str | None = None
    status: str | None = None
    host: str | None = None      # a member party's name; "" for no host
    send_at: str | None = None   # as create's --send-at; only before anything is sent


def replan(session: Session, meeting: Meeting, changes: Changes, now: float,
           sent: bool) -> bool:
    """Apply a new host party and a new send time; returns whether either changed.

    A host is a minor change (SEQUENCE stays, as for a title). The send time may change
    only while no invitation has gone out: "" keeps a draft, "now" or a local time
    schedules it, checked as `create` checks --send-at.
    """
    changed = False
    if changes.host is not None:
        host = find_party(session, changes.host).id if changes.host.strip() else None
        changed = host != meeting.host_party_id
        meeting.host_party_id = host
    if changes.send_at is not None:
        if sent:
            raise MeetingError(f"meeting {meeting.id}: invitations went out; their send "
                               "time cannot change")
        when = _send_at(changes.send_at, time_zone(meeting.tz), now, meeting.starts_at)
        changed = changed or when != meeting.send_at
        meeting.send_at = when
    if changed:
        meeting.updated_at = now
    return changed


def revise(meeting: Meeting, changes: Changes, now: float) -> tuple[bool, bool]:
    """Apply the changes; returns (anything changed, a major change).

    A change of STATUS, or of LOCATION (which "jeopardizes the validity of the
    participation status"), is major: SEQUENCE goes up (RFC 5546 §2.1.4). A title,
    description, agenda or "alongside" fix is minor and keeps SEQUENCE.
    """
    if changes.status is not None and changes.status not in STATUSES:
        raise MeetingError(f"unknown status {changes.status!r}; choose one of "
                           f"{', '.join(STATUSES)}")
    wanted = {
        "title": None if changes.title is None else text(changes.title, "the title", 300),
        "description": None if changes.description is None else changes.description.strip(),
        "location": None if changes.location is None
        else text(changes.location, "the location", 300),
        "agenda_url": None if changes.agenda_url is None else url(changes.agenda_url),
        "alongside": None if changes.alongside is None
        else text(changes.alongside, "the alongside event", 300),
        "status": changes.status,
    }
    if wanted["title"] == "":
        raise MeetingError("a meeting needs a title")
    changed = {k: v for k, v in wanted.items() if v is not None and getattr(meeting, k) != v}
    for key, value in changed.items():
        setattr(meeting, key, value)
    major = bool({"location", "status"} & changed.keys())
    if major:
        meeting.sequence += 1
    if changed:
        meeting.updated_at = now
    return bool(changed), major


def state(meeting: Meeting, sent: bool) -> str:
    """Where the meeting stands: draft (no send-at time), scheduled (invitations to go
    out at send-at), sent (some went out), or cancelled."""
    if meeting.status == "CANCELLED":
        return "cancelled"
    if sent:
        return "sent"
    return "draft" if meeting.send_at is None else "scheduled"


def sent_meetings(session: Session, meeting_ids: list[int]) -> set[int]:
    """Which of the meetings have had mail go out (or queued) to an invitee."""
    return set(session.scalars(select(Invitation.meeting_id).distinct().where(
        Invitation.meeting_id.in_(meeting_ids), Invitation.sent_sequence.is_not(None))))


def find(session: Session, meeting_id: int) -> Meeting:
    """The meeting with that id, or MeetingError."""
    found = session.get(Meeting, meeting_id)
    if found is None:
        raise MeetingError(f"no meeting with id {meeting_id}")
    return found


def upcoming(session: Session, body_id: int, now: float) -> list[Meeting]:
    """The body's meetings that have not ended and are not cancelled."""
    return list(session.scalars(select(Meeting).where(
        Meeting.body_id == body_id, Meeting.ends_at > now, Meeting.status != "CANCELLED")
        .order_by(Meeting.starts_at)))


def start_of(meeting: Meeting) -> datetime:
    """The start as an aware local time in the meeting's zone."""
    return datetime.fromisoformat(meeting.start_local).replace(tzinfo=ZoneInfo(meeting.tz))


def end_of(meeting: Meeting) -> datetime:
    """The end as an aware local time in the meeting's zone."""
    return datetime.fromisoformat(meeting.end_local).replace(tzinfo=ZoneInfo(meeting.tz))


def occasion(meeting: Meeting, stamp: float) -> ical.Occasion:
    """The meeting as a VEVENT sees it; DTSTAMP is `stamp` (RFC 5545 §3.8.7.2)."""
    # Imported here: icalendar is a tenth of the start-up of `alliance meeting list`,
    # which reads meetings and makes no calendar (issue 11, item 10).
    from meetings import ical

    description = meeting.description
    if meeting.alongside:
        description = f"{description}\n\n{meeting.alongside}".strip()
    return ical.Occasion(uid=meeting.uid, sequence=meeting.sequence, title=meeting.title,
                         start=start_of(meeting), end=end_of(meeting),
                         stamp=datetime.fromtimestamp(int(stamp), UTC),
                         location=meeting.location, description=description,
                         url=meeting.agenda_url, status=meeting.status)
