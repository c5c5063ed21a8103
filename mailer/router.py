"""The router: hands each stored recipient of a message to the handler of its role.

Work is leased in batches first (attempts + 1, committed), then a batch is handled in one
transaction, each unit in a savepoint of its own: a unit's state changes, the mail they
cause and its "done" mark commit together, and a unit that fails takes nobody else's work
down with it. One commit per batch, not per message, is what lets replies and posts flow
at hundreds a second on SQLite's single writer. A handler that fails is tried again with
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
BATCH = 50


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
        """Finish the batch in hand; the rest stays pending for the next start."""
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
                claimed = await self.db.write(claim, now, now + self.lease, BATCH)
            except Exception:
                log.exception("could not take work from the queue; retrying")
                claimed = []
            if self._stopping and claimed:
                await self.db.write(_unclaim, [work_id for work_id, _ in claimed])
                return
            # Taken more often than allowed without an outcome: the process died while
            # handling it (even while parsing it). Stop before it does so again.
            crashed = [work_id for work_id, attempts in claimed if attempts > self.max_attempts]
            fresh = [work_id for work_id, attempts in claimed if attempts <= self.max_attempts]
            if crashed:
                await self.db.write(_interrupted, crashed)
            if fresh:
                await self._process(fresh)
            if claimed:
                self.on_outgoing()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)

    async def _process(self, ids: list[int]) -> None:
        """Load and parse a batch, do its look-ups, then handle it in one transaction."""
        loaded = await self.db.read(_load, ids)
        ready = await asyncio.gather(*(self._prepare(item) for item in loaded))
        try:
            await self.db.write(self._handle, ready)
        except Exception as error:
            log.exception("a batch of %d failed to commit", len(ready))
            with contextlib.suppress(Exception):
                await self.db.write(_failed, [(item.work_id, _why(error)) for item in ready],
                                    self.max_attempts)

    async def _prepare(self, item: Inbound | Failure) -> Inbound | Failure:
        if isinstance(item, Failure):
            return item
        try:
            handler = self.handlers.get(item.route.role)
            if handler is None:
                raise LookupError(f"no handler for the {item.route.role} role")
            return dataclasses.replace(item, prepared=await handler.prepare(item))
        except Exception as error:
            log.exception("work %d failed while preparing", item.work_id)
            return Failure(item.work_id, _why(error))

    def _handle(self, session: Session, items: list[Inbound | Failure]) -> None:
        """Each unit in a savepoint of its own: one failure leaves the others' work."""
        failed: list[tuple[int, str]] = []
        for item in items:
            if isinstance(item, Failure):
                failed.append((item.work_id, item.error))
                continue
            work = session.get(Work, item.work_id)
            if work is None or work.state != "working":
                continue
            try:
                with session.begin_nested():
                    self.handlers[item.route.role].handle(session, item)
                    work.state, work.done_at, work.error = "done", time.time(), None
            except Exception as error:
                log.exception("work %d failed", item.work_id)
                failed.append((item.work_id, _why(error)))
        _failed(session, failed, self.max_attempts)


@dataclass(frozen=True)
class Failure:
    """A unit of work that could not be loaded or prepared, and why."""

    work_id: int
    error: str


def _why(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _load(session: Session, ids: list[int]) -> list[Inbound | Failure]:
    """The work with its messages, each parsed once (on a reader thread, off the loop)."""
    loaded: list[Inbound | Failure] = []
    for work_id in ids:
        try:
            work = session.get(Work, work_id)
            if work is None or work.state != "working":
                continue
            stored = session.get(Message, work.message_id)
            assert stored is not None
            route = Route(Role(work.role), work.list_name, work.token)
            loaded.append(Inbound(work.id, stored.id, route, work.recipient,
                                  stored.mail_from, stored.raw, parse(stored.raw),
                                  stored.peer))
        except Exception as error:  # a message the parser cannot take: it fails alone
            log.exception("work %d could not be loaded", work_id)
            loaded.append(Failure(work_id, _why(error)))
    return loaded


def _interrupted(session: Session, ids: list[int]) -> None:
    for work in session.scalars(select(Work).where(Work.id.in_(ids),
                                                   Work.state == "working")):
        work.state = "quarantined"
        work.error = work.error or f"processing interrupted {work.attempts - 1} times"


def _unclaim(session: Session, ids: list[int]) -> None:
    session.execute(update(Work).where(Work.id.in_(ids))
                    .values(state="pending", due_at=time.time(),
                            attempts=Work.attempts - 1))


def _failed(session: Session, failures: list[tuple[int, str]], max_attempts: int) -> None:
    """Try failed work again later with backoff, or quarantine it after max_attempts."""
    for work_id, error in failures:
        work = session.get(Work, work_id)
        if work is None:
            continue
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
