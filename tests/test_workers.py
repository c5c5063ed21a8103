"""Worker processes: replies read beside the daemon, a dead worker costs nothing."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from mailer.workers import Workers
from tests.conftest import Sink, make_config, running, send
from tests.test_replies import fixture, organise, quiet, standing


def lengths(items: Sequence[str]) -> list[int]:
    calls.append(list(items))
    if "boom" in items:
        raise ValueError("boom")
    return [len(item) for item in items]


calls: list[list[str]] = []


async def test_calls_made_together_cross_to_the_worker_once() -> None:
    calls.clear()
    measure = Workers(0).batched(lengths)
    assert await asyncio.gather(measure("a"), measure("bb"), measure("ccc")) == [1, 2, 3]
    assert calls == [["a", "bb", "ccc"]]
    assert await measure("dddd") == 4
    assert calls[-1] == ["dddd"]
    # A call that fails fails every item it carried, and only those.
    outcome = await asyncio.gather(measure("x"), measure("boom"), return_exceptions=True)
    assert [type(o) for o in outcome] == [ValueError, ValueError]
    assert await measure("ok") == 2


def worker_pids() -> set[int]:
    return {child.pid for child in multiprocessing.active_children() if child.pid}


async def wait_for_workers(count: int, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(worker_pids()) < count:
        assert time.monotonic() < deadline, "the worker processes did not start"
        await asyncio.sleep(0.05)
    return worker_pids()


async def test_replies_are_applied_when_a_worker_process_dies(tmp_path: Path, sqlite_url: str,
                                                              sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         router={"processes": 1})
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        port = daemon.ports["smtp"]
        [first] = await wait_for_workers(1)
        os.kill(first, signal.SIGKILL)
        await send(port, "ana@party.test", [world.rsvp("ana@party.test")],
                   fixture("outlook-reply-accepted.eml", world))
        await quiet(daemon)
        assert standing(daemon.db, world, "ana@party.test").partstat == "ACCEPTED"

        # The pool is started again for what comes next.
        await send(port, "zara@party.test", [world.rsvp("zara@party.test")],
                   fixture("thunderbird-reply-tentative.eml", world, "zara@party.test"))
        await quiet(daemon)
        assert standing(daemon.db, world, "zara@party.test").partstat == "TENTATIVE"
        assert worker_pids() - {first}, "a new worker process took over"
    assert worker_pids() == set(), "stopping the daemon ends its workers"


@pytest.mark.parametrize("processes", [-1, 65])
def test_a_wrong_number_of_processes_is_refused(tmp_path: Path, processes: int) -> None:
    from mailer.config import ConfigError
    with pytest.raises(ConfigError, match="router.processes: expected 0 to 64"):
        make_config(tmp_path, "sqlite://", router={"processes": processes})
