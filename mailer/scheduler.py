"""The scheduler: timed jobs (expiries, digests, bounce decay, later invitations).

A job is a function `(session, now) -> int` run in its own write transaction every so
many seconds; it returns how many messages it queued. On PostgreSQL a job runs only where
its advisory lock is free, so several daemons sharing a database never run it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.orm import Session

from mailer.db import Database
from mailer.jobs import Job

log = logging.getLogger(__name__)


def exclusive(session: Session, name: str) -> bool:
    """Take the job's lock for this transaction; False if another daemon holds it."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = zlib.crc32(f"alliance-job:{name}".encode())
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                {"k": key}).scalar())


class Scheduler:
    """Runs each job every `job.every` seconds; `clock` gives the time (seconds)."""

    def __init__(self, db: Database, jobs: tuple[Job, ...], *,
                 on_outgoing: Callable[[], None],
                 clock: Callable[[], float] = time.time, tick: float = 1.0) -> None:
        self.db = db
        self.jobs = jobs
        self.on_outgoing = on_outgoing
        self.clock = clock
        self.tick = tick
        self._next: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """Run every job now (after the clock moved, or for a test)."""
        self._next.clear()
        self._wake.set()

    async def run_due(self) -> int:
        """Run the jobs that are due; returns the number of messages they queued."""
        queued = 0
        for job in self.jobs:
            now = self.clock()
            if self._next.get(job.name, 0.0) > now:
                continue
            self._next[job.name] = now + job.every
            try:
                queued += await self.db.write(self._guarded, job, now)
            except Exception:
                log.exception("scheduled job %s failed; it runs again later", job.name)
        if queued:
            self.on_outgoing()
        return queued

    @staticmethod
    def _guarded(session: Session, job: Job, now: float) -> int:
        if not exclusive(session, job.name):
            return 0
        return job.run(session, now)

    async def _run(self) -> None:
        while True:
            await self.run_due()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
