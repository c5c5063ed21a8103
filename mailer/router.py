"""The router: hands each stored recipient of a message to the handler of its role.

Each unit of work is leased first (attempts + 1, committed), then handled in a transaction:
the handler's state changes and the mail they cause commit together, and the work row is
marked done in that same transaction. A handler that fails is tried again with backoff;
after `router.max_attempts` tries the work is quarantined with the error, where
`alliance quarantine` lists and replays it (Mailman's shunt queue, DESIGN §4).

The leased units are loaded with their messages in one query and parsed off the event
loop; each handler's `prepare` then does what must not hold the write transaction (DNS,
reading the message). A handler whose units are small and many (the replies to an
invitation) may set `batch` above 1: that many consecutive units of its role are handled
in one transaction, after its `preload` fetched what they share in one query. If any unit
of a batch fails, the batch is rolled back and its units are handled again one by one,
each in a transaction of its own, so that only the failing unit is retried. A handler may
also set `policy`, the email policy its messages are parsed with (default: the modern one),
and `lazy`, when it reads the raw bytes itself (in a worker process, say).
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
from email.policy import Policy
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
    parsed: EmailMessage | None = None      # `message`, once parsed
    peer: str = ""
    prepared: Any = None
    policy: Policy = default_policy

    @property
    def message(self) -> EmailMessage:
        """The message, parsed with `policy` on first use.

        The router parses it early, on a reader thread, unless the handler is `lazy`.
        """
        if self.parsed is None:
            # A cache, not a change: the value follows from `raw` and `policy` alone.
            object.__setattr__(self, "parsed", parse(self.raw, self.policy))
        assert self.parsed is not None
        return self.parsed


class RoleHandler(Protocol):
    def accepts(self, session: Session, route: Route) -> bool:
        """Whether an address of this role exists (asked at RCPT time)."""
        ...

    async def prepare(self, inbound: Inbound) -> Any:
        """What the handling needs that must not hold the write transaction: network
        look-ups (DNS), reading the message. Done outside any transaction.

        What it returns reaches `handle` as `inbound.prepared`; most handlers return None.
        """
        ...

    def handle(self, session: Session, inbound: Inbound) -> None:
        """Act on the message; write state and outgoing mail through the session."""
        ...

    # Optional, read with getattr: `batch: int` (units per transaction, default 1),
    # `policy: email.policy.Policy` (how this role's messages are parsed), `lazy: bool`
    # (parse only when `inbound.message` is first asked for, default False) and
    # `preload(session, inbounds)` (called once per transaction, before `handle`).


BATCH = 50        # units leased at once
DEPTH = 3         # leased batches in hand at once


def parse(raw: bytes, policy: Policy = default_policy) -> EmailMessage:
    """Parse stored bytes once, with the modern policy unless told otherwise."""
    message = BytesParser(policy=policy).parsebytes(raw)
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
        # Up to DEPTH leased batches are in hand at once: while one is being written, the
        # next are loaded and prepared (in worker processes, DNS look-ups), so neither the
        # writer nor the workers wait for the other. Batches are written in lease order.
        in_hand: set[asyncio.Task[None]] = set()
        last: asyncio.Task[None] | None = None
        try:
            while not self._stopping:
                self._wake.clear()
                if len(in_hand) >= DEPTH:
                    await asyncio.wait(in_hand, return_when=asyncio.FIRST_COMPLETED)
                    continue
                ids = await self._lease()
                if ids:
                    last = asyncio.create_task(self._prepare_and_write(ids, last))
                    in_hand.add(last)
                    last.add_done_callback(in_hand.discard)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll)
        finally:
            if in_hand:
                await asyncio.gather(*in_hand, return_exceptions=True)

    async def _prepare_and_write(self, ids: list[int],
                                 before: asyncio.Task[None] | None) -> None:
        """One leased batch: prepared now, written once the batch before it is."""
        ready = await self._prepare_all(ids)
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        await self._write(ready)

    async def _lease(self) -> list[int]:
        """Due work leased to us, oldest first, without what keeps killing the process."""
        now = time.time()
        try:
            ids = await self.db.write(claim, now, now + self.lease, BATCH)
        except Exception:
            log.exception("could not take work from the queue; retrying")
            return []
        live = []
        for work_id, attempts in ids:
            if attempts > self.max_attempts:
                # Taken more often than allowed without an outcome: the process died
                # while handling it (even while parsing it). Stop before it does again.
                await self.db.write(_interrupted, work_id)
            else:
                live.append(work_id)
        return live

    async def _prepare_all(self, ids: list[int]) -> list[Inbound]:
        """Load leased units with their messages, and prepare each; failures recorded."""
        try:
            loaded = await self.db.read(_load, ids, self._parsing())
        except Exception as error:
            log.exception("could not load work %s", ids)
            for work_id in ids:
                await self._fail(work_id, error)
            return []
        # Prepared side by side: DNS look-ups overlap, and work sent to worker processes
        # queues there while this process goes on with intake.
        outcomes = await asyncio.gather(*(self._prepare(work_id, loaded.get(work_id))
                                          for work_id in ids))
        return [inbound for inbound in outcomes if inbound is not None]

    async def _write(self, ready: list[Inbound]) -> None:
        """Handle prepared units, in order, a transaction per group; then wake delivery."""
        for group in self._groups(ready):
            if self._stopping:
                for inbound in group:
                    await self.db.write(_unclaim, inbound.work_id)
                continue
            if len(group) > 1:
                try:
                    await self.db.write(self._handle, group)
                    continue
                except Exception:
                    log.warning("a batch of %d units failed; handling them one by one",
                                len(group), exc_info=True)
            for inbound in group:
                try:
                    await self.db.write(self._handle, [inbound])
                except Exception as error:
                    log.exception("work %d failed", inbound.work_id)
                    await self._fail(inbound.work_id, error)
        self.on_outgoing()

    async def _prepare(self, work_id: int,
                       inbound: Inbound | Exception | None) -> Inbound | None:
        """The unit with what its handler prepared; None if it failed or is not ours."""
        try:
            if isinstance(inbound, Exception):
                raise inbound
            if inbound is None:     # no longer leased to us
                return None
            prepared = await self._handler(inbound).prepare(inbound)
            return dataclasses.replace(inbound, prepared=prepared)
        except Exception as error:
            log.exception("work %d failed", work_id)
            await self._fail(work_id, error)
            return None

    def _handler(self, inbound: Inbound) -> RoleHandler:
        handler = self.handlers.get(inbound.route.role)
        if handler is None:
            raise LookupError(f"no handler for the {inbound.route.role} role")
        return handler

    def _parsing(self) -> dict[str, tuple[Policy, bool]]:
        """How each role's messages are parsed: (policy, early)."""
        return {role.value: (getattr(handler, "policy", default_policy),
                             not getattr(handler, "lazy", False))
                for role, handler in self.handlers.items()}

    def _groups(self, ready: list[Inbound]) -> list[list[Inbound]]:
        """Consecutive units of one role, at most its handler's `batch` in a group."""
        groups: list[list[Inbound]] = []
        for inbound in ready:
            size = max(1, int(getattr(self.handlers[inbound.route.role], "batch", 1)))
            last = groups[-1] if groups else None
            if last and last[0].route.role == inbound.route.role and len(last) < size:
                last.append(inbound)
            else:
                groups.append([inbound])
        return groups

    async def _fail(self, work_id: int, error: Exception) -> None:
        with contextlib.suppress(Exception):
            await self.db.write(_failed, work_id, f"{type(error).__name__}: {error}",
                                self.max_attempts)

    def _handle(self, session: Session, group: list[Inbound]) -> None:
        """Handle units of one role in this transaction and mark them done with it."""
        ids = [inbound.work_id for inbound in group]
        working = set(session.scalars(select(Work.id).where(Work.id.in_(ids),
                                                            Work.state == "working")))
        units = [inbound for inbound in group if inbound.work_id in working]
        if not units:
            return
        handler = self.handlers[units[0].route.role]
        preload = getattr(handler, "preload", None)
        if preload is not None:
            preload(session, units)
        for inbound in units:
            handler.handle(session, inbound)
        session.execute(update(Work).where(Work.id.in_([u.work_id for u in units]))
                        .values(state="done", done_at=time.time(), error=None))


def _load(session: Session, ids: list[int],
          parsing: Mapping[str, tuple[Policy, bool]]) -> dict[int, Inbound | Exception]:
    """The leased units with their messages, parsed here (on a reader thread) unless
    their handler is lazy."""
    rows = session.execute(
        select(Work.id, Work.role, Work.list_name, Work.token, Work.recipient,
               Message.id, Message.mail_from, Message.raw, Message.peer)
        .join(Message, Message.id == Work.message_id)
        .where(Work.id.in_(ids), Work.state == "working"))
    loaded: dict[int, Inbound | Exception] = {}
    for work_id, role, list_name, token, recipient, message_id, mail_from, raw, peer in rows:
        try:
            route = Route(Role(role), list_name, token)
            policy, early = parsing.get(role, (default_policy, True))
            inbound = Inbound(work_id, message_id, route, recipient, mail_from, raw,
                              peer=peer, policy=policy)
            if early:
                inbound.message  # noqa: B018 (parsed now, off the event loop)
            loaded[work_id] = inbound
        except Exception as error:
            loaded[work_id] = error
    return loaded


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
