"""The meetings side as the daemon sees it: role handlers, scheduled jobs, web pages.

The composition root (`mailer.daemon.build`) asks this module for each; nothing registers
itself anywhere.
"""

from __future__ import annotations

from mailer.db import Database
from mailer.router import RoleHandler
from mailer.routing import Role
from mailer.scheduler import Job
from mailer.web import Route
from mailer.workers import Workers
from meetings import cadence, feed, invitations, reminders, reports
from meetings.coordination import CoordinationHandler
from meetings.replies import RsvpHandler
from meetings.site import MeetingSite


def handlers(site: MeetingSite, workers: Workers | None = None) -> dict[Role, RoleHandler]:
    """The handler of each meetings role (rsvp+TOKEN@, coordination@); replies are read
    in the worker processes, if there are any."""
    return {Role.RSVP: RsvpHandler(site, workers),
            Role.COORDINATION: CoordinationHandler(site)}


def jobs(site: MeetingSite) -> tuple[Job, ...]:
    """The meetings side's timed jobs (invitations at their send time, reminders, ...)."""
    return (invitations.send_job(site), reminders.job(site, site.reminder_days),
            reports.summary_job(site),
            cadence.job(site))


def routes(site: MeetingSite, db: Database) -> tuple[Route, ...]:
    """The meetings side's web pages (feeds)."""
    return feed.routes(site, db)
