"""Whether the service is well: what `/healthz` answers, and the `/metrics` page beside it.

`Checker` is the whole judgement, with no HTTP in it: the database answers, the oldest
delivery waiting for the smarthost is younger than `health.max_delivery_age`, and the oldest
received message waiting to be handled is younger than `health.max_work_age`. It returns a
report (JSON-ready) and a status, 200 or 503 with the failing checks named. `pages` hands
both endpoints to the HTTP listener as pages like any other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.config import HealthSection
from mailer.metrics import CONTENT_TYPE, Metrics
from mailer.models import Delivery, Message, Work
from mailer.web import Page, Request, Response, Store

DATABASE_TIMEOUT = 5.0   # seconds the database has to answer before it counts as down
FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")


@dataclass(frozen=True)
class Health:
    """The verdict: 200 when every check passes, else 503; and the report."""

    status: int
    report: dict[str, Any]


def queues(session: Session) -> dict[str, Any]:
    """The queues' depth and age, and when a delivery last succeeded."""
    waiting = Delivery.state.in_(("pending", "sending"))
    depth, oldest = session.execute(select(func.count(), func.min(Delivery.created_at))
                                    .where(waiting)).one()
    work_depth, oldest_work = session.execute(
        select(func.count(), func.min(Message.received_at))
        .select_from(Work).join(Message, Message.id == Work.message_id)
        .where(Work.state.in_(("pending", "working")))).one()
    # A done delivery keeps its last lease's end in due_at, which (state, due_at) indexes:
    # the newest lease that ended in a 250 is one look-up, however many rows are done.
    last = session.scalar(select(Delivery.done_at).where(Delivery.state == "done")
                          .order_by(Delivery.due_at.desc()).limit(1))
    quarantined = session.scalar(select(func.count()).select_from(Work)
                                 .where(Work.state == "quarantined"))
    return {"queue_depth": int(depth or 0), "oldest_delivery": oldest,
            "work_depth": int(work_depth or 0), "oldest_work": oldest_work,
            "last_delivery": last, "quarantined": int(quarantined or 0)}


def judge(found: dict[str, Any], limits: HealthSection, now: float) -> Health:
    """The report and verdict from what `queues` found.

    >>> found = {"queue_depth": 2, "oldest_delivery": 0.0, "work_depth": 0,
    ...          "oldest_work": None, "last_delivery": None, "quarantined": 0}
    >>> health = judge(found, HealthSection(max_delivery_age=60), now=90.0)
    >>> health.status, health.report["failing"], health.report["oldest_delivery_age"]
    (503, ['oldest_delivery'], 90.0)
    """
    delivery_age = age(found["oldest_delivery"], now)
    work_age = age(found["oldest_work"], now)
    failing = []
    if delivery_age is not None and delivery_age > limits.max_delivery_age:
        failing.append("oldest_delivery")
    if work_age is not None and work_age > limits.max_work_age:
        failing.append("oldest_work")
    report = {"status": "unhealthy" if failing else "ok", "failing": failing,
              "database": "ok", "queue_depth": found["queue_depth"],
              "oldest_delivery_age": delivery_age,
              "last_delivery": stamp(found["last_delivery"]),
              "last_delivery_age": age(found["last_delivery"], now),
              "work_depth": found["work_depth"], "oldest_work_age": work_age,
              "quarantined": found["quarantined"]}
    return Health(503 if failing else 200, report)


class Checker:
    """Asks the database and judges: 503 naming `database` when it does not answer.

    One question at a time: while the database hangs, each /healthz does not start another
    (each would hold a reader thread until the database answers); it waits on the one
    asked already, up to `timeout` seconds.
    """

    def __init__(self, db: Store, limits: HealthSection,
                 timeout: float = DATABASE_TIMEOUT) -> None:
        self.db = db
        self.limits = limits
        self.timeout = timeout
        self._asking: asyncio.Future[dict[str, Any]] | None = None

    async def check(self, now: float | None = None) -> Health:
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self.db.read(queues))
            # Its outcome is read here even when no one waits for it any more.
            self._asking.add_done_callback(lambda asked: asked.cancelled() or asked.exception())
        try:
            found = await asyncio.wait_for(asyncio.shield(self._asking), self.timeout)
        except TimeoutError:
            return unavailable(f"no answer within {self.timeout:g} s")
        except Exception as error:
            return unavailable(" ".join(str(getattr(error, "orig", None) or error).split())
                               or type(error).__name__)
        return judge(found, self.limits, time.time() if now is None else now)


def unavailable(cause: str) -> Health:
    return Health(503, {"status": "unhealthy", "failing": ["database"],
                        "database": f"unavailable: {cause[:300]}"})


def age(moment: float | None, now: float) -> float | None:
    return None if moment is None else round(max(0.0, now - moment), 3)


def stamp(moment: float | None) -> str | None:
    """A time as UTC ISO 8601 (None stays None).

    >>> stamp(0.0)
    '1970-01-01T00:00:00Z'
    """
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def allowed(request: Request, networks: Sequence[str]) -> bool:
    """Whether the client may read /metrics: its address is in one of `networks`, and no
    proxy forwarded the request (a proxy on loopback would otherwise let anyone in).

    >>> ask = lambda peer, **headers: Request("GET", "/metrics", {}, headers, b"", peer)
    >>> allowed(ask("127.0.0.1"), ["127.0.0.1/32"]), allowed(ask("192.0.2.1"), ["127.0.0.1/32"])
    (True, False)
    >>> allowed(ask("127.0.0.1", **{"x-forwarded-for": "192.0.2.1"}), ["127.0.0.1/32"])
    False
    """
    if any(name in request.headers for name in FORWARDED):
        return False
    try:
        peer = ipaddress.ip_address(request.peer.partition("%")[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in ipaddress.ip_network(network, strict=False) for network in networks)


def pages(db: Store, limits: HealthSection, metrics: Metrics,
          metrics_allow: Sequence[str]) -> tuple[Page, ...]:
    """`GET /healthz` (JSON, 200 or 503) and `GET /metrics` (Prometheus text)."""
    checker = Checker(db, limits)

    async def healthz(request: Request, _match: re.Match[str]) -> Response:
        health = await checker.check()
        return Response(health.status, json.dumps(health.report).encode() + b"\n",
                        "application/json")

    async def exposition(request: Request, _match: re.Match[str]) -> Response:
        if not allowed(request, metrics_allow):
            return Response(404, b"not found\n", "text/plain; charset=utf-8")
        return Response(200, metrics.exposition(), CONTENT_TYPE)

    return (Page(("GET",), re.compile("/healthz"), healthz),
            Page(("GET",), re.compile("/metrics"), exposition))
