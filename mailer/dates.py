"""Dates and times as people read them, in their language (Babel's CLDR data).

A meeting's time is shown in its own zone with the weekday, the zone's name in the
reader's language, and again in UTC, so that nobody has to convert by hand:

    lundi 1 mars 2027, 09:00–17:00 (Europe/Paris, heure normale d’Europe centrale)
    lundi 1 mars 2027, 08:00–16:00 UTC

Babel is imported when a date is first formatted, not when this module is, so that the
command line's listing commands do not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

# The CLDR locale of each template language: British English for its 24-hour clock and
# day-month order (an international network), Brazilian Portuguese (Brazil's parties).
LOCALES = {"en": "en_GB", "fr": "fr", "es": "es", "de": "de", "pt": "pt_BR"}


def locale_of(language: str) -> str:
    return LOCALES.get(language, "en_GB")


@lru_cache(maxsize=4096)
def day(moment: datetime, language: str) -> str:
    """The full date with the weekday: "Monday, 1 March 2027", "lundi 1 mars 2027"."""
    from babel.dates import format_date
    return str(format_date(moment, "full", locale=locale_of(language)))


@lru_cache(maxsize=4096)
def short_day(moment: datetime, language: str) -> str:
    """The date with the weekday, short, for subjects: "Mon, 1 Mar 2027"."""
    from babel.dates import format_skeleton
    return str(format_skeleton("yMMMEd", moment, locale=locale_of(language)))


@lru_cache(maxsize=1024)
def month(year: int, number: int, language: str) -> str:
    """A month and its year, as the archive's pages name it: "March 2027", "mars 2027"."""
    from babel.dates import format_skeleton
    return str(format_skeleton("yMMMM", datetime(year, number, 1), locale=locale_of(language)))


def clock(moment: datetime, language: str) -> str:
    """The time of day as the language writes it: "09:00", "9:00" (es)."""
    from babel.dates import format_time
    return str(format_time(moment, "short", locale=locale_of(language)))


def zone_name(moment: datetime, language: str) -> str:
    """The zone's name at that moment in the language ("heure d’été d’Europe centrale")."""
    from babel.dates import get_timezone_name
    return str(get_timezone_name(moment, width="long", locale=locale_of(language)))


def span(start: datetime, end: datetime, language: str) -> str:
    """From start to end, the day written once when both fall on it."""
    if start.date() == end.date():
        return f"{day(start, language)}, {clock(start, language)}–{clock(end, language)}"
    return (f"{day(start, language)}, {clock(start, language)} – "
            f"{day(end, language)}, {clock(end, language)}")


@dataclass(frozen=True)
class Span:
    """A meeting's time: its zone and its local start and end (naive ISO wall times).

    >>> Span("Europe/Paris", "2027-03-01T09:00:00", "2027-03-01T17:00:00").local("en")
    'Monday, 1 March 2027, 09:00–17:00 (Europe/Paris, Central European Standard Time)'
    >>> Span("Europe/Paris", "2027-03-01T09:00:00", "2027-03-01T17:00:00").utc("fr")
    'lundi 1 mars 2027, 08:00–16:00 UTC'
    """

    tz: str
    start_local: str
    end_local: str

    def _moments(self) -> tuple[datetime, datetime]:
        zone = ZoneInfo(self.tz)
        return (datetime.fromisoformat(self.start_local).replace(tzinfo=zone),
                datetime.fromisoformat(self.end_local).replace(tzinfo=zone))

    def local(self, language: str) -> str:
        return f"{self.time(language)} ({self.zone(language)})"

    def time(self, language: str) -> str:
        """The local date and times alone: "Monday, 1 March 2027, 09:00–17:00"."""
        return span(*self._moments(), language)

    def zone(self, language: str) -> str:
        """The zone, by its IANA name and its name in the language at the start."""
        return f"{self.tz}, {zone_name(self._moments()[0], language)}"

    def utc(self, language: str) -> str:
        start, end = (moment.astimezone(UTC) for moment in self._moments())
        return f"{span(start, end, language)} UTC"

    def date(self, language: str) -> str:
        return short_day(self._moments()[0], language)

    def __str__(self) -> str:
        return self.local("en")


def iso(seconds: float | None) -> str:
    """A moment as ISO 8601 UTC for machines and exports, or "" for none.

    >>> iso(0.0), iso(None)
    ('1970-01-01T00:00:00Z', '')
    """
    return "" if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def stamp(seconds: float, language: str) -> str:
    """A moment given as seconds since the epoch, in UTC, with the weekday."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{day(moment, language)}, {clock(moment, language)} UTC"
