"""What the meetings side needs to know about the site, handed in by the composition root."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2

from mailer.admin import SiteContact
from mailer.config import Config
from mailer.tokens import Signer


@dataclass(frozen=True)
class MeetingSite:
    domain: str
    name: str
    templates: jinja2.Environment
    attendee_tokens: Signer        # rsvp+TOKEN@: which invitation a reply is about
    base_url: str                  # "" when no HTTP listener is published
    clock: Callable[[], float] = time.time
    reminder_days: tuple[int, ...] = (14, 3)  # [meetings] reminder_days
    # site.admin: who gets mail with no other person (no coordinator, no owner yet)
    contact: SiteContact = field(default_factory=lambda: SiteContact("", ""))

    @classmethod
    def from_config(cls, config: Config, secret: bytes, templates: jinja2.Environment, *,
                    clock: Callable[[], float] = time.time) -> MeetingSite:
        """The meetings side's view of the site; `secret` keys its tokens."""
        return cls(domain=config.site.domain.lower(), name=config.site.name,
                   templates=templates, attendee_tokens=Signer(secret, "attendee"),
                   base_url=config.base_url, clock=clock,
                   reminder_days=config.meetings.reminder_days,
                   contact=SiteContact(config.site.admin, config.site.domain))

    def address(self, local: str) -> str:
        return f"{local}@{self.domain}"

    def rsvp_address(self, invitation_id: int) -> str:
        """ORGANIZER and From of an invitation: rsvp+TOKEN@ (DESIGN §3, itip.md §0.3)."""
        return self.address(f"rsvp+{self.attendee_tokens.sign(invitation_id)}")
