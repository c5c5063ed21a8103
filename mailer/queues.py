"""The queues as an operator sees them: deliveries and inbound work by state, the oldest
delivery still waiting, the deliveries deferred after a failed try with their last error,
and the latest that failed for good.

One call for `alliance queue` and the dashboard's queue page alike; the quarantine and its
replay are the router's (`router.quarantined`, `router.replay`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.models import Delivery, Work

SHOWN = 20      # deferred deliveries and failures listed, at most


@dataclass(frozen=True)
class Deferred:
    """A delivery that failed for now (a 4xx, a connection error) and waits for its retry."""

    id: int
    recipient: str
    attempts: int
    due_at: float
    code: int | None
    error: str


@dataclass(frozen=True)
class Failure:
    """A delivery that failed for good (a 5xx, or its retries ran out)."""

    recipient: str
    code: int | None
    error: str


@dataclass(frozen=True)
class QueueState:
    deliveries: dict[str, int]       # by state: pending, sending, done, failed
    work: dict[str, int]             # inbound work by state, quarantined included
    next_attempt: float | None       # when the soonest pending delivery is due
    oldest_waiting: float | None     # when the oldest delivery not yet done was queued
    deferred: list[Deferred]         # soonest due first
    recent_failures: list[Failure]   # latest first


def state(session: Session, shown: int = SHOWN) -> QueueState:
    """The queues now; each listing holds at most `shown` rows."""
    waiting = Delivery.state.in_(("pending", "sending"))
    deferred = session.execute(
        select(Delivery.id, Delivery.recipient, Delivery.attempts, Delivery.due_at,
               Delivery.code, Delivery.error)
        .where(Delivery.state == "pending", Delivery.attempts > 0)
        .order_by(Delivery.due_at).limit(shown)).all()
    failed = session.execute(select(Delivery.recipient, Delivery.code, Delivery.error)
                             .where(Delivery.state == "failed")
                             .order_by(Delivery.id.desc()).limit(shown)).all()
    return QueueState(
        deliveries=_counts(session, Delivery.state), work=_counts(session, Work.state),
        next_attempt=session.scalar(select(func.min(Delivery.due_at))
                                    .where(Delivery.state == "pending")),
        oldest_waiting=session.scalar(select(func.min(Delivery.created_at)).where(waiting)),
        deferred=[Deferred(r.id, r.recipient, r.attempts, r.due_at, r.code, r.error or "")
                  for r in deferred],
        recent_failures=[Failure(r.recipient, r.code, r.error or "") for r in failed])


def _counts(session: Session, column: Any) -> dict[str, int]:
    return {str(value): int(count) for value, count in session.execute(
        select(column, func.count()).group_by(column)).all()}
