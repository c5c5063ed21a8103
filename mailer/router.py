"""The router: hands each stored recipient of a message to the handler of its role.

Each unit of work is leased first (attempts + 1, committed), then handled in a transaction
of its own: the handler's state changes and the mail they cause commit together, and the
work row is marked done in that same transaction. A handler that fails is tried again with
backoff; after `router.max_attempts` tries the work is quarantined with the error, where
`alliance quarantine` lists and replays it (Mailman's shunt queue, DESIGN §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer.db import Database
from mailer.models import Message, Work
from mailer.routing import Role, Route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inbound:
    """What a handler is given: one recipient of one stored message."""

    work_id: int
    message_id: int
    route: Route
    recipient: str
    mail_from: str
    raw: bytes
    message: EmailMessage
    peer: str = ""
    prepared: Any = None


class RoleHandler(Protocol):
    def accepts(self, session: Session, route: Route) -> bool:
        """Whether an address of this role exists (asked at RCPT time)."""
        ...

    async def prepare(self, inbound: Inbound) -> Any:
        """Network look-ups the handling needs (DNS), done outside any transaction.

        What it returns reaches `handle` as `inbound.prepared`; most handlers return None.
        """
        ...

    def handle(self, session: Session, inbound: Inbound) -> None:
        """Act on the message; write state and outgoing mail through the session."""
        ...


def parse(raw: bytes) -> EmailMessage:
    """Parse stored bytes once, with the modern policy."""
    message = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def claim(session: Session, now: float, lease_end: float,
          limit: int) -> list[tuple[int, int]]:
    """Lease due work: (id, attempts including this one), oldest first."""
    due = (select(Work.id).where(Work.state.in_(("pending", "working")), Work.due_at <= now)
           .order_by(Work.id).limit(limit).with_for_update(skip_locked=True))
    rows = session.execute(update(Work).where(Work.id.in_(due))
                           .values(state="working", attempts=Work.attempts + 1,
                                   due_at=lease_end).returning(Work.id, Work.attempts))
    return sorted((row[0], row[1]) for row in rows)


class Router:
    """Runs the role handlers over stored work, one transaction per unit."""

    def __init__(self, db: Database, handlers: Mapping[Role, RoleHandler], *,
                 max_attempts: int, on_outgoing: Callable[[], None],
                 poll: float = 1.0, lease: float = 300.0) -> None:
        self.db = db
        self.handlers = handlers
        self.max_attempts = max_attempts
        self.on_outgoing = on_outgoing
        self.poll = poll
        self.lease = lease
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="router")

    async def stop(self) -> None:
        """Finish the unit in hand; the rest stays pending for the next start."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    async def accepts(self, route: Route) -> bool:
        handler = self.handlers.get(route.role)
        return handler is not None and await self.db.read(handler.accepts, route)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = time.time()
            try:
                ids = await self.db.write(claim, now, now + self.lease, 50)
            except Exception:
                log.exception("could not take work from the queue; retrying")
                ids = []
            for work_id, attempts in ids:
                if self._stopping:
                    await self.db.write(_unclaim, work_id)
                elif attempts > self.max_attempts:
                    # Taken more often than allowed without an outcome: the process died
                    # while handling it (even while parsing it). Stop before it does again.
                    await self.db.write(_interrupted, work_id)
                else:
                    await self._process(work_id)
            if ids:
                self.on_outgoing()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)

    async def _process(self, work_id: int) -> None:
        try:
            inbound = await self.db.read(_load, work_id)
            if inbound is not None:
                handler = self.handlers.get(inbound.route.role)
                if handler is None:
                    raise LookupError(f"no handler for the {inbound.route.role} role")
                prepared = await handler.prepare(inbound)
                inbound = dataclasses.replace(inbound, prepared=prepared)
            await self.db.write(self._handle, work_id, inbound)
        except Exception as error:
            log.exception("work %d failed", work_id)
            with contextlib.suppress(Exception):
                await self.db.write(_failed, work_id, f"{type(error).__name__}: {error}",
                                    self.max_attempts)

    def _handle(self, session: Session, work_id: int, inbound: Inbound | None) -> None:
        work = session.get(Work, work_id)
        if work is None or work.state != "working":
            return
        assert inbound is not None, "a working row has its message"
        self.handlers[inbound.route.role].handle(session, inbound)
        work.state, work.done_at, work.error = "done", time.time(), None


def _load(session: Session, work_id: int) -> Inbound | None:
    """The work with its message, parsed once (on a reader thread, off the loop)."""
    work = session.get(Work, work_id)
    if work is None or work.state != "working":
        return None
    stored = session.get(Message, work.message_id)
    assert stored is not None
    route = Route(Role(work.role), work.list_name, work.token)
    return Inbound(work.id, stored.id, route, work.recipient, stored.mail_from, stored.raw,
                   parse(stored.raw), stored.peer)


def _interrupted(session: Session, work_id: int) -> None:
    work = session.get(Work, work_id)
    if work is not None and work.state == "working":
        work.state = "quarantined"
        work.error = work.error or f"processing interrupted {work.attempts - 1} times"


def _unclaim(session: Session, work_id: int) -> None:
    session.execute(update(Work).where(Work.id == work_id)
                    .values(state="pending", due_at=time.time(),
                            attempts=Work.attempts - 1))


def _failed(session: Session, work_id: int, error: str, max_attempts: int) -> None:
    work = session.get(Work, work_id)
    if work is None:
        return
    work.error = error[:2000]
    if work.attempts >= max_attempts:
        work.state = "quarantined"
    else:
        work.state, work.due_at = "pending", time.time() + 2.0 ** work.attempts


def quarantined(session: Session) -> list[Work]:
    """Work that failed too often, oldest first."""
    return list(session.scalars(select(Work).where(Work.state == "quarantined")
                                .order_by(Work.id)))


def replay(session: Session, work_id: int) -> bool:
    """Put quarantined work back in the queue with a fresh count; False if no such work."""
    result = session.execute(update(Work).where(Work.id == work_id,
                                                Work.state == "quarantined")
                             .values(state="pending", attempts=0, due_at=time.time()))
    return bool(getattr(result, "rowcount", 0))
