"""The router: hands each stored recipient of a message to the handler of its role.

Each unit of work is leased first (attempts + 1, committed), then handled in a transaction:
the handler's state changes and the mail they cause commit together, and the work row is
marked done in that same transaction. A handler that fails is tried again with backoff;
after `router.max_attempts` failures the work is quarantined with the error, where
`alliance quarantine` lists and replays it (Mailman's shunt queue, DESIGN §4). A transient
fault (the database locked or full, the disk full) is no failure of the message: it is
retried with backoff, for as long as it lasts, and never counts towards quarantine.

Units are leased fifty at a time and loaded with their messages in one query, parsed on a
reader thread; each handler's `prepare` then does what must not hold the write transaction
(DNS, reading the message). While one leased batch is written, the next ones are loaded
and prepared; batches are written in the order they were leased. A handler whose units
are small and many (the replies to an invitation) may ask for a `batch` above 1 in its
`HandlerOptions` (mailer.inbound): that many consecutive units of its role are handled in
one transaction, after its `preload` fetched what they share in one query. If any unit of
such a transaction fails, it is rolled back and its units are handled again one by one,
so that only the failing unit is retried. The options also say `policy`, the email policy
its messages are parsed with (default: the modern one), and `lazy`, when the handler reads
the raw bytes itself (in a worker process, say).

Every outcome is fenced by the lease: it is written only if the unit is still `working`
under the lease this router took (`due_at` is the lease's end), so a unit whose lease ran
out and was taken again, here or by another daemon, is never handled twice. A unit leased
again after an earlier try (it failed, or the process died holding it) is handled alone,
with nothing else in hand, and marked so before it is: only a unit that the process died
handling alone is charged with a crash, and only `router.max_attempts` crashes quarantine
it. The units in flight beside a crash are simply tried again, each alone, uncharged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from email.policy import Policy
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from mailer.addresses import Role, Route
from mailer.admin import NoSiteContact
from mailer.db import Database
from mailer.inbound import READING, Inbound, RoleHandler
from mailer.models import Message, Work

log = logging.getLogger(__name__)


BATCH = 50        # units leased at once
BATCH_BYTES = 8 * 1024 * 1024   # ... and their messages' bytes, unless one alone is more
HEAVY = 1024 * 1024             # a batch this large is the only one in hand
TRANSIENT_BACKOFF = 60.0   # longest wait between two tries through a transient fault
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN,
                              errno.ENOMEM})
DEPTH = 3         # leased batches in hand at once
STOP_GRACE = 10.0  # seconds a stop waits for batches being prepared before dropping them


@dataclass(frozen=True)
class Claimed:
    """A unit leased to us: whether it was tried before (so is handled alone), and how
    often the process died while handling it alone."""

    id: int
    again: bool
    crashes: int
    size: int = 0


def claim(session: Session, now: float, lease_end: float, limit: int, *,
          suspects: bool = True) -> list[Claimed]:
    """Lease due work, oldest first. A unit still `working` after its lease ended was held
    by a process that died (or hung): if that process was handling it alone, it crashed
    it, and the crash is counted. Without `suspects`, such units and those charged with
    a crash before are left for later."""
    query = (select(Work.id, Work.state, Work.alone, Work.failures, Work.crashes, Message.size)
             .join(Message, Message.id == Work.message_id)
             .where(Work.state.in_(("pending", "working")), Work.due_at <= now))
    if not suspects:
        query = query.where(Work.state == "pending", Work.crashes == 0)
    found = session.execute(query.order_by(Work.id).limit(limit)
                            .with_for_update(skip_locked=True, of=Work)).all()
    rows: list[Any] = []
    size = 0
    for row in found:        # a batch of large messages is cut short: memory is bounded
        if rows and size + row.size > BATCH_BYTES:
            break
        rows.append(row)
        size += row.size
    if not rows:
        return []
    crashed = {row.id for row in rows if row.state == "working" and row.alone}
    if crashed:
        session.execute(update(Work).where(Work.id.in_(crashed))
                        .values(crashes=Work.crashes + 1))
    session.execute(update(Work).where(Work.id.in_([row.id for row in rows]))
                    .values(state="working", attempts=Work.attempts + 1, due_at=lease_end,
                            alone=False))
    return [Claimed(row.id, row.state == "working" or row.failures > 0 or row.crashes > 0,
                    row.crashes + (row.id in crashed), row.size) for row in rows]


class Router:
    """Runs the role handlers over stored work, each unit in a transaction with its effects."""

    def __init__(self, db: Database, handlers: Mapping[Role, RoleHandler], *,
                 max_attempts: int, on_outgoing: Callable[[], None],
                 poll: float = 1.0, lease: float = 300.0,
                 stop_grace: float = STOP_GRACE, settle: float = 0.0) -> None:
        self.db = db
        self.handlers = handlers
        self.max_attempts = max_attempts
        self.on_outgoing = on_outgoing
        self.poll = poll
        self.lease = lease
        self.stop_grace = stop_grace
        # Suspects (work in flight at a crash, or charged with one) wait this long after a
        # start: a process just started is slow (cold caches, workers spawning), and a
        # crash then must not fall, again and again, on the first message it handles.
        self.settle = settle
        self._suspects_from = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._held: dict[int, float] = {}      # units in hand without an outcome: lease end
        self._lost: list[float] = []  # ends of leases whose claim got no answer (see _lease)
        self._in_hand: set[asyncio.Task[None]] = set()
        # How each role's messages are parsed: (policy, early).
        self._parsing = {role.value: (handler.options.policy, not handler.options.lazy)
                         for role, handler in handlers.items()}

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._suspects_from = time.monotonic() + self.settle
        self._task = asyncio.create_task(self._run(), name="router")

    async def stop(self) -> None:
        """Finish the transaction in hand; what is leased but not written goes back to the
        queue as it was (a batch still being prepared after `stop_grace` s is dropped)."""
        self._stopping = True
        self._wake.set()
        if self._in_hand:
            _, late = await asyncio.wait(self._in_hand, timeout=self.stop_grace)
            for task in late:
                task.cancel()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    async def accepts(self, route: Route) -> bool:
        handler = self.handlers.get(route.role)
        return handler is not None and await self.db.read(handler.accepts, route)

    async def _run(self) -> None:
        last: asyncio.Task[None] | None = None
        try:
            while not self._stopping:
                self._wake.clear()
                if len(self._in_hand) >= DEPTH:
                    await asyncio.wait(self._in_hand, return_when=asyncio.FIRST_COMPLETED)
                    continue
                leased, lease_end = await self._lease()
                fresh = [unit.id for unit in leased if not unit.again]
                # Suspects charged with a crash before go last: right after a restart the
                # process is cold, and a kill then must not fall on the same unit each time.
                again = [unit.id for unit in sorted(leased, key=lambda u: (u.crashes, u.id))
                         if unit.again]
                if again:
                    await self._alone(again, fresh, lease_end)
                elif fresh:
                    last = self._take(self._prepare_and_write(fresh, lease_end, last))
                    if sum(unit.size for unit in leased) > HEAVY:
                        # Large messages are read and written one batch at a time, so
                        # that memory holds one batch of them, not DEPTH.
                        await asyncio.gather(last, return_exceptions=True)
                elif not leased:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll)
        finally:
            if self._in_hand:
                await asyncio.gather(*self._in_hand, return_exceptions=True)

    def _take(self, batch: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A leased batch in hand, as a task: a stop's grace applies to it."""
        task = asyncio.create_task(batch)
        self._in_hand.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a batch of work failed", exc_info=task.exception())

    async def _lease(self) -> tuple[list[Claimed], float]:
        """Due work leased to us, oldest first, and the lease's end; what crashed the
        process too often while handled alone is quarantined instead."""
        now = time.time()
        lease_end = now + self.lease
        try:
            if self._lost:
                await self.db.write(_unclaim_leases, list(self._lost))
                self._lost.clear()
            leased = await self.db.write(functools.partial(
                claim, suspects=time.monotonic() >= self._suspects_from), now, lease_end, BATCH)
        except Exception:
            # The claim may have been committed and only its answer lost (a connection
            # cut during the commit): what it leased would wait for the lease to end.
            # Its rows carry this lease's end; they are given back at the next try.
            self._lost.append(lease_end)
            log.exception("could not take work from the queue; retrying")
            return [], lease_end
        kept = []
        for unit in leased:
            if unit.crashes >= self.max_attempts:
                # The process died while handling it alone, again and again (even
                # while parsing it). Stop before it does so once more.
                log.error("work %d quarantined: the process died %d times while handling "
                          "it alone", unit.id, unit.crashes)
                try:
                    await self.db.write(_interrupted, unit.id, lease_end)
                except Exception:
                    log.exception("could not quarantine work %d", unit.id)
            else:
                self._held[unit.id] = lease_end
                kept.append(unit)
        return kept, lease_end

    async def _alone(self, again: list[int], fresh: list[int], lease_end: float) -> None:
        """Units tried before, each on its own with nothing else in hand: if one of them
        kills the process, no other is charged for it."""
        if self._in_hand:
            await asyncio.gather(*self._in_hand, return_exceptions=True)
        await self._unclaim_all(fresh, lease_end)
        for work_id in again:
            if self._stopping or not await self._mark_alone(work_id, lease_end):
                await self._unclaim_all([work_id], lease_end)
                continue
            task = self._take(self._prepare_and_write([work_id], lease_end, None))
            await asyncio.gather(task, return_exceptions=True)

    async def _mark_alone(self, work_id: int, lease_end: float) -> bool:
        """Record, before handling it, that this unit is handled alone: if the process
        dies now, the unit is the one that killed it."""
        try:
            await self.db.write(_mark_alone, work_id, lease_end)
            return True
        except Exception:
            log.exception("could not mark work %d as handled alone", work_id)
            return False

    async def _prepare_and_write(self, ids: list[int], lease_end: float,
                                 before: asyncio.Task[None] | None) -> None:
        """One leased batch: prepared now, written once the batch leased before it is.

        Whatever has no outcome when this ends (a stop, a cancellation, a fault of our
        own) goes back to the queue as it was."""
        try:
            ready = await self._prepare_all(ids, lease_end) if not self._stopping else []
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await self._write(ready, lease_end)
        finally:
            left = [work_id for work_id in ids if self._held.get(work_id) == lease_end]
            if left:
                await asyncio.shield(self._unclaim_all(left, lease_end))

    async def _prepare_all(self, ids: list[int], lease_end: float) -> list[Inbound]:
        """Load leased units with their messages, and prepare each; failures recorded."""
        try:
            loaded = await self.db.read(_load, ids, self._parsing)
        except Exception as error:
            log.exception("could not load work %s", ids)
            for work_id in ids:
                await self._fail(work_id, lease_end, error)
            return []
        # Prepared side by side: DNS look-ups overlap, and work sent to worker processes
        # goes there in one call while this process goes on with intake.
        outcomes = await asyncio.gather(*(self._prepare(work_id, lease_end,
                                                        loaded.get(work_id))
                                          for work_id in ids))
        return [inbound for inbound in outcomes if inbound is not None]

    async def _prepare(self, work_id: int, lease_end: float,
                       inbound: Inbound | Exception | None) -> Inbound | None:
        """The unit with what its handler prepared; None if it failed or is not ours.

        A prepare that takes longer than a fifth of the lease fails (it is tried again
        later, alone), so that nothing hung can hold the router."""
        try:
            if isinstance(inbound, Exception):
                raise inbound
            if inbound is None:     # no longer working: someone else settled it
                self._release(work_id, lease_end)
                return None
            prepared = await asyncio.wait_for(self._handler(inbound).prepare(inbound),
                                              self.lease / 5)
            return dataclasses.replace(inbound, prepared=prepared)
        except Exception as error:
            log.exception("work %d failed", work_id)
            await self._fail(work_id, lease_end, error)
            return None

    async def _write(self, ready: list[Inbound], lease_end: float) -> None:
        """Handle prepared units, in order, a transaction per group; then wake delivery."""
        for group in self._groups(ready):
            if self._stopping:
                await self._unclaim_all([inbound.work_id for inbound in group], lease_end)
                continue
            if len(group) > 1:
                try:
                    await self.db.write(self._handle, group, lease_end)
                    self._settled(group, lease_end)
                    continue
                except Exception:
                    log.warning("a transaction of %d units failed and was rolled back "
                                "(what was logged for them did not happen); handling them "
                                "one by one", len(group), exc_info=True)
            for inbound in group:
                try:
                    await self.db.write(self._handle, [inbound], lease_end)
                    self._settled([inbound], lease_end)
                except Exception as error:
                    # Mail waiting for site.admin is a setting to make, not a fault: one
                    # line, no traceback.
                    log.error("work %d failed: %s", inbound.work_id, error,
                              exc_info=not isinstance(error, NoSiteContact),
                              extra={"event": "failed", "stored_id": inbound.message_id,
                                     "recipient": inbound.recipient})
                    await self._fail(inbound.work_id, lease_end, error)
        if ready:
            self.on_outgoing()

    def _settled(self, group: list[Inbound], lease_end: float) -> None:
        for inbound in group:
            self._release(inbound.work_id, lease_end)

    def _release(self, work_id: int, lease_end: float) -> bool:
        """Forget a unit in hand under this lease; False if it is not (any more): its
        lease ran out and it was leased again, and that lease's outcome is not ours."""
        if self._held.get(work_id) != lease_end:
            return False
        del self._held[work_id]
        return True

    def _handler(self, inbound: Inbound) -> RoleHandler:
        handler = self.handlers.get(inbound.route.role)
        if handler is None:
            raise LookupError(f"no handler for the {inbound.route.role} role")
        return handler

    def _groups(self, ready: list[Inbound]) -> list[list[Inbound]]:
        """Consecutive units of one role, at most its handler's `batch` in a group."""
        groups: list[list[Inbound]] = []
        for inbound in ready:
            size = self.handlers[inbound.route.role].options.batch
            last = groups[-1] if groups else None
            if last and last[0].route.role == inbound.route.role and len(last) < size:
                last.append(inbound)
            else:
                groups.append([inbound])
        return groups

    async def _fail(self, work_id: int, lease_end: float, error: Exception) -> None:
        if not self._release(work_id, lease_end):
            return
        await self._persist(f"the failure of work {work_id}", _failed, work_id, lease_end,
                            f"{type(error).__name__}: {error}", transient(error),
                            self.max_attempts)

    async def _unclaim_all(self, ids: list[int], lease_end: float) -> None:
        leases = [(work_id, lease_end) for work_id in ids if self._release(work_id, lease_end)]
        if leases:
            await self._persist(f"work {[work_id for work_id, _ in leases]} back in the queue",
                                _unclaim, leases)

    async def _persist(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        """Write an outcome, trying again with backoff while the database refuses (full,
        locked), so that no unit waits for its lease to end; a stop ends the tries, and
        then the lease does."""
        delay = 0.5
        while True:
            try:
                await self.db.write(fn, *args)
                return
            except Exception:
                log.exception("could not record %s; trying again in %.1f s", what, delay)
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, TRANSIENT_BACKOFF)

    def _handle(self, session: Session, group: list[Inbound], lease_end: float) -> None:
        """Handle units of one role in this transaction and mark them done with it, if
        they are still ours (working, under this lease)."""
        ids = [inbound.work_id for inbound in group]
        ours = set(session.scalars(select(Work.id).where(
            Work.id.in_(ids), Work.state == "working", Work.due_at == lease_end)
            .with_for_update()))
        units = [inbound for inbound in group if inbound.work_id in ours]
        if len(units) < len(group):
            log.warning("work %s was taken by another lease; left to it",
                        sorted(set(ids) - ours))
        if not units:
            return
        handler = self.handlers[units[0].route.role]
        handler.preload(session, units)
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
               Message.id, Message.mail_from, Message.raw, Message.peer, Message.protocol)
        .join(Message, Message.id == Work.message_id)
        .where(Work.id.in_(ids), Work.state == "working"))
    loaded: dict[int, Inbound | Exception] = {}
    for work_id, role, list_name, token, recipient, message_id, mail_from, raw, peer, \
            protocol in rows:
        try:
            route = Route(Role(role), list_name, token)
            policy, early = parsing.get(role, (READING, True))
            inbound = Inbound(work_id, message_id, route, recipient, mail_from, raw,
                              peer=peer, policy=policy, protocol=protocol)
            if early:
                inbound.message  # noqa: B018 (parsed now, off the event loop)
            loaded[work_id] = inbound
        except Exception as error:
            loaded[work_id] = error
    return loaded


def _mine(work_id: int, lease_end: float) -> Any:
    """The unit, while it is working under this lease."""
    return (Work.id == work_id) & (Work.state == "working") & (Work.due_at == lease_end)


def _interrupted(session: Session, work_id: int, lease_end: float) -> None:
    work = session.scalars(select(Work).where(_mine(work_id, lease_end))).first()
    if work is not None:
        work.state = "quarantined"
        work.error = work.error or (f"the process died {work.crashes} times while "
                                    "handling it alone")


def _mark_alone(session: Session, work_id: int, lease_end: float) -> None:
    session.execute(update(Work).where(_mine(work_id, lease_end)).values(alone=True))


def _unclaim(session: Session, leases: list[tuple[int, float]]) -> None:
    """Back to the queue as before the lease: pending, due now, the attempt not counted."""
    for work_id, lease_end in leases:
        session.execute(update(Work).where(_mine(work_id, lease_end))
                        .values(state="pending", due_at=time.time(),
                                attempts=Work.attempts - 1))


def _unclaim_leases(session: Session, lease_ends: list[float]) -> None:
    """Back to the queue, uncounted: whatever claims that got no answer had leased."""
    session.execute(update(Work).where(Work.state == "working", Work.due_at.in_(lease_ends))
                    .values(state="pending", due_at=time.time(),
                            attempts=Work.attempts - 1))


def _failed(session: Session, work_id: int, lease_end: float, error: str, passing: bool,
            max_attempts: int) -> None:
    """Record a failure: back to the queue with backoff, or quarantined after
    `max_attempts` failures. A `passing` (transient) fault is not counted."""
    work = session.scalars(select(Work).where(_mine(work_id, lease_end))).first()
    if work is None:
        return
    work.error = error[:2000]
    if passing:
        work.state = "pending"
        work.due_at = time.time() + min(TRANSIENT_BACKOFF, 2.0 ** min(work.attempts, 8))
        return
    work.failures += 1
    if work.failures >= max_attempts:
        work.state = "quarantined"
    else:
        work.state, work.due_at = "pending", time.time() + 2.0 ** work.failures


def transient(error: BaseException) -> bool:
    """Whether a fault is one of the service's, that passes (the database locked, gone or
    full, the disk full), rather than the message's.

    >>> transient(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> transient(ValueError("bad date"))
    False
    """
    if isinstance(error, OperationalError | InterfaceError) or \
            isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def quarantined(session: Session) -> list[Work]:
    """Work that failed too often, oldest first."""
    return list(session.scalars(select(Work).where(Work.state == "quarantined")
                                .order_by(Work.id)))


def replay(session: Session, work_id: int) -> bool:
    """Put quarantined work back in the queue with a fresh count; False if no such work."""
    result = session.execute(update(Work).where(Work.id == work_id,
                                                Work.state == "quarantined")
                             .values(state="pending", attempts=0, failures=0, crashes=0,
                                     alone=False, due_at=time.time()))
    return bool(getattr(result, "rowcount", 0))
