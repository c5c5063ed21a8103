"""The site contact (`site.admin`): the person who gets mail that has no one else.

`postmaster@` (RFC 5321 §4.5.1) and `abuse@` (RFC 2142) reach the admin, and so does mail
the domain has nobody for yet: `coordination@` before a contact is named, owner mail of a
list with no owner (DESIGN §3). The message goes on as it came, under two header lines
saying where it was sent and why, through the outbox like all mail: nothing that was
answered 250 is lost. Each cause is warned about once per process.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from mailer import outbox
from mailer.addresses import Route
from mailer.inbound import Inbound, RoleHandler

log = logging.getLogger(__name__)
REASON = "X-Alliance-Reason"


class NoSiteContact(RuntimeError):
    """Mail for the admin while `site.admin` is empty: the work waits in the quarantine."""


class SiteContact:
    """Forwards mail to the site admin, warning once per cause."""

    def __init__(self, address: str, domain: str) -> None:
        self.address = address
        self.domain = domain.lower()
        self._warned: set[str] = set()

    def warn_once(self, cause: str, why: str) -> None:
        """The warning that mail of this cause goes to the admin, once per process."""
        if cause not in self._warned:
            self._warned.add(cause)
            log.warning("%s: sent to the site contact %s (said once per process)", why,
                        self.address or "(site.admin is not set)",
                        extra={"event": "to-admin", "cause": cause})

    def forward(self, session: Session, inbound: Inbound, *, cause: str, why: str) -> None:
        """Queue an inbound message as it came to the admin, with `why` on top."""
        self.send(session, inbound.raw, recipient=inbound.recipient, cause=cause, why=why,
                  source_id=inbound.message_id)

    def send(self, session: Session, raw: bytes, *, recipient: str, cause: str, why: str,
             source_id: int | None = None) -> None:
        """Queue `raw` (meant for `recipient`) to the admin, `why` in a header on top.

        The envelope sender is empty (RFC 5321 §4.5.5): a failure to deliver it to the
        admin must never come back to us as mail for the admin again. Without an admin
        this raises NoSiteContact, so that the work is retried and then quarantined
        (DESIGN §4: never to silence).
        """
        self.warn_once(cause, why)
        if not self.address:
            raise NoSiteContact(f"{why}, and site.admin is not set: set it, then "
                                "`alliance quarantine replay ID`")
        data = (f"Delivered-To: {recipient}\r\n{REASON}: {why}\r\n".encode() + raw)
        outbox.enqueue(session, sender="", recipients=[(self.address, None)], data=data,
                       kind="admin", source_id=source_id)
        log.info("mail for %s sent to the site contact", recipient,
                 extra={"event": "to-admin", "cause": cause, "message_id": source_id})


class AdminHandler(RoleHandler):
    """`postmaster@` and `abuse@`: always there, and passed to the site contact."""

    def __init__(self, contact: SiteContact) -> None:
        self.contact = contact

    def accepts(self, session: Session, route: Route) -> bool:
        """RFC 5321 §4.5.1 and RFC 2142: these addresses must always take mail."""
        return True

    def handle(self, session: Session, inbound: Inbound) -> None:
        local = inbound.recipient.partition("@")[0].lower()
        self.contact.forward(session, inbound, cause=local,
                             why=f"mail to {local}@{self.contact.domain}")
