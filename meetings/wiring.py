"""The meetings side as the daemon sees it: its site, role handlers, jobs and pages.

The composition root (`mailer.daemon.build`) asks this module for each; nothing registers
itself anywhere. This is the one module of the package that may name engine parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jinja2
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lists.models import MailingList
from mailer.addresses import Role
from mailer.config import Config
from mailer.inbound import Offload, RoleHandler
from mailer.jobs import Job
from mailer.web import Page, Store
from mailer.webauth import Access, SiteUser
from meetings import (
    answer_pages,
    body_pages,
    cadence,
    coordination,
    departures,
    feed,
    invitations,
    personal,
    reminders,
    reports,
)
from meetings.coordination import CoordinationHandler
from meetings.meeting_pages import pages as meeting_pages
from meetings.meeting_site import MeetingSite
from meetings.models import Delegate
from meetings.organisation_pages import pages as organisation_pages
from meetings.rsvp import RsvpHandler

# What the worker processes import before their first call (they read RSVP replies).
WORKER_MODULES = ("meetings.rsvp",)


def site(config: Config, secret: bytes, templates: jinja2.Environment, *,
         clock: Callable[[], float] = time.time) -> MeetingSite:
    """The meetings side's view of the site."""
    return MeetingSite.from_config(config, secret, templates, clock=clock)


def handlers(site: MeetingSite, workers: Offload | None = None) -> dict[Role, RoleHandler]:
    """The handler of each meetings role (rsvp+TOKEN@, coordination@); replies are read
    in the worker processes, if there are any."""
    return {Role.RSVP: RsvpHandler(site, workers),
            Role.COORDINATION: CoordinationHandler(site)}


def jobs(site: MeetingSite) -> tuple[Job, ...]:
    """The meetings side's timed jobs (invitations at their send time, reminders, ...)."""
    return (invitations.send_job(site), reminders.job(site, site.reminder_days),
            reports.summary_job(site), cadence.job(site))


def on_leave(site: MeetingSite) -> Callable[[Session, MailingList, str], int]:
    """What the list side calls when a member leaves a list: a seated delegate who
    leaves their body's list is reported to the coordinators."""
    return lambda session, mailing_list, address: departures.left_list(
        session, site, mailing_list, address)


def personal_export(session: Session, address: str) -> dict[str, Any]:
    """What the meetings side keeps about an address (GDPR art. 15)."""
    return personal.export(session, address)


def personal_erase(session: Session, address: str) -> list[str]:
    """Erase what the meetings side keeps about an address, unless seated (art. 17)."""
    return personal.erase(session, address)


def person(session: Session, address: str) -> SiteUser | None:
    """Who the address is to the meetings (mailer.webauth): a coordinator, a delegate."""
    roles = set()
    if address.lower() in {c.lower() for c in coordination.contacts(session)}:
        roles.add("coordinator")
    delegate = session.scalar(select(Delegate).where(
        func.lower(Delegate.address) == address.lower()))
    if delegate is not None:
        roles.add("delegate")
    if not roles:
        return None
    return SiteUser(address, delegate.name if delegate else "",
                  delegate.language if delegate else "", frozenset(roles))


def pages(site: MeetingSite, store: Store, access: Access) -> tuple[Page, ...]:
    """The meetings side's web pages: the feeds and the bodies' public pages, the
    invitees' answer pages, and the dashboard's meetings and organisation pages (behind
    `access`)."""
    return feed.pages(site, store) + body_pages.pages(site, store) \
        + answer_pages.pages(site, store) \
        + meeting_pages(site, access) + organisation_pages(site, access)
