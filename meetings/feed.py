"""A body's public calendar feed: METHOD:PUBLISH, the same UIDs, no attendees.

RFC 5546 §3.2.1: a PUBLISH carries no ATTENDEE. The ORGANIZER is `coordination@` with the
coordinating party's name, never an invitee's token. Cancelled meetings stay in the feed
with STATUS:CANCELLED, so that subscribed calendars drop them (itip.md G19).
"""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from mailer.web import Page, Request, Response, Store, render_error
from meetings import coordination, ical, schedule
from meetings.meeting_site import MeetingSite
from meetings.models import Body, Meeting
from meetings.organisation import MeetingError, find_body

PAST = 365 * 86_400.0
CONTENT_TYPE = "text/calendar; charset=utf-8"


def path(slug: str) -> str:
    """Where the body's feed is served."""
    return f"/feeds/{slug}.ics"


def window(body: Body, now: float) -> ColumnElement[bool]:
    """The body's meetings a feed shows: those that ended less than a year ago, or later,
    once their invitations are due (a draft, or one still to be announced, is not public)."""
    return (Meeting.body_id == body.id) & (Meeting.ends_at > now - PAST) \
        & (Meeting.send_at <= now)


def calendar(session: Session, site: MeetingSite, body: Body) -> bytes:
    """The feed of the body's meetings from a year ago on."""
    meetings = session.scalars(select(Meeting).where(window(body, site.clock()))
                               .order_by(Meeting.starts_at))
    organizer = ical.Person(site.address(coordination.LOCAL),
                            coordination.organizer_name(session, site))
    source = f"{site.base_url}{path(body.slug)}" if site.base_url else ""
    return ical.publish([schedule.occasion(m, m.updated_at) for m in meetings],
                        name=f"{site.name}: {body.name}", organizer=organizer, source=source)


def feed(session: Session, site: MeetingSite, slug: str) -> bytes:
    """The feed of the body named `slug`, or MeetingError."""
    return calendar(session, site, find_body(session, slug))


Version = tuple[int, int, int, float, int]


def version(session: Session, site: MeetingSite, body: Body) -> Version:
    """What the feed's bytes depend on: the body, how many meetings it shows, their
    SEQUENCEs and last change, and the coordination term (the ORGANIZER's name)."""
    count, sequences, updated = session.execute(
        select(func.count(), func.coalesce(func.sum(Meeting.sequence), 0),
               func.coalesce(func.max(Meeting.updated_at), 0.0))
        .where(window(body, site.clock()))).one()
    term = coordination.current_term(session)
    return body.id, int(count), int(sequences), float(updated), term.id if term else 0


class FeedCache:
    """Each body's feed as last served, made again only when its `version` changes.

    A GET only reads: the serialised calendar is kept, so that calendar clients polling
    every hour cost three small queries, and never the single writer.
    """

    def __init__(self, site: MeetingSite) -> None:
        self.site = site
        self._feeds: dict[str, tuple[Version, bytes]] = {}

    def get(self, session: Session, slug: str) -> bytes:
        """The feed of the body named `slug`, or MeetingError; run in a read session."""
        body = session.scalar(select(Body).where(Body.slug == slug))
        if body is None:
            raise MeetingError(f"no body named {slug!r}")
        current = version(session, self.site, body)
        kept = self._feeds.get(slug)
        if kept is not None and kept[0] == current:
            return kept[1]
        data = calendar(session, self.site, body)
        self._feeds[slug] = (current, data)
        return data


def pages(site: MeetingSite, db: Store) -> tuple[Page, ...]:
    """`GET /feeds/BODY.ics`, served from a read session and the cache."""
    cache = FeedCache(site)

    async def serve(request: Request, match: re.Match[str]) -> Response:
        try:
            data = await db.read(cache.get, match["body"])
        except MeetingError:
            return render_error(site.templates, "no_calendar", request.language())
        return Response(200, data, CONTENT_TYPE)

    pattern = re.compile(r"/feeds/(?P<body>[a-z0-9][a-z0-9_.-]{0,39})\.ics")
    return (Page(("GET", "HEAD"), pattern, serve),)
