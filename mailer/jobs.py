"""A timed job: what the domain packages hand the scheduler (mailer.scheduler).

`run(session, now)` is called in its own write transaction every `every` seconds and
returns how many messages it queued; `name` is unique (on PostgreSQL it names the lock
that keeps two daemons from running the job at once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Job:
    name: str
    every: float
    run: Callable[[Session, float], int]
