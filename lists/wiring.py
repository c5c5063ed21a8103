"""The list side as the daemon sees it: its site, role handlers, jobs, pages, hooks.

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

from lists import (
    archive_pages,
    confirm_pages,
    digests,
    held_pages,
    list_pages,
    moderation,
    roster_pages,
    subscriptions,
)
from lists.bounces import DECAY, BounceHandler, smarthost_refusals
from lists.dmarc import DmarcLookup, TxtLookup
from lists.list_site import LeaveHook, ListSite
from lists.member_pages import Personal
from lists.member_pages import pages as member_pages_of
from lists.models import MailingList, Member
from lists.posting import PostHandler
from lists.requests import ConfirmHandler, OwnerHandler, RequestHandler
from mailer.addresses import Role
from mailer.arc import Sealer
from mailer.config import Config
from mailer.inbound import Offload, RoleHandler
from mailer.jobs import Job
from mailer.outbox import RefusalHook
from mailer.web import Page, Store
from mailer.webauth import Access, SiteUser

# What the worker processes import before their first call (they read large posts).
WORKER_MODULES = ("lists.posting",)


def site(config: Config, secret: bytes, templates: jinja2.Environment, dns: TxtLookup, *,
         clock: Callable[[], float] = time.time, on_leave: LeaveHook | None = None,
         arc: Sealer | None = None) -> ListSite:
    """The list side's view of the site, with DMARC look-ups through `dns`; `on_leave`
    hears of members who leave a list (the meetings side's `on_leave`); `arc` seals the
    list copies of posts whose results our MTA vouched for."""
    return ListSite.from_config(config, secret, templates, clock=clock,
                                dmarc=DmarcLookup(dns), arc=arc, on_leave=on_leave)


def handlers(site: ListSite, workers: Offload | None = None) -> dict[Role, RoleHandler]:
    """The handler of each list role; a role missing here is refused at RCPT. Large posts
    are read in the worker processes first, if there are any."""
    robot = RequestHandler(site)
    return {Role.POST: PostHandler(site, workers), Role.JOIN: robot, Role.LEAVE: robot,
            Role.REQUEST: robot, Role.CONFIRM: ConfirmHandler(site),
            Role.OWNER: OwnerHandler(site), Role.BOUNCES: BounceHandler(site)}


def jobs(site: ListSite) -> tuple[Job, ...]:
    """The list side's timed jobs."""
    return (DECAY, Job("confirmation-expiry", 600, subscriptions.expire),
            Job("hold-expiry", 600, moderation.expire(site)), digests.job(site))


def pages(site: ListSite, store: Store) -> tuple[Page, ...]:
    """The list side's web pages, and the public archive's."""
    return list_pages.pages(site, store) + confirm_pages.pages(site, store) \
        + archive_pages.pages(site, store)


def member_pages(site: ListSite, store: Store, access: Access,
                 export: Callable[[Session, str], dict[str, Any]],
                 erase: Callable[[Session, str], list[str]]) -> tuple[Page, ...]:
    """The members' own pages (/me); `export` and `erase` are the meetings side's part
    of a person's data."""
    return member_pages_of(site, store, access, Personal(export, erase))


def dashboard_pages(site: ListSite, access: Access) -> tuple[Page, ...]:
    """The dashboard's list pages: the lists, their members and settings, held posts."""
    return roster_pages.pages(site, access) + held_pages.pages(site, access)


def person(session: Session, address: str) -> SiteUser | None:
    """Who the address is on the lists (mailer.webauth): member, owner, moderator of which."""
    rows = session.execute(
        select(MailingList.name, Member.role, Member.display_name, Member.language)
        .join(Member, Member.list_id == MailingList.id)
        .where(func.lower(Member.address) == address.lower())).all()
    if not rows:
        return None
    return SiteUser(address, next((r.display_name for r in rows if r.display_name), ""),
                  next((r.language for r in rows if r.language), ""),
                  frozenset(f"{r.role}:{r.name}" for r in rows))


def on_refused(site: ListSite) -> RefusalHook:
    """What delivery tells the list side: members' addresses the next hop refused."""
    return smarthost_refusals(site)
