"""Each body's public page: its upcoming meetings, its calendar to subscribe to, and
each meeting as a calendar file to download.

    /bodies/                the bodies, each with how many meetings are coming
    /bodies/SLUG/           a body's upcoming meetings; `webcal://` and https links to
                            its feed (meetings/feed.py)
    /bodies/SLUG/ID.ics     one meeting: a single VEVENT, METHOD:PUBLISH, no ATTENDEE

A page shows what the feed shows (feed.window): a draft, or a meeting whose invitations
are not due yet, is not public, and its .ics answers 404. Times are in the page's
language, in the meeting's zone with the zone's name, and in UTC (mailer.dates.Span).
No invitee's name or address is on any of these pages or files (RFC 5546 §3.2.1).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists.models import MailingList
from mailer.templates import language_of
from mailer.web import Page, Request, Response, Store, render_error, render_page
from meetings import coordination, feed, ical, letters, schedule
from meetings.meeting_site import MeetingSite
from meetings.models import Body, Meeting

UPCOMING = 100          # meetings a body's page shows, the soonest first
_SLUG = r"(?P<body>[a-z0-9][a-z0-9_.-]{0,39})"


def pages(site: MeetingSite, db: Store) -> tuple[Page, ...]:
    """The bodies' pages and each meeting's calendar file, GET (and HEAD) only."""
    env = site.templates

    async def index(request: Request, match: re.Match[str]) -> Response:
        language = language_of(request.language())
        context = await db.read(lambda s: _bodies(s, site, language))
        return render_page(env, "bodies", language, **context)

    async def body(request: Request, match: re.Match[str]) -> Response:
        language = language_of(request.language())
        context = await db.read(lambda s: _body(s, site, match["body"], language))
        if context is None:
            return render_error(env, "no_calendar", language)
        return render_page(env, "body", language, **context)

    async def event(request: Request, match: re.Match[str]) -> Response:
        data = await db.read(lambda s: _event(s, site, match["body"], int(match["id"])))
        if data is None:
            return render_error(env, "no_calendar", request.language())
        disposition = f'attachment; filename="{match["body"]}-{match["id"]}.ics"'
        return Response(200, data, feed.CONTENT_TYPE, (("content-disposition", disposition),))

    return (Page(("GET", "HEAD"), re.compile(r"/bodies/"), index),
            Page(("GET", "HEAD"), re.compile(rf"/bodies/{_SLUG}/"), body),
            Page(("GET", "HEAD"), re.compile(rf"/bodies/{_SLUG}/(?P<id>[0-9]{{1,12}})\.ics"),
                 event))


def upcoming(body: Body, now: float) -> Any:
    """The condition of a body's public meetings that have not ended, cancelled or not."""
    return feed.window(body, now) & (Meeting.ends_at > now) & (Meeting.status != "CANCELLED")


def _name(body: Body, language: str) -> str:
    return (body.names or {}).get(language) or body.name


def _bodies(session: Session, site: MeetingSite, language: str) -> dict[str, Any]:
    now = site.clock()
    bodies = list(session.scalars(select(Body).order_by(Body.id)))
    counts = dict(session.execute(
        select(Meeting.body_id, func.count()).where(
            Meeting.ends_at > now, Meeting.send_at <= now, Meeting.status != "CANCELLED")
        .group_by(Meeting.body_id)).all())
    return {"site_name": site.name,
            "bodies": [{"slug": body.slug, "name": _name(body, language),
                        "count": counts.get(body.id, 0)} for body in bodies]}


def _body(session: Session, site: MeetingSite, slug: str,
          language: str) -> dict[str, Any] | None:
    body = session.scalar(select(Body).where(Body.slug == slug))
    if body is None:
        return None
    meetings = session.scalars(select(Meeting).where(upcoming(body, site.clock()))
                               .order_by(Meeting.starts_at).limit(UPCOMING))
    feed_url = f"{site.base_url}{feed.path(body.slug)}"
    mailing_list = session.get(MailingList, body.list_id) if body.list_id else None
    return {"site_name": site.name, "body_name": _name(body, language), "slug": body.slug,
            "archive": f"/lists/{mailing_list.name}/"
            if mailing_list is not None and mailing_list.public_archive else "",
            "feed": feed_url, "webcal": "webcal://" + feed_url.split("://", 1)[-1]
            if site.base_url else "",
            "meetings": [_meeting(meeting, language) for meeting in meetings]}


def _meeting(meeting: Meeting, language: str) -> dict[str, Any]:
    span = letters.span_of(meeting)
    return {"id": meeting.id, "title": meeting.title, "when": span.time(language),
            "zone": span.zone(language), "utc": span.utc(language),
            "location": meeting.location, "alongside": meeting.alongside}


def _event(session: Session, site: MeetingSite, slug: str, ident: int) -> bytes | None:
    """One public meeting of the body as a calendar of its own (RFC 5546 §3.2.1)."""
    body = session.scalar(select(Body).where(Body.slug == slug))
    if body is None:
        return None
    meeting = session.scalar(select(Meeting).where(feed.window(body, site.clock()),
                                                   Meeting.id == ident))
    if meeting is None:
        return None
    organizer = ical.Person(site.address(coordination.LOCAL),
                            coordination.organizer_name(session, site))
    return ical.publish([schedule.occasion(meeting, meeting.updated_at)],
                        name=f"{site.name}: {meeting.title}", organizer=organizer)
