"""The outbox: mail to send, stored once with one delivery row per recipient.

The domain packages write here, in the same transaction as the state change that causes
the mail (DESIGN §2); the delivery engine sends it. What the engine reports back to the
domain (a member's address refused for good) is a `Refusal`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Select, insert, literal, select
from sqlalchemy.orm import Session

from mailer.models import Delivery, Outgoing

# Stands in the header block of a stored message where each member's own token goes
# (the RFC 8058 one-click unsubscribe URL); replaced at send time, per recipient.
UNSUBSCRIBE_MARKER = b"@@unsubscribe-token@@"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A member's address refused for good by the next hop (for bounce processing)."""

    member_id: int
    outgoing_id: int
    code: int
    text: str


RefusalHook = Callable[[Session, list[Refusal]], None]


def enqueue(session: Session, *, sender: str, recipients: Iterable[tuple[str, int | None]],
            data: bytes, kind: str, source_id: int | None = None) -> Outgoing:
    """Store a message once and one delivery per (address, member id); same transaction."""
    now = time.time()
    outgoing = Outgoing(created_at=now, kind=kind, sender=sender, source_id=source_id,
                        data=data)
    session.add(outgoing)
    session.flush()
    rows = [{"outgoing_id": outgoing.id, "recipient": address, "member_id": member_id,
             "state": "pending", "attempts": 0, "created_at": now, "due_at": now}
            for address, member_id in recipients]
    if rows:
        session.execute(insert(Delivery), rows)
    return outgoing


def enqueue_each(session: Session, outgoing: Outgoing,
                 recipients: Select) -> None:  # type: ignore[type-arg]
    """One delivery of a stored message per row of `recipients` (address, member id),
    made by the database (INSERT … SELECT): a 10,000-member list is never loaded."""
    now = time.time()
    found = recipients.subquery()
    rows = select(literal(outgoing.id), *found.c, literal("pending"), literal(0),
                  literal(now), literal(now))
    session.execute(insert(Delivery).from_select(
        ["outgoing_id", "recipient", "member_id", "state", "attempts", "created_at", "due_at"],
        rows))
