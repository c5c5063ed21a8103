"""The daemon's metrics, in the Prometheus text format (prometheus_client).

Counters of the message events (mailer.events) and a histogram of intake latency, the time
from the end of DATA to the 250. They live in a registry of this daemon's own, not in the
library's global one: each process counts what it did, from its start (several daemons on
one database each expose their own; Prometheus adds them up).
"""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from mailer import events

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Intake latency buckets, seconds: the target is a p99 under 200 ms (DESIGN §8).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """What one daemon counts, and its exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "alliance_messages_received", "Messages stored and answered 250 (SMTP or LMTP).",
            registry=self.registry)
        self.posts = Counter(
            "alliance_posts", "Posts to lists by outcome: distributed, held, rejected, "
            "discarded.", ["outcome"], registry=self.registry)
        self.deliveries = Counter(
            "alliance_deliveries", "Delivery attempts to the smarthost by outcome: delivered, "
            "deferred (4xx, tried again), failed (5xx, or retries ran out).", ["outcome"],
            registry=self.registry)
        self.bounces = Counter(
            "alliance_bounces", "Bounces scored against list members.", registry=self.registry)
        self.rsvps = Counter(
            "alliance_rsvps", "Replies to invitations by outcome (applied: a PARTSTAT "
            "changed).", ["outcome"], registry=self.registry)
        self.intake_latency = Histogram(
            "alliance_intake_latency_seconds", "From the end of DATA to the 250 (message "
            "committed).", buckets=LATENCY_BUCKETS, registry=self.registry)
        # The outcomes a dashboard plots are there from the start, at 0.
        for outcome in ("distributed", "held", "rejected", "discarded"):
            self.posts.labels(outcome)
        for outcome in ("delivered", "deferred", "failed"):
            self.deliveries.labels(outcome)
        self.rsvps.labels("applied")

    def count(self, noted: collections.Counter[tuple[str, str]]) -> None:
        """Count the events a committed transaction noted."""
        for (name, outcome), number in noted.items():
            if name == "received":
                self.received.inc(number)
            elif name == "post":
                self.posts.labels(outcome).inc(number)
            elif name == "delivery":
                self.deliveries.labels(outcome).inc(number)
            elif name == "bounced":
                self.bounces.inc(number)
            elif name == "rsvp":
                self.rsvps.labels(outcome).inc(number)

    def watch(self, sessions: sessionmaker[Session]) -> None:
        """Count what each transaction of these sessions notes, when it commits."""
        def committed(session: Session) -> None:
            self.count(events.noted(session))

        def rolled_back(session: Session, transaction: SessionTransaction) -> None:
            # A savepoint rolled back leaves the transaction around it, and its notes.
            if transaction.parent is None:
                events.noted(session)

        event.listen(sessions, "after_commit", committed)
        event.listen(sessions, "after_soft_rollback", rolled_back)

    def exposition(self) -> bytes:
        """Every metric, in the Prometheus text format."""
        return generate_latest(self.registry)
