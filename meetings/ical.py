"""iCalendar objects of the organiser: REQUEST, CANCEL and PUBLISH, built with `icalendar`.

Pure: no database, no clock of its own, no I/O. Everything here follows RFC 5546 §3.2 (what
each method must and must not carry) and reference/itip.md §2.2 (what real clients need):
METHOD always present, a VTIMEZONE for every TZID (RFC 5546 §3.1.2), SEQUENCE always
written, a fresh DTSTAMP on every message (RFC 5545 §3.8.7.2).

An invitation differs from invitee to invitee only in its ORGANIZER (the invitee's own
`rsvp+TOKEN@` address) and its ATTENDEE lines. `Frame` is the calendar serialised once,
with those lines left out; `Frame.fill` puts one invitee's lines in, each serialised by
`icalendar` itself, so that every invitation is a complete object at the cost of a few
lines per invitee.
"""

from __future__ import annotations

import calendar
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from icalendar import (
    Alarm,
    Calendar,
    Component,
    Event,
    Timezone,
    TimezoneDaylight,
    TimezoneStandard,
    vCalAddress,
)

PRODID = "-//Progressive Alliance//Alliance Mail//EN"
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu"})
ALARM_BEFORE = timedelta(minutes=30)
FEED_REFRESH = timedelta(hours=1)
RULE_YEARS = 15             # how far past the meetings a zone's rule must hold to be one
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


@dataclass(frozen=True)
class Person:
    """A calendar user: a `mailto:` address and a display name (CN)."""

    address: str
    name: str = ""


@dataclass(frozen=True)
class AttendeeLine:
    """One ATTENDEE line (RFC 5545 §3.8.4.1 with the parameters of §3.2)."""

    address: str
    name: str = ""
    partstat: str = "NEEDS-ACTION"
    rsvp: bool = True
    role: str = "REQ-PARTICIPANT"
    cutype: str = "INDIVIDUAL"
    delegated_from: str = ""
    delegated_to: str = ""


@dataclass(frozen=True)
class Occasion:
    """What a VEVENT says about a meeting, whoever receives it."""

    uid: str
    sequence: int
    title: str
    start: datetime            # aware: tzinfo is the meeting's ZoneInfo
    end: datetime
    stamp: datetime            # aware, UTC: when this message is made
    location: str = ""
    description: str = ""
    url: str = ""
    status: str = "CONFIRMED"


@dataclass(frozen=True)
class Observance:
    """What a STANDARD or DAYLIGHT sub-component says (RFC 5545 §3.6.5), but its onsets."""

    standard: bool
    offset_from: timedelta
    offset_to: timedelta
    name: str


def transitions(zone: ZoneInfo, start: date, end: date) -> dict[Observance, list[datetime]]:
    """Each observance of the zone from `start` to `end`, with its onsets as local times
    in the offset before them (RFC 5545 §3.6.5: DTSTART and RDATE are in TZOFFSETFROM).

    The first is the state at `start` (local midnight). Searched a day at a time, then to
    the second: icalendar's own search strides 64 days and misses a change undone sooner
    (Morocco's clocks go back for Ramadan, some 35 days: no 2027 onsets at all).
    """
    moment = datetime(start.year, start.month, start.day, tzinfo=UTC)
    stop = datetime(end.year, end.month, end.day, tzinfo=UTC)
    state = _state(zone, moment)
    found = {Observance(state[2] == timedelta(), state[0], state[0], state[1]):
             [datetime(start.year, start.month, start.day)]}
    while moment < stop:
        later = min(moment + timedelta(days=1), stop)
        after = _state(zone, later)
        if after != state:
            onset = _onset(zone, moment, later)
            key = Observance(after[2] == timedelta(), state[0], after[0], after[1])
            found.setdefault(key, []).append(onset.replace(tzinfo=None) + state[0])
        moment, state = later, after
    return found


def _state(zone: ZoneInfo, moment: datetime) -> tuple[timedelta, str, timedelta]:
    """(UTC offset, name, DST) of the zone at a UTC instant."""
    local = moment.astimezone(zone)
    return local.utcoffset() or timedelta(), local.tzname() or "", local.dst() or timedelta()


def _onset(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first UTC second in (low, high] in the state `high` has, by halving."""
    before = _state(zone, low)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if _state(zone, middle) == before:
            low = middle
        else:
            high = middle
    return high


@functools.lru_cache(maxsize=256)
def vtimezone(tzid: str, first_year: int, last_year: int | None = None) -> Timezone:
    """A VTIMEZONE for `tzid` valid from the year before `first_year` to two years after
    `last_year` (RFC 5545 §3.6.5), made from the IANA database.

    The window keeps the component small (clients need only the rules around the
    meetings). An observance whose onsets follow a yearly rule gets an RRULE, since Outlook
    reads only that (MS-OXCICAL 2.1.3.1.1.19.2.2); the rule is judged over RULE_YEARS
    more, so that "the Friday before the last Sunday" (Asia/Jerusalem), which looks like
    "the fourth Friday" for a few years, is not taken for one. The others list their
    onsets in RDATEs, one a line: ical.js (Thunderbird) reads only the first value of each.
    """
    last = first_year if last_year is None else last_year
    start, end = date(first_year - 1, 1, 1), date(last + 2, 1, 1)
    timezone = Timezone()
    timezone.add("tzid", tzid)
    timezone.add("comment", f"This timezone only works from {start} to {end}.")
    found = transitions(ZoneInfo(tzid), start, date(last + RULE_YEARS + 1, 1, 1))
    for observance, moments in found.items():
        within = [moment for moment in moments if moment.date() < end]
        if within:
            rule = yearly_rule(moments, last + RULE_YEARS)
            timezone.add_component(_observance(observance, within, rule))
    return timezone


def _observance(observance: Observance, onsets: Sequence[datetime],
                rule: dict[str, object] | None) -> Component:
    """One STANDARD or DAYLIGHT sub-component: the first onset, then RRULE or RDATEs."""
    component = TimezoneStandard() if observance.standard else TimezoneDaylight()
    component.add("dtstart", onsets[0])
    if rule is not None:
        component.add("rrule", rule)
    else:
        for onset in onsets[1:]:
            component.add("rdate", onset)
    component.add("tzname", observance.name)
    component.add("tzoffsetfrom", observance.offset_from)
    component.add("tzoffsetto", observance.offset_to)
    return component


def yearly_rule(moments: Sequence[datetime], last_year: int) -> dict[str, object] | None:
    """The RRULE (RFC 5545 §3.8.5.3) that makes exactly these onsets up to the end of
    `last_year`, or None if there is none of the form Outlook reads: once a year, in one
    month, on the n-th (1-4) or last weekday, at one wall time (MS-OXCICAL
    2.1.3.1.1.19.2.2: FREQ=YEARLY, BYMONTH and a single BYDAY occurrence).

    >>> yearly_rule([datetime(2026, 3, 29, 2), datetime(2027, 3, 28, 2)], 2027)
    {'freq': 'YEARLY', 'bymonth': 3, 'byday': '-1SU'}
    >>> yearly_rule([datetime(2026, 3, 8, 2), datetime(2027, 3, 14, 2)], 2027)
    {'freq': 'YEARLY', 'bymonth': 3, 'byday': '2SU'}
    >>> yearly_rule([datetime(2026, 3, 8, 2), datetime(2027, 3, 14, 2)], 2028) is None
    True
    """
    if len(moments) < 2 or [m.year for m in moments] != \
            list(range(moments[0].year, last_year + 1)):
        return None
    if len({(m.month, m.weekday(), m.time()) for m in moments}) != 1:
        return None
    day = WEEKDAYS[moments[0].weekday()]
    if all(m.day + 7 > calendar.monthrange(m.year, m.month)[1] for m in moments):
        return {"freq": "YEARLY", "bymonth": moments[0].month, "byday": f"-1{day}"}
    weeks = {(m.day - 1) // 7 + 1 for m in moments}
    if len(weeks) != 1 or weeks.pop() > 4:
        return None
    return {"freq": "YEARLY", "bymonth": moments[0].month,
            "byday": f"{(moments[0].day - 1) // 7 + 1}{day}"}


def _is_utc(moment: datetime) -> bool:
    return str(moment.tzinfo) in UTC_NAMES


def _calendar(method: str | None) -> Calendar:
    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    if method:
        calendar.add("method", method)
    return calendar


def zone_years(occasions: Iterable[Occasion]) -> dict[str, tuple[int, int]]:
    """Each TZID used (not UTC) with the first and last year of its events, in order."""
    years: dict[str, tuple[int, int]] = {}
    for occasion in occasions:
        if _is_utc(occasion.start):
            continue
        tzid = str(occasion.start.tzinfo)
        low = min(occasion.start.year, occasion.end.year)
        high = max(occasion.start.year, occasion.end.year)
        first, last = years.get(tzid, (low, high))
        years[tzid] = (min(first, low), max(last, high))
    return years


def _add_timezones(calendar: Calendar, occasions: Iterable[Occasion]) -> None:
    """One VTIMEZONE per TZID used, none for UTC (RFC 5546 §3.1.2), covering every event
    that uses it (RFC 5545 §3.6.5: the rules must span the times they resolve)."""
    for tzid, (first, last) in zone_years(occasions).items():
        calendar.add_component(vtimezone(tzid, first, last))


def _event(occasion: Occasion, *, status: str | None) -> Event:
    """The VEVENT properties every method shares (RFC 5546 §3.2.2 table)."""
    event = Event()
    event.add("uid", occasion.uid)
    event.add("dtstamp", occasion.stamp)
    event.add("sequence", occasion.sequence)
    event.add("dtstart", occasion.start)
    event.add("dtend", occasion.end)
    event.add("summary", occasion.title)
    if occasion.location:
        event.add("location", occasion.location)
    if occasion.description:
        event.add("description", occasion.description)
    if occasion.url:
        event.add("url", occasion.url)
    if status:
        event.add("status", status)
    event.add("transp", "OPAQUE")
    return event


def _alarm(title: str) -> Alarm:
    """A display reminder before the start (RFC 5545 §3.6.6); allowed in REQUEST only."""
    alarm = Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", title)
    alarm.add("trigger", -ALARM_BEFORE)
    return alarm


def organizer_property(person: Person) -> vCalAddress:
    """ORGANIZER as a `mailto:` URI with its CN (RFC 6047 §2.3)."""
    value = vCalAddress(f"mailto:{person.address}")
    if person.name:
        value.params["CN"] = person.name
    return value


def attendee_property(attendee: AttendeeLine) -> vCalAddress:
    """ATTENDEE with CUTYPE, ROLE, PARTSTAT, RSVP, CN and delegation (RFC 5545 §3.2)."""
    value = vCalAddress(f"mailto:{attendee.address}")
    value.params["CUTYPE"] = attendee.cutype
    value.params["ROLE"] = attendee.role
    value.params["PARTSTAT"] = attendee.partstat
    value.params["RSVP"] = "TRUE" if attendee.rsvp else "FALSE"
    if attendee.name:
        value.params["CN"] = attendee.name
    if attendee.delegated_from:
        value.params["DELEGATED-FROM"] = f"mailto:{attendee.delegated_from}"
    if attendee.delegated_to:
        value.params["DELEGATED-TO"] = f"mailto:{attendee.delegated_to}"
    return value


@dataclass(frozen=True)
class Frame:
    """A serialised calendar with one VEVENT whose people are left out.

    `head` ends where the VEVENT's properties end (before its VALARM, or its END);
    `tail` is the rest. Properties of a component come before its subcomponents
    (RFC 5545 §3.6.1 `eventc`), so the people's lines go between the two.
    """

    head: bytes
    tail: bytes

    def fill(self, organizer: Person, attendees: Sequence[AttendeeLine]) -> bytes:
        """The complete calendar for one recipient."""
        return self.head + people_lines(organizer, attendees) + self.tail


def people_lines(organizer: Person, attendees: Sequence[AttendeeLine]) -> bytes:
    """ORGANIZER and ATTENDEE content lines, folded and escaped by `icalendar`."""
    holder = Event()
    holder.add("organizer", organizer_property(organizer))
    for attendee in attendees:
        holder.add("attendee", attendee_property(attendee))
    lines = holder.to_ical()
    start = lines.index(b"\r\n") + 2
    end = lines.rindex(b"END:VEVENT\r\n")
    return bytes(lines[start:end])


def _frame(calendar: Calendar) -> Frame:
    data = calendar.to_ical()
    event_at = data.index(b"BEGIN:VEVENT\r\n")
    alarm_at = data.find(b"BEGIN:VALARM\r\n", event_at)
    cut = alarm_at if alarm_at >= 0 else data.index(b"END:VEVENT\r\n", event_at)
    return Frame(data[:cut], data[cut:])


def request_frame(occasion: Occasion) -> Frame:
    """METHOD:REQUEST (RFC 5546 §3.2.2): STATUS, VTIMEZONE and a VALARM."""
    calendar = _calendar("REQUEST")
    _add_timezones(calendar, [occasion])
    event = _event(occasion, status=occasion.status)
    event.add_component(_alarm(occasion.title))
    calendar.add_component(event)
    return _frame(calendar)


def cancel_frame(occasion: Occasion, *, whole: bool = True, comment: str = "") -> Frame:
    """METHOD:CANCEL (RFC 5546 §3.2.5): STATUS:CANCELLED for the whole meeting; no STATUS
    when only some attendees are uninvited; never a VALARM; the reason, if given, as
    COMMENT (which §3.2.5 allows in a CANCEL)."""
    calendar = _calendar("CANCEL")
    _add_timezones(calendar, [occasion])
    event = _event(occasion, status="CANCELLED" if whole else None)
    if comment:
        event.add("comment", comment)
    calendar.add_component(event)
    return _frame(calendar)


def publish(occasions: Sequence[Occasion], *, name: str, organizer: Person,
            source: str = "") -> bytes:
    """A public feed: METHOD:PUBLISH, no ATTENDEE (RFC 5546 §3.2.1), RFC 7986 names.

    X-WR-CALNAME and X-PUBLISHED-TTL are what Outlook and Apple read for NAME and
    REFRESH-INTERVAL (RFC 7986 §5.1, §5.7).
    """
    calendar = _calendar("PUBLISH")
    calendar.add("name", name)
    calendar.add("x-wr-calname", name)
    calendar.add("refresh-interval", FEED_REFRESH, parameters={"VALUE": "DURATION"})
    calendar.add("x-published-ttl", "PT1H")
    if source:
        calendar.add("source", source, parameters={"VALUE": "URI"})
    _add_timezones(calendar, occasions)
    for occasion in occasions:
        event = _event(occasion, status=occasion.status)
        event.add("organizer", organizer_property(organizer))
        calendar.add_component(event)
    return bytes(calendar.to_ical())
