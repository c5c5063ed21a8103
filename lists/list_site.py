"""What the list side needs to know about the site, handed in by the composition root."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jinja2

from lists.dmarc import DmarcLookup
from mailer.admin import SiteContact
from mailer.arc import Sealer
from mailer.config import Config, ListsSection
from mailer.tokens import Signer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from lists.models import MailingList

# What the list side tells others when a member leaves a list of their own accord (a
# confirmed mail command, the web's one-click unsubscribe): in the same transaction, the
# session, the list and the address. The meetings side tells the coordinators when the
# member holds a seat in the list's body.
LeaveHook = Callable[["Session", "MailingList", str], object]


@dataclass(frozen=True)
class ListSite:
    domain: str
    name: str
    templates: jinja2.Environment
    member_tokens: Signer          # VERP: which member a bounce is about
    unsubscribe_tokens: Signer     # RFC 8058 one-click unsubscribe links
    base_url: str                  # "" when no HTTP listener is published
    limits: ListsSection = field(default_factory=ListsSection)
    clock: Callable[[], float] = time.time
    dmarc: DmarcLookup | None = None
    arc: Sealer | None = None      # ARC sets on list copies (RFC 8617); None: none
    on_leave: LeaveHook | None = None
    # site.admin: who gets mail with no other person (no coordinator, no owner yet)
    contact: SiteContact = field(default_factory=lambda: SiteContact("", ""))

    @classmethod
    def from_config(cls, config: Config, secret: bytes, templates: jinja2.Environment, *,
                    clock: Callable[[], float] = time.time,
                    dmarc: DmarcLookup | None = None, arc: Sealer | None = None,
                    on_leave: LeaveHook | None = None) -> ListSite:
        """The list side's view of the site; `secret` keys its tokens."""
        return cls(domain=config.site.domain.lower(), name=config.site.name,
                   templates=templates, member_tokens=Signer(secret, "member"),
                   unsubscribe_tokens=Signer(secret, "unsubscribe"),
                   base_url=config.base_url, limits=config.lists, clock=clock, dmarc=dmarc,
                   arc=arc, on_leave=on_leave,
                   contact=SiteContact(config.site.admin, config.site.domain))

    def address(self, local: str) -> str:
        return f"{local}@{self.domain}"
