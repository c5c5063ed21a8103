"""Coordination: which party coordinates, and the `coordination@` role address.

The charter rotates coordination among member parties from one conference to the next
(DESIGN §1). The current term's party is the ORGANIZER's display name on every invitation
sent from then on; its `contact` addresses are the people behind `coordination@`, to whom
mail to that address is forwarded unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import outbox, robot_mail, templates
from mailer.addresses import Route
from mailer.inbound import Inbound, RoleHandler
from meetings.meeting_site import MeetingSite
from meetings.models import CoordinationTerm, Delegate, Party
from meetings.organisation import MeetingError, checked_address, find_party

log = logging.getLogger(__name__)
LOCAL = "coordination"


def current_term(session: Session) -> CoordinationTerm | None:
    """The open term, the latest if several."""
    return session.scalar(select(CoordinationTerm).where(CoordinationTerm.ended_at.is_(None))
                          .order_by(CoordinationTerm.started_at.desc(),
                                    CoordinationTerm.id.desc()).limit(1))


def organizer_name(session: Session, site: MeetingSite) -> str:
    """The ORGANIZER's CN: the coordinating party, or the site before any handover."""
    term = current_term(session)
    party = session.get(Party, term.party_id) if term else None
    return party.name if party else site.name


def contacts(session: Session) -> list[str]:
    """The addresses that `coordination@` reaches now."""
    term = current_term(session)
    return [a for a in (term.contact.split(",") if term else []) if a]


def handover(session: Session, party_name: str, addresses: list[str],
             now: float) -> CoordinationTerm:
    """End the current term and start the party's (charter: rotation between conferences)."""
    party = find_party(session, party_name)
    checked = list(dict.fromkeys(checked_address(a) for a in addresses))
    contact = ",".join(checked)
    if len(contact) > 320:
        raise MeetingError("the contact addresses together exceed 320 characters")
    term = current_term(session)
    if term is not None:
        term.ended_at = now
    made = CoordinationTerm(party_id=party.id, started_at=now, ended_at=None,
                            contact=contact)
    session.add(made)
    session.flush()
    return made


def language(session: Session) -> str:
    """The language of the coordinators' mail: that of the coordinating party's people."""
    term = current_term(session)
    found = session.scalar(select(Delegate.language).where(
        Delegate.party_id == term.party_id).order_by(Delegate.id).limit(1)) if term else None
    return templates.language_of(found)


def terms(session: Session) -> list[tuple[CoordinationTerm, Party]]:
    """Every coordination term with its party, oldest first."""
    rows = session.execute(select(CoordinationTerm, Party)
                           .join(Party, CoordinationTerm.party_id == Party.id)
                           .order_by(CoordinationTerm.started_at, CoordinationTerm.id))
    return [(t, p) for t, p in rows]


def notify(session: Session, site: MeetingSite, template: str, context: dict[str, Any],
           kind: str) -> int:
    """One robot mail from coordination@ to the coordinators, in their language; the
    number queued (0 when there is no coordination contact)."""
    recipients = contacts(session)
    if not recipients:
        return 0
    subject, body = templates.render(site.templates, template, language(session), context)
    own = site.address(LOCAL)
    data = robot_mail.robot_message(sender=(site.name, own), to=own, subject=subject,
                                    body=body, domain=site.domain, auto="auto-generated")
    outbox.enqueue(session, sender=own, recipients=[(a, None) for a in recipients],
                   data=data, kind=kind)
    return 1


def forward(session: Session, site: MeetingSite, raw: bytes) -> int:
    """Queue a message unchanged to the coordinators; the number of recipients (0: it
    went to the site contact, as there are none yet).

    A `Delivered-To: coordination@` line is put on top, as Postfix does, so that the
    message is recognised if it ever comes back (a forwarding loop).
    """
    recipients = contacts(session)
    if not recipients:
        # Human mail is never dropped: before a handover names a contact, the site
        # contact reads it (DESIGN §3).
        site.contact.send(session, raw, recipient=site.address(LOCAL), cause="coordination",
                          why=f"mail to {site.address(LOCAL)} before a coordination contact "
                              "is named (alliance coordination handover PARTY --contact "
                              "ADDRESS)")
        return 0
    data = f"Delivered-To: {site.address(LOCAL)}\r\n".encode() + raw
    outbox.enqueue(session, sender=site.address(LOCAL),
                   recipients=[(address, None) for address in recipients], data=data,
                   kind="forward")
    return len(recipients)


class CoordinationHandler(RoleHandler):
    """`coordination@`: forwards to the current coordinators, except bounces and loops."""

    def __init__(self, site: MeetingSite) -> None:
        self.site = site

    def accepts(self, session: Session, route: Route) -> bool:
        """`coordination@` always exists (DESIGN §3)."""
        return True

    def handle(self, session: Session, inbound: Inbound) -> None:
        """Forward, unless it is a bounce (null sender) or came round before."""
        own = self.site.address(LOCAL).lower()
        if not inbound.mail_from:
            log.info("bounce to %s dropped (message %d)", own, inbound.message_id)
            return
        if any(str(value).strip().lower() == own
               for value in inbound.message.get_all("delivered-to", [])):
            log.warning("forwarding loop on %s dropped (message %d)", own,
                        inbound.message_id)
            return
        forward(session, self.site, inbound.raw)
