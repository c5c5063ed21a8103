"""The list side as the daemon sees it: role handlers, scheduled jobs, web pages.

The composition root (`mailer.daemon.build`) asks this module for each; nothing registers
itself anywhere.
"""

from __future__ import annotations

from lists.posting import PostHandler
from lists.site import ListSite
from mailer.db import Database
from mailer.router import RoleHandler
from mailer.routing import Role
from mailer.scheduler import Job
from mailer.web import Route


def handlers(site: ListSite) -> dict[Role, RoleHandler]:
    """The handler of each list role; a role missing here is refused at RCPT."""
    return {Role.POST: PostHandler(site)}


def jobs(site: ListSite) -> tuple[Job, ...]:
    """The list side's timed jobs."""
    return ()


def routes(site: ListSite, db: Database) -> tuple[Route, ...]:
    """The list side's web pages."""
    return ()
