"""What the meetings side needs to know about the site, handed in by the composition root."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2

from mailer.admin import SiteContact
from mailer.config import Config
from mailer.tokens import Signer

# What an invitee may answer on the web, each at a page of its own (meetings.answer_pages).
ANSWER_CHOICES = ("accept", "tentative", "decline", "substitute")


@dataclass(frozen=True)
class MeetingSite:
    domain: str
    name: str
    templates: jinja2.Environment
    attendee_tokens: Signer        # rsvp+TOKEN@: which invitation a reply is about
    answer_tokens: Signer          # /rsvp/TOKEN/...: the invitee's answer links on the web
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
                   answer_tokens=Signer(secret, "answer"),
                   base_url=config.base_url, clock=clock,
                   reminder_days=config.meetings.reminder_days,
                   contact=SiteContact(config.site.admin, config.site.domain))

    def address(self, local: str) -> str:
        return f"{local}@{self.domain}"

    def rsvp_address(self, invitation_id: int) -> str:
        """ORGANIZER and From of an invitation: rsvp+TOKEN@ (DESIGN §3, itip.md §0.3)."""
        return self.address(f"rsvp+{self.attendee_tokens.sign(invitation_id)}")

    def answer_links(self, invitation_id: int) -> dict[str, str]:
        """The invitee's answer pages, by choice (ANSWER_CHOICES), or {} with no web site.

        Their token has a purpose of its own: the rsvp+TOKEN@ address, which every reply
        and forward of the invitation carries, opens no page.
        """
        if not self.base_url:
            return {}
        token = self.answer_tokens.sign(invitation_id)
        return {choice: f"{self.base_url}/rsvp/{token}/{choice}" for choice in ANSWER_CHOICES}
