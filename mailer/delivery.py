"""Delivery: takes due deliveries from the database and sends each through the transport.

A delivery is leased (state `sending`, `due_at` = end of lease) in batches, handed to a set
of sender tasks, and marked `done` only after the next hop's 250. Outcomes are written back
in batches: one transaction for many recipients, never one commit each. A crash loses no
delivery: a leased row whose lease runs out is taken again (a duplicate is possible only for
a message that was on the wire at the crash). A 4xx or a broken connection is retried with
exponential backoff until `outbound.lifetime`; a 5xx fails that recipient with the reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from mailer import events, logs
from mailer.config import OutboundSection
from mailer.db import Database
from mailer.domainkeys import CopySigning, crlf, split
from mailer.models import Delivery, Outgoing
from mailer.outbox import UNSUBSCRIBE_MARKER, Refusal, RefusalHook
from mailer.tokens import Signer
from mailer.transport import HopReply, Transport

log = logging.getLogger(__name__)

BATCH = 500
CACHE_BYTES = 32 * 1024 * 1024  # messages kept in memory between claim and send
LARGE = 1024 * 1024             # a message this large is sent LARGE_SENDS at a time
LARGE_SENDS = 4
YIELD_PAUSE = 0.05   # how often a yielding sender looks whether intake is quiet again
# DKIM: a claim's copies are signed in calls of this many, the first small, so that the
# first copy of a post goes out while the rest are signed.
SIGN_FIRST = 20
SIGN_CHUNK = 250
class Personaliser:
    """Makes one member's envelope sender and copy from the message stored once."""

    def __init__(self, member_tokens: Signer, unsubscribe_tokens: Signer) -> None:
        self.member_tokens = member_tokens
        self.unsubscribe_tokens = unsubscribe_tokens

    def sender(self, template: str, member_id: int | None) -> str:
        """VERP: `{token}` in the stored sender becomes the member's signed token."""
        if "{token}" not in template:
            return template
        token = self.member_tokens.sign(member_id) if member_id is not None else "0"
        return template.replace("{token}", token)

    def head(self, head: bytes, member_id: int | None) -> bytes:
        """The member's header block: their token in our List-Unsubscribe field, and only
        there (a copy differs from the stored message in that field alone).

        Only that field is touched, so a poster who writes the marker into a header of
        their own (a Reply-To, say) cannot make us reveal members' tokens to them.
        """
        if head.startswith(b"List-Unsubscribe: "):
            start = 0
        else:
            found = head.find(b"\r\nList-Unsubscribe: ")
            start = found + 2 if found >= 0 else -1
        end = head.find(b"\r\n", start)
        if start < 0 or end < 0 or UNSUBSCRIBE_MARKER not in head[start:end]:
            return head
        token = self.unsubscribe_tokens.sign(member_id) if member_id is not None else "none"
        field = head[start:end].replace(UNSUBSCRIBE_MARKER, token.encode())
        return head[:start] + field + head[end:]


@dataclass(slots=True)
class Stored:
    """A message as the delivery engine keeps it from claim to send: its envelope sender
    (a template, for VERP) and its data cut once into header block and body, line ends
    made CRLF as they go over SMTP (RFC 5321 §2.3.8). Copies differ in their header only."""

    sender: str
    head: bytes      # each field with its CRLF
    body: bytes      # after the empty line
    body_hash: bytes = b""   # DKIM's bh=, computed for the first copy signed

    @classmethod
    def of(cls, sender: str, data: bytes) -> Stored:
        head, body = split(crlf(data))
        return cls(sender, head, body)

    @property
    def size(self) -> int:
        return len(self.head) + len(self.body)


@dataclass(frozen=True, slots=True)
class LeasedDelivery:
    """One leased delivery, ready to send."""

    id: int
    outgoing_id: int
    recipient: str
    member_id: int | None
    attempts: int
    created_at: float


def chunks(count: int) -> list[tuple[int, int]]:
    """(start, end) of the signing calls for `count` copies: SIGN_FIRST, then SIGN_CHUNK.

    >>> chunks(500)
    [(0, 20), (20, 270), (270, 500)]
    """
    ends = [min(count, SIGN_FIRST), *range(SIGN_FIRST + SIGN_CHUNK, count, SIGN_CHUNK)]
    if ends[-1] != count:
        ends.append(count)
    return list(zip([0, *ends[:-1]], ends, strict=True))


def claim(session: Session, now: float, lease_end: float, limit: int) -> list[LeasedDelivery]:
    """Lease up to `limit` due deliveries (SKIP LOCKED where the database has it): first
    those whose lease ran out (a daemon died holding them), then pending ones.

    One state at a time, so that each claim reads the index on (state, due_at) in order
    and stops after `limit` rows. `state IN ('pending', 'sending') ORDER BY due_at` cannot
    be read in order from that index: SQLite and PostgreSQL then read and sort every due
    row at each claim, and a fan-out to N members costs N²/limit rows read (issue 12).
    """
    if session.get_bind().dialect.name == "postgresql":
        # Without fresh statistics (a large fan-out just inserted; autovacuum not yet
        # by) the planner takes a bitmap scan and a sort of every due row: forbid the sort.
        session.execute(text("SET LOCAL enable_sort = off"))
    leased: list[LeasedDelivery] = []
    for state in ("sending", "pending"):
        due = (select(Delivery.id)
               .where(Delivery.state == state, Delivery.due_at <= now)
               .order_by(Delivery.due_at).limit(limit - len(leased))
               .with_for_update(skip_locked=True))
        rows = session.execute(
            update(Delivery).where(Delivery.id.in_(due))
            .values(state="sending", attempts=Delivery.attempts + 1, due_at=lease_end)
            .returning(Delivery.id, Delivery.outgoing_id, Delivery.recipient,
                       Delivery.member_id, Delivery.attempts, Delivery.created_at))
        leased.extend(LeasedDelivery(*row) for row in rows)
        if len(leased) >= limit:
            break
    return sorted(leased, key=lambda job: job.id)


def load_messages(session: Session, ids: list[int]) -> list[tuple[int, str, bytes]]:
    rows = session.execute(select(Outgoing.id, Outgoing.sender, Outgoing.data)
                           .where(Outgoing.id.in_(ids)))
    return [(row[0], row[1], row[2]) for row in rows]


def next_due(session: Session) -> float | None:
    """When the next pending delivery or lease falls due (one index look-up a state)."""
    found = [session.scalar(select(func.min(Delivery.due_at)).where(Delivery.state == state))
             for state in ("pending", "sending")]
    return min((due for due in found if due is not None), default=None)


def renew(session: Session, ids: list[int], lease_end: float) -> None:
    """Extend the lease of deliveries still waiting in this daemon's queue."""
    for start in range(0, len(ids), 500):
        session.execute(update(Delivery).where(Delivery.id.in_(ids[start:start + 500]),
                                               Delivery.state == "sending")
                        .values(due_at=lease_end))


def release_leases(session: Session, lease_ends: list[float], now: float) -> None:
    """Give back, unsent and uncounted, what claims that got no answer had leased."""
    session.execute(update(Delivery).where(Delivery.state == "sending",
                                           Delivery.due_at.in_(lease_ends))
                    .values(state="pending", due_at=now, attempts=Delivery.attempts - 1))


def release(session: Session, ids: list[int], now: float) -> None:
    """Give leased deliveries back, unsent, so that the next start sends them at once."""
    if ids:
        session.execute(update(Delivery).where(Delivery.id.in_(ids),
                                               Delivery.state == "sending")
                        .values(state="pending", due_at=now,
                                attempts=Delivery.attempts - 1))


def backoff(attempts: int, policy: OutboundSection) -> float:
    """Seconds to wait after the n-th failed try: doubling, capped at retry_max.

    >>> policy = OutboundSection(retry_initial=60, retry_max=3600)
    >>> [backoff(n, policy) for n in (1, 2, 3, 8)]
    [60.0, 120.0, 240.0, 3600.0]
    """
    return float(min(policy.retry_initial * 2 ** max(attempts - 1, 0), policy.retry_max))


def record(session: Session, results: list[tuple[LeasedDelivery, HopReply]], now: float,
           policy: OutboundSection, on_refused: RefusalHook | None = None) -> None:
    """Write many outcomes in one transaction (RFC 5321 §4.5.4.1 retry strategy)."""
    refused = [Refusal(job.member_id, job.outgoing_id, outcome.code, outcome.text)
               for job, outcome in results
               if outcome.permanent and job.member_id is not None]
    if refused and on_refused is not None:
        on_refused(session, refused)
    rows: list[dict[str, Any]] = []
    attempts = {job.id: job.attempts for job, _ in results}
    for job, outcome in results:
        if outcome.ok:
            rows.append({"id": job.id, "state": "done", "done_at": now, "code": outcome.code,
                         "error": None})
        elif outcome.permanent:
            rows.append({"id": job.id, "state": "failed", "done_at": now,
                         "code": outcome.code, "error": outcome.text[:1000]})
        elif now - job.created_at >= policy.lifetime:
            rows.append({"id": job.id, "state": "failed", "done_at": now,
                         "code": outcome.code,
                         "error": f"gave up after {job.attempts} tries: {outcome.text}"[:1000]})
        else:
            rows.append({"id": job.id, "state": "pending",
                         "due_at": now + backoff(job.attempts, policy),
                         "code": outcome.code, "error": outcome.text[:1000]})
    for state, event in (("done", "delivered"), ("pending", "deferred"), ("failed", "failed")):
        events.note(session, "delivery", event, sum(row["state"] == state for row in rows))
    # Fenced: an outcome is written only while this lease is the row's current one, so a
    # late outcome can never overwrite what a later attempt recorded.
    table = cast(Table, Delivery.__table__)
    for keys in {tuple(sorted(row)) for row in rows}:
        same = [{**row, "b_id": row["id"], "b_attempts": attempts[row["id"]]}
                for row in rows if tuple(sorted(row)) == keys]
        values: dict[str, Any] = {key: bindparam(key) for key in keys if key != "id"}
        session.connection().execute(update(table).where(table.c.id == bindparam("b_id"),
                                            table.c.attempts == bindparam("b_attempts"),
                                            table.c.state == "sending").values(values), same)


class Dispatcher:
    """Leases due deliveries, sends them concurrently, and records what happened."""

    def __init__(self, db: Database, transport: Transport, personaliser: Personaliser,
                 policy: OutboundSection, *, poll: float = 1.0,
                 on_refused: RefusalHook | None = None,
                 intake_busy: Callable[[], bool] = lambda: False,
                 signing: CopySigning | None = None) -> None:
        self.db = db
        self.signing = signing
        # DKIM: delivery id -> its envelope sender and signed header block, made ahead
        self._signed: dict[int, tuple[str, bytes]] = {}
        # While messages arrive, only `connections_during_intake` senders send: the
        # event loop (one core) is intake's first, and a 10,000-member fan-out beside
        # it must not make each 250 wait (benchmark G).
        self.intake_busy = intake_busy
        self.on_refused = on_refused
        self.transport = transport
        self.personaliser = personaliser
        self.policy = policy
        self.poll = poll
        self._queue: asyncio.Queue[LeasedDelivery] = asyncio.Queue(maxsize=BATCH)
        self._messages: OrderedDict[int, Stored] = OrderedDict()
        self._results: list[tuple[LeasedDelivery, HopReply]] = []
        self._wake = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._stopping = False
        self._senders_done = False
        self._held: set[int] = set()  # leased here, outcome not yet written
        self._lost: list[float] = []  # ends of leases whose claim got no answer
        self._tasks: list[asyncio.Task[None]] = []
        self._handing: asyncio.Future[None] | None = None   # the last claim being queued
        # Each send of a large message holds a copy or two of it: a few at a time.
        self._large = asyncio.Semaphore(LARGE_SENDS)

    def wake(self) -> None:
        """New deliveries may be due: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._claim_loop(), name="claim"),
                       asyncio.create_task(self._flush_loop(), name="flush"),
                       asyncio.create_task(self._renew_loop(), name="renew")]
        self._senders = [asyncio.create_task(self._send_loop(n), name=f"sender-{n}")
                         for n in range(self.policy.connections)]

    async def stop(self) -> None:
        """Finish the sends on the wire, give back what was leased but unsent."""
        self._stopping = True
        tasks = [self._tasks[0], self._tasks[2], *filter(None, [self._handing])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()
        for _ in self._senders:
            self._queue.put_nowait(None)  # type: ignore[arg-type]
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._senders_done = True
        self._flush_now.set()
        await asyncio.gather(self._tasks[1], return_exceptions=True)
        # Leased here and neither sent nor recorded: queued, or still being signed.
        unsent = sorted(self._held - {job.id for job, _ in self._results})
        with contextlib.suppress(Exception):
            await self.db.write(release, unsent, time.time())
        self._held.difference_update(unsent)
        await self.transport.close()

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = time.time()
            lease_end = now + self.policy.lease
            try:
                if self._lost:
                    await self.db.write(release_leases, list(self._lost), now)
                    self._lost.clear()
                jobs = await self.db.write(claim, now, lease_end, BATCH)
                await self._load(jobs)
            except Exception:
                # The claim may have been committed and only its answer lost (a cut
                # connection), or its messages not loaded: its rows, which carry this
                # lease's end, are given back at the next try instead of waiting it out.
                self._lost.append(lease_end)
                log.exception("could not take deliveries from the queue; retrying")
                await asyncio.sleep(self.poll)
                continue
            self._held.update(job.id for job in jobs)
            # The next claim is taken while this one is signed, so that the worker
            # processes never wait for the database: two claims in hand at most.
            previous = self._handing
            self._handing = asyncio.ensure_future(self._hand_out(jobs, previous))
            if previous is not None:
                await previous
            if len(jobs) < BATCH:
                await self._sleep()

    async def _renew_loop(self) -> None:
        """Keep the leases of what waits in this daemon's queue from running out.

        A slow smarthost can keep jobs queued longer than a lease; without renewal another
        claim (here or in another daemon) would take them again and send them twice.
        """
        while True:
            await asyncio.sleep(self.policy.lease / 3)
            if not self._held:
                continue
            try:
                await self.db.write(renew, sorted(self._held),
                                    time.time() + self.policy.lease)
            except Exception:
                log.exception("could not renew %d leases; retrying", len(self._held))

    async def _sleep(self) -> None:
        try:
            due = await self.db.read(next_due)
        except Exception:   # the loop must outlive a lost connection: it polls instead
            log.exception("could not read when the next delivery is due")
            due = None
        delay = self.poll if due is None else min(max(due - time.time(), 0.0), self.poll)
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _load(self, jobs: list[LeasedDelivery]) -> None:
        missing = sorted({job.outgoing_id for job in jobs} - self._messages.keys())
        if missing:
            for ident, sender, data in await self.db.read(load_messages, missing):
                self._messages[ident] = Stored.of(sender, data)
        # Keep what the queued jobs need (invitations are one message per recipient),
        # within a memory bound: the oldest messages go first.
        while len(self._messages) > 2 * BATCH or (
                len(self._messages) > 1 and self._cached_bytes() > CACHE_BYTES):
            self._messages.popitem(last=False)

    async def _hand_out(self, jobs: list[LeasedDelivery],
                        after: asyncio.Future[None] | None) -> None:
        """Queue a claim's jobs for the senders, after the claim before it (`after`); with
        DKIM, each chunk once it is signed. Every chunk's signing is asked for at once, so
        that each worker process has one to do (the pool runs them side by side)."""
        if self.signing is None:
            if after is not None:
                await after
            for job in jobs:
                await self._queue.put(job)
            return
        signing = [asyncio.ensure_future(self._sign_ahead(jobs[start:end]))
                   for start, end in chunks(len(jobs))]
        try:
            if after is not None:
                await after
            for (start, end), signed in zip(chunks(len(jobs)), signing, strict=True):
                await signed
                for job in jobs[start:end]:
                    await self._queue.put(job)
        finally:
            for signed in signing:
                signed.cancel()

    async def _sign_ahead(self, jobs: list[LeasedDelivery]) -> None:
        """DKIM: sign these copies' header blocks in one call (a worker process's)."""
        # A message the cache has let go already (large ones) is signed as it is sent.
        jobs = [job for job in jobs if job.outgoing_id in self._messages]
        if self.signing is None or not jobs:
            return
        signing = self.signing
        try:
            personal = [self._personal(job) for job in jobs]
            for _, _, stored in personal:
                stored.body_hash = stored.body_hash or signing.body_hash(stored.body)
            heads = await signing.sign_heads([(head, stored.body_hash)
                                              for _, head, stored in personal])
        except Exception:   # each is signed as it is sent instead (never lost here)
            log.exception("could not sign %d copies ahead; signing them one by one", len(jobs))
            return
        for job, (sender, _, _), head in zip(jobs, personal, heads, strict=True):
            self._signed[job.id] = (sender, head)

    def _cached_bytes(self) -> int:
        return sum(stored.size for stored in self._messages.values())

    def _personal(self, job: LeasedDelivery) -> tuple[str, bytes, Stored]:
        """The member's envelope sender and header block, and the message they are of."""
        stored = self._messages[job.outgoing_id]
        self._messages.move_to_end(job.outgoing_id)
        return (self.personaliser.sender(stored.sender, job.member_id),
                self.personaliser.head(stored.head, job.member_id), stored)

    def _copy(self, job: LeasedDelivery) -> tuple[str, bytes]:
        """The member's envelope sender and copy as it goes out (DKIM-signed if on)."""
        ahead = self._signed.pop(job.id, None) if self.signing is not None else None
        if ahead is not None:
            sender, signed_head = ahead
            stored = self._messages[job.outgoing_id]
            self._messages.move_to_end(job.outgoing_id)
            return sender, signed_head + b"\r\n" + stored.body
        sender, head, stored = self._personal(job)
        data = head + b"\r\n" + stored.body
        return sender, data if self.signing is None else self.signing.sign(data)

    async def _send_loop(self, number: int) -> None:
        yields = number >= self.policy.connections_during_intake
        while True:
            while yields and not self._stopping and self.intake_busy():
                await asyncio.sleep(YIELD_PAUSE)
            job = await self._queue.get()
            if job is None:
                return
            try:
                if job.outgoing_id not in self._messages:
                    await self._load([job])
                sender, data = self._copy(job)
                async with self._large if len(data) > LARGE else contextlib.nullcontext():
                    outcome = await self.transport.send(sender, job.recipient, data)
                del data
            except Exception as error:  # a fault of ours: retry later, never drop
                log.exception("delivery %d failed locally", job.id)
                outcome = HopReply(451, f"local error: {error!r}")
            self._results.append((job, outcome))
            self._flush_now.set()

    async def _flush_loop(self) -> None:
        # Group commit: outcomes that arrive while one batch is being written go into the
        # next one, so the state lags the wire by one transaction and no more.
        while True:
            await self._flush_now.wait()
            self._flush_now.clear()
            await self._flush()
            if self._senders_done and not self._results:
                return

    async def _flush(self) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            await self.db.write(record, batch, time.time(), self.policy, self.on_refused)
        except Exception:
            log.exception("could not record %d outcomes; will try again", len(batch))
            self._results[:0] = batch
            asyncio.get_running_loop().call_later(0.5, self._flush_now.set)
            return
        self._held.difference_update(job.id for job, _ in batch)
        self._log(batch)
        if any(not outcome.ok for _, outcome in batch):
            self.wake()

    def _log(self, batch: list[tuple[LeasedDelivery, HopReply]]) -> None:
        """One line per message of a written batch: how many delivered, deferred, failed."""
        if not log.isEnabledFor(logging.INFO):
            return
        counts: dict[int, collections.Counter[str]] = {}
        for job, outcome in batch:
            state = ("delivered" if outcome.ok else "failed" if outcome.permanent
                     else "deferred")
            counts.setdefault(job.outgoing_id, collections.Counter())[state] += 1
        for outgoing_id, counted in counts.items():
            stored = self._messages.get(outgoing_id)
            sender, head = (stored.sender, stored.head) if stored else ("", b"")
            summary = ", ".join(f"{state} {n}" for state, n in sorted(counted.items()))
            local = sender.partition("@")[0]
            list_name = local.partition("-bounces")[0] if "-bounces" in local else None
            log.info("outgoing %d (%s): %s", outgoing_id, sender or "<>", summary,
                     extra={"event": "delivery", "outgoing_id": outgoing_id,
                            "message_id": logs.message_id(head), "sender": sender,
                            "list": list_name, "outcome": summary, **counted})
