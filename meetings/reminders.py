"""Reminders to invitees who have not answered, at set days before the meeting.

A reminder is the invitation again, at the same SEQUENCE with RSVP=TRUE, sent only to
those still at NEEDS-ACTION: RFC 5546 §3.2.2.7's way of asking again without changing
anything, so that the calendar client offers its buttons again (itip.md G17).
`Invitation.reminded` keeps the offsets already dealt with, so each goes out once.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.jobs import Job
from meetings import letters
from meetings.invitations import REMINDER_DAYS, passed_offsets
from meetings.letters import DAY
from meetings.meeting_site import MeetingSite
from meetings.models import Invitation, Meeting


def due_offset(meeting: Meeting, now: float, days: Sequence[int]) -> int | None:
    """The nearest reminder offset (in days) whose moment has come, or None.

    >>> meeting = Meeting(starts_at=100 * 86_400.0)
    >>> due_offset(meeting, 90 * 86_400.0, (14, 3)), due_offset(meeting, 80 * 86_400.0, (14, 3))
    (14, None)
    >>> due_offset(meeting, 98 * 86_400.0, (14, 3))
    3
    """
    due = [d for d in days if now >= meeting.starts_at - d * DAY]
    return min(due) if due else None


def remind(session: Session, site: MeetingSite, meeting: Meeting, now: float,
           days: Sequence[int] = REMINDER_DAYS) -> int:
    """Remind the meeting's non-responders of the due offset, once; the number queued."""
    offset = due_offset(meeting, now, days)
    if offset is None:
        return 0
    passed = passed_offsets(meeting, now, days)
    waiting = [i for i in session.scalars(select(Invitation).where(
        Invitation.meeting_id == meeting.id, Invitation.state == "active",
        Invitation.partstat == "NEEDS-ACTION", Invitation.sent_sequence.is_not(None)))
        if str(offset) not in i.reminded.split(",")]
    for invitation in waiting:
        invitation.reminded = passed
    return letters.send(session, site, meeting, waiting, letters.REMINDER)


def job(site: MeetingSite, days: Sequence[int] = REMINDER_DAYS, every: float = 600.0) -> Job:
    """The scheduler's reminder job over meetings to come (offsets in days, e.g. 14 and 3)."""
    horizon = max(days, default=0) * DAY

    def run(session: Session, now: float) -> int:
        meetings = list(session.scalars(select(Meeting).where(
            Meeting.status != "CANCELLED", Meeting.starts_at > now,
            Meeting.starts_at <= now + horizon, Meeting.send_at <= now)))
        return sum(remind(session, site, meeting, now, days) for meeting in meetings)
    return Job("meeting-reminders", every, run)
