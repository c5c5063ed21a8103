"""A body's public calendar feed: METHOD:PUBLISH, the same UIDs, no attendees.

RFC 5546 §3.2.1: a PUBLISH carries no ATTENDEE. The ORGANIZER is `coordination@` with the
coordinating party's name, never an invitee's token. Cancelled meetings stay in the feed
with STATUS:CANCELLED, so that subscribed calendars drop them (itip.md G19).
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.db import Database
from mailer.web import Request, Response, Route, page
from meetings import coordination, ical, schedule
from meetings.models import Body, Meeting
from meetings.organisation import MeetingError, find_body
from meetings.site import MeetingSite

PAST = 365 * 86_400.0
CONTENT_TYPE = "text/calendar; charset=utf-8"


def path(slug: str) -> str:
    """Where the body's feed is served."""
    return f"/feeds/{slug}.ics"


def calendar(session: Session, site: MeetingSite, body: Body) -> bytes:
    """The feed of the body's meetings from a year ago on."""
    meetings = session.scalars(select(Meeting).where(
        Meeting.body_id == body.id, Meeting.ends_at > site.clock() - PAST)
        .order_by(Meeting.starts_at))
    organizer = ical.Person(site.address(coordination.LOCAL),
                            coordination.organizer_name(session, site))
    source = f"{site.base_url}{path(body.slug)}" if site.base_url else ""
    return ical.publish([schedule.occasion(m, m.updated_at) for m in meetings],
                        name=f"{site.name}: {body.name}", organizer=organizer, source=source)


def feed(session: Session, site: MeetingSite, slug: str) -> bytes:
    """The feed of the body named `slug`, or MeetingError."""
    return calendar(session, site, find_body(session, slug))


def routes(site: MeetingSite, db: Database) -> tuple[Route, ...]:
    """`GET /feeds/<body>.ics`."""
    async def serve(request: Request, match: re.Match[str]) -> Response:
        try:
            data = await db.write(feed, site, match["body"])
        except MeetingError:
            return page(404, "Not found", "There is no such calendar here.")
        return Response(200, data, CONTENT_TYPE)

    pattern = re.compile(r"/feeds/(?P<body>[a-z0-9][a-z0-9_.-]{0,39})\.ics")
    return (Route(("GET", "HEAD"), pattern, serve),)
