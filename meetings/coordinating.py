"""What a coordinator does that takes more than one step, as one call each.

The command line (meetings/cli.py) and the dashboard's pages (meetings/meeting_pages.py,
meetings/organisation_pages.py) make the same calls, so that a change means the same
whichever way it is made: a seat given invites its delegate to the body's meetings already
announced, a seat taken away cancels their invitations, new times are checked as the
command line checks them, a reason for cancelling is one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from meetings import invitations, organisation, schedule
from meetings.meeting_site import MeetingSite
from meetings.models import Meeting, Seat
from meetings.organisation import MeetingError, Unseated


@dataclass(frozen=True)
class SeatGiven:
    """A seat given (in the body named `body`), and how many invitations it caused."""

    seat: Seat
    body: str
    invited: int


def give_seat(session: Session, site: MeetingSite, body_slug: str, party: str, *,
              address: str, name: str = "", language: str = "",
              substitute: bool = False) -> SeatGiven:
    """Seat a person in a body for their party; a delegate (not a substitute) is invited
    at once to the body's meetings whose invitations went out."""
    body = organisation.find_body(session, body_slug)
    made = organisation.seat(session, body, organisation.find_party(session, party),
                             address=address, name=name, language=language,
                             role="substitute" if substitute else "delegate")
    invited = invitations.seat_added(session, site, body) if not substitute else 0
    return SeatGiven(made, body.slug, invited)


@dataclass(frozen=True)
class SeatTaken:
    """A seat taken away (in the body named `body`), and how many cancellations it caused."""

    unseated: Unseated
    body: str
    cancelled: int


def take_seat(session: Session, site: MeetingSite, body_slug: str,
              address: str) -> SeatTaken:
    """Take a person's seat in a body; their invitations to its meetings to come, and
    their substitutes', are cancelled (itip.md G5)."""
    body = organisation.find_body(session, body_slug)
    unseated = organisation.unseat(session, body, address)
    return SeatTaken(unseated, body.slug, invitations.seat_removed(session, site, body,
                                                                   unseated.delegate))


def reschedule(session: Session, site: MeetingSite, meeting: Meeting, start: str, end: str,
               tz: str = "") -> int | None:
    """Move a meeting to new local times (in `tz`, else its own zone); the number of
    updates queued, or None when the times are the ones it has (nothing is sent)."""
    when = schedule.times(start, end, tz.strip() or meeting.tz, site.clock())
    if not schedule.moved(meeting, when):
        return None
    return invitations.reschedule(session, site, meeting, when)


def cancel(session: Session, site: MeetingSite, meeting: Meeting, reason: str = "") -> int:
    """Cancel a meeting with a reason told to every invitee; the reason is made one line,
    as it reaches a calendar's COMMENT (RFC 5545 §3.8.1.4)."""
    if "\0" in reason:
        raise MeetingError("the reason may not hold a NUL character")
    return invitations.cancel(session, site, meeting, " ".join(reason.split()))
