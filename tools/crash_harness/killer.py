"""The SIGKILLs: at random moments, each followed by a new start, and what each hit."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .rig import Rig, log


@dataclass(frozen=True)
class Kill:
    """One SIGKILL and what was in flight when it landed."""

    number: int
    after: float         # seconds from the incarnation's start
    serving: bool        # it had said it listens (else: killed during start-up)
    leased: int          # deliveries leased (state `sending`) at the kill: in flight
    working: int         # work units leased (state `working`) at the kill
    sink_mark: int       # deliveries at the sink when it landed
    pending: int         # work and deliveries not settled at the kill
    alone: tuple[tuple[int, int], ...] = ()   # (id, attempts) of work handled alone


@dataclass(frozen=True)
class Moments:
    """When to kill: `low`-`high` s after the start (`from_ready`: after it listens)."""

    low: float
    high: float
    from_ready: bool = False


def in_flight(rig: Rig) -> tuple[int, int, int, tuple[tuple[int, int], ...]]:
    """(deliveries `sending`, work `working`, unsettled, work handled alone) in the
    database, read-only."""
    alone = tuple((int(work_id), int(attempts)) for work_id, attempts in rig.rows(
        "SELECT id, attempts FROM work WHERE state = 'working' AND alone ORDER BY id"))
    row = rig.rows("SELECT (SELECT count(*) FROM deliveries WHERE state = 'sending'), "
                   "(SELECT count(*) FROM work WHERE state = 'working'), "
                   "(SELECT count(*) FROM work WHERE state IN ('pending', 'working')) + "
                   "(SELECT count(*) FROM deliveries WHERE state IN ('pending', 'sending'))")
    return int(row[0][0]), int(row[0][1]), int(row[0][2]), alone


def kill_once(rig: Rig, moments: Moments, rng: random.Random, number: int) -> Kill:
    """Wait for a random moment, SIGKILL the daemon, note what was in flight."""
    run = rig.current
    if moments.from_ready:
        rig.wait_ready()
    base = run.ready_at if moments.from_ready and run.ready_at else run.started
    target = base + rng.uniform(moments.low, moments.high)
    while time.monotonic() < target and run.alive():
        time.sleep(min(0.01, max(0.0, target - time.monotonic())))
    serving = run.ready()
    after = time.monotonic() - run.started
    if not run.alive():
        log(f"start {run.number} ended by itself (exit {run.proc.poll()}) before kill {number}")
    rig.kill()
    time.sleep(0.05)   # smtp-sink finishes writing what was on the wire
    leased, working, pending, alone = in_flight(rig)
    return Kill(number, round(after, 3), serving, leased, working, rig.sink.poll(), pending,
                alone)


def kill_loop(rig: Rig, moments: Moments, rng: random.Random, *, kills: int,
              deadline: float, counts: Callable[[Kill], bool] = lambda kill: True,
              ) -> list[Kill]:
    """SIGKILL and start again until `kills` kills that `counts` have landed (at most
    three times as many in all) or the deadline; then start once more and wait for it."""
    done: list[Kill] = []
    for number in range(1, 3 * kills + 1):
        if sum(1 for kill in done if counts(kill)) >= kills or time.monotonic() > deadline:
            break
        done.append(kill_once(rig, moments, rng, number))
        rig.start()
        if number % 50 == 0:
            log(f"{rig.name}: {number} kills, "
                f"{sum(1 for kill in done if not kill.serving)} during start-up")
    rig.wait_ready()
    return done


def ended_by_themselves(rig: Rig) -> list[str]:
    """Incarnations that ended with a code of their own (not SIGKILL, not SIGTERM)."""
    return [f"start {run.number}: exit {run.proc.returncode}" for run in rig.runs
            if run.proc.returncode not in (None, -9, 0, -15)]
