"""What every list role handler shares: the site, and which list addresses exist."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lists.list_site import ListSite
from lists.models import MailingList
from mailer.addresses import Route
from mailer.inbound import RoleHandler


class ListHandler(RoleHandler):
    """A role handler of `NAME…@`: the list must exist (else 550 at RCPT)."""

    def __init__(self, site: ListSite) -> None:
        self.site = site

    def accepts(self, session: Session, route: Route) -> bool:
        return session.scalar(select(MailingList.id).where(
            MailingList.name == route.list)) is not None
