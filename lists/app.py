"""The list side as the daemon sees it: role handlers, scheduled jobs, web pages.

The composition root (`mailer.daemon.build`) asks this module for each; nothing registers
itself anywhere.
"""

from __future__ import annotations

from lists import digests, moderation, subscriptions, web
from lists.bounces import DECAY, BounceHandler
from lists.posting import PostHandler
from lists.requests import ConfirmHandler, OwnerHandler, RequestHandler
from lists.site import ListSite
from mailer.db import Database
from mailer.router import RoleHandler
from mailer.routing import Role
from mailer.scheduler import Job
from mailer.web import Route


def handlers(site: ListSite) -> dict[Role, RoleHandler]:
    """The handler of each list role; a role missing here is refused at RCPT."""
    robot = RequestHandler(site)
    return {Role.POST: PostHandler(site), Role.JOIN: robot, Role.LEAVE: robot,
            Role.REQUEST: robot, Role.CONFIRM: ConfirmHandler(site),
            Role.OWNER: OwnerHandler(site), Role.BOUNCES: BounceHandler(site)}


def jobs(site: ListSite) -> tuple[Job, ...]:
    """The list side's timed jobs."""
    return (DECAY, Job("confirmation-expiry", 600, subscriptions.expire),
            Job("hold-expiry", 600, moderation.expire(site)), digests.job(site))


def routes(site: ListSite, db: Database) -> tuple[Route, ...]:
    """The list side's web pages."""
    return web.routes(site, db)
