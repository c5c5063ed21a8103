"""The charter's cadence: Board at least once a year, Steering Committee twice, one Conference.

`report(year)` counts each body's meetings (not cancelled) starting in that calendar year,
by the local date where the meeting is held, against the body's `meetings_per_year`: held
(over), planned (to come) and drafts (not announced: they count as neither). The
scheduler warns the coordinators once per year and body: from October on when the
meetings planned for the year fall short, and after the year when it ended short.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.jobs import Job
from mailer.models import Setting
from meetings.models import Body, Meeting
from meetings.organisation import ensure_charter

if TYPE_CHECKING:
    from meetings.meeting_site import MeetingSite

WARN_FROM_MONTH = 10


@dataclass(frozen=True)
class Standing:
    """One body's year against the charter: meetings held (over, and announced), planned
    (announced, still to come) and drafts (never announced, so neither)."""

    body: str
    name: str
    year: int
    required: int
    held: int
    planned: int = 0
    drafts: int = 0

    @property
    def short(self) -> int:
        """How many meetings are missing, counting those planned."""
        return max(0, self.required - self.held - self.planned)

    @property
    def verdict(self) -> str:
        """ok, N planned (still to be held), or N missing."""
        if self.held >= self.required:
            return "ok"
        if not self.short:
            return f"{self.required - self.held} planned"
        return f"{self.short} missing"


def year_span(year: int) -> tuple[str, str]:
    """The first local wall times of a year and of the next, as `start_local` sorts.

    >>> year_span(2027)
    ('2027-01-01T00:00:00', '2028-01-01T00:00:00')
    """
    return f"{year:04d}-01-01T00:00:00", f"{year + 1:04d}-01-01T00:00:00"


def report(session: Session, year: int, now: float) -> list[Standing]:
    """Each body with a cadence, and its meetings in the year, not cancelled: held (ended
    by `now`), planned (to come) and drafts (whose invitations never went out).

    A meeting counts in the year of its local start, where it is held: a Board meeting
    in Auckland on 1 January is that year's, though it starts on 31 December in UTC.
    """
    ensure_charter(session)
    first, after = year_span(year)
    counts: dict[tuple[int, str], int] = {}
    for body_id, ends_at, send_at in session.execute(
            select(Meeting.body_id, Meeting.ends_at, Meeting.send_at).where(
                Meeting.start_local >= first, Meeting.start_local < after,
                Meeting.status != "CANCELLED")):
        kind = "drafts" if send_at is None else "held" if ends_at <= now else "planned"
        counts[body_id, kind] = counts.get((body_id, kind), 0) + 1
    return [Standing(b.slug, b.name, year, b.meetings_per_year,
                     *(counts.get((b.id, kind), 0) for kind in ("held", "planned", "drafts")))
            for b in session.scalars(select(Body).where(Body.meetings_per_year > 0)
                                     .order_by(Body.id))]


def _warned(session: Session, year: int) -> Setting:
    key = f"cadence-warned:{year}"
    found = session.get(Setting, key)
    if found is None:
        found = Setting(key=key, value="")
        session.add(found)
    return found


def shortfalls(session: Session, now: float) -> list[Standing]:
    """Years to warn about now, body by body, that were not warned about before."""
    today = time.gmtime(now)
    years = [today.tm_year - 1] + ([today.tm_year] if today.tm_mon >= WARN_FROM_MONTH else [])
    found = []
    for year in years:
        done = set(_warned(session, year).value.split(","))
        found += [s for s in report(session, year, now)
                  if s.short and s.body not in done]
    return found


def warn(session: Session, site: MeetingSite, now: float) -> int:
    """One mail to the coordinators about the bodies that fall short; the number queued."""
    # Imported here: coordination brings the templates (Jinja), which `alliance cadence`,
    # a report, does not need (issue 11, item 10: start-up).
    from meetings import coordination

    short = shortfalls(session, now)
    if not short or not coordination.notify(
            session, site, "cadence_warning",
            {"site_name": site.name, "shortfalls": [
                # Held or announced: a draft nobody has heard of yet counts as missing.
                {"body": s.name, "year": s.year, "held": s.held + s.planned,
                 "required": s.required}
                for s in short]}, kind="cadence"):
        return 0
    for standing in short:
        setting = _warned(session, standing.year)
        setting.value = ",".join(filter(None, [setting.value, standing.body]))
    return 1


def job(site: MeetingSite, every: float = 6 * 3600.0) -> Job:
    """The scheduler's cadence check."""
    return Job("cadence-warning", every, lambda session, now: warn(session, site, now))
