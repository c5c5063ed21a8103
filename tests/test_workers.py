"""Worker processes: replies read beside the daemon, a dead worker costs nothing."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lists.models import Held
from mailer import workers as workers_module
from mailer.models import Delivery
from mailer.workers import WorkerDied, Workers
from tests.helpers import (
    DOMAIN,
    Sink,
    fixture,
    free_port,
    mail,
    make_config,
    make_list,
    organise,
    quiet,
    running,
    send,
    standing,
)


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


THE_TESTS = "ALLIANCE_TESTS_PID"     # the test run's own process, which workers inherit


def lengths_or_die(items: Sequence[str]) -> list[int]:
    """In a worker process: the lengths, unless an item kills the process or hangs."""
    if os.environ.get(THE_TESTS) == str(os.getpid()) and ("die" in items or "hang" in items):
        raise AssertionError("an item that kills workers ran in the daemon's process")
    if "die" in items:
        os._exit(1)
    if "hang" in items:
        time.sleep(3600)
    if "slow" in items:
        time.sleep(0.5)
    return [len(item) for item in items]


@pytest.fixture(autouse=True)
def tests_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THE_TESTS, str(os.getpid()))


async def test_only_the_item_that_kills_a_worker_fails() -> None:
    workers = Workers(1)
    measure = workers.batched(lengths_or_die)
    try:
        outcome = await asyncio.gather(measure("a"), measure("die"), measure("ccc"),
                                       return_exceptions=True)
        assert outcome[0] == 1 and outcome[2] == 3
        assert isinstance(outcome[1], WorkerDied)
        assert await measure("later") == 5, "a new worker took over"
    finally:
        workers.stop()


async def test_items_that_kill_workers_never_run_in_the_daemon() -> None:
    """However often workers die of what they are given, the daemon never runs it itself
    (here it would end the test run)."""
    workers = Workers(1)
    measure = workers.batched(lengths_or_die)
    try:
        outcome = await asyncio.gather(*(measure("die") for _ in range(4)), measure("ok"),
                                       return_exceptions=True)
        assert [type(o) for o in outcome[:4]] == [WorkerDied] * 4
        assert outcome[4] == 2
    finally:
        workers.stop()


async def test_a_call_that_was_only_waiting_when_a_worker_died_is_done_again() -> None:
    workers = Workers(1)
    measure = workers.batched(lengths_or_die)
    try:
        slow = asyncio.ensure_future(measure("slow"))
        await asyncio.sleep(0.01)       # three calls, queued one behind the other
        dying = asyncio.ensure_future(measure("die"))
        await asyncio.sleep(0.01)
        assert await measure("innocent") == 8
        assert await slow == 4
        with pytest.raises(WorkerDied):
            await dying
    finally:
        workers.stop()


async def test_an_item_that_hangs_a_worker_is_ended_and_fails_alone() -> None:
    # The limit leaves room for a new worker to start on a loaded machine (CI, 2 cores).
    workers = Workers(1, call_limit=4.0)
    measure = workers.batched(lengths_or_die)
    try:
        outcome = await asyncio.wait_for(   # without the limit it would hang: fail instead
            asyncio.gather(measure("hang"), measure("ok"), return_exceptions=True), 60)
        assert isinstance(outcome[0], WorkerDied) and "took more than 4 s" in str(outcome[0])
        assert outcome[1] == 2
    finally:
        workers.stop()


async def test_a_suspect_never_runs_in_the_daemon_even_without_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_processes(*args: object, **kwargs: object) -> None:
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(workers_module, "ProcessPoolExecutor", no_processes)
    with pytest.raises(WorkerDied, match="no worker process"):
        await Workers(1).run(lengths_or_die, ["die"], alone=True)


async def test_without_processes_to_be_had_the_work_is_done_in_the_daemon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_processes(*args: object, **kwargs: object) -> None:
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(workers_module, "ProcessPoolExecutor", no_processes)
    workers = Workers(1)
    workers.start()
    measure = workers.batched(lengths)
    calls.clear()
    assert await asyncio.gather(measure("a"), measure("bb")) == [1, 2]
    assert calls == [["a", "bb"]], "done here, in one call"
    workers.stop()


def worker_pids() -> set[int]:
    return {child.pid for child in multiprocessing.active_children() if child.pid}


async def new_worker(others: set[int], timeout: float = 30.0) -> int:
    """The pid of a worker process started after `others` were seen."""
    deadline = time.monotonic() + timeout
    while not worker_pids() - others:
        assert time.monotonic() < deadline, "no worker process started"
        await asyncio.sleep(0.05)
    return min(worker_pids() - others)


async def test_replies_are_applied_when_a_worker_process_dies(tmp_path: Path, sqlite_url: str,
                                                              sink: Sink) -> None:
    config = make_config(tmp_path, sqlite_url, smarthost_port=sink.port,
                         router={"processes": 1})
    earlier = worker_pids()     # other tests' workers, perhaps still ending
    async with running(config) as daemon:
        world = daemon.db.transaction(organise)
        port = daemon.ports["smtp"]
        first = await new_worker(earlier)
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
        assert worker_pids() - earlier - {first}, "a new worker process took over"
    assert not worker_pids() - earlier, "stopping the daemon ends its workers"


@pytest.mark.parametrize("processes", [-1, 65])
def test_a_wrong_number_of_processes_is_refused(tmp_path: Path, processes: int) -> None:
    from mailer.config import ConfigError
    with pytest.raises(ConfigError, match="router.processes: expected 0 to 64"):
        make_config(tmp_path, "sqlite://", router={"processes": processes})


def children(pid: int) -> dict[int, str]:
    """The live child processes of `pid` and their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found[int(stat.parent.name)] = command
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] \
            != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
async def test_worker_processes_end_when_the_daemon_is_killed(tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text(f"""
[site]
domain = "lists.example.org"
[database]
url = "sqlite:///alliance.sqlite3"
[smtp]
listen = "127.0.0.1:{free_port()}"
[lmtp]
listen = ""
[http]
listen = ""
[outbound]
url = "maildir:outbox"
[router]
processes = 1
""")
    daemon = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config_path),
                               "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any("spawn_main" in c for c in children(daemon.pid).values()):
            assert time.monotonic() < deadline, "no worker process started"
            assert daemon.poll() is None, "the daemon ended"
            await asyncio.sleep(0.1)
        started = children(daemon.pid)
    finally:
        daemon.kill()
        daemon.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in started):
        assert time.monotonic() < deadline, f"orphaned: {started}"
        await asyncio.sleep(0.1)


def allocate(sizes: Sequence[int]) -> list[int]:
    """In a worker process: allocate each size, in bytes."""
    return [len(bytearray(size)) for size in sizes]


async def test_a_workers_memory_is_capped(tmp_path: Path) -> None:
    """`router.worker_memory_mb`: what needs more meets MemoryError in the worker; the
    daemon's own memory is not touched (issue 10)."""
    workers = Workers(1, memory=700 * 1024 * 1024)
    try:
        assert await workers.run(allocate, [10_000_000]) == [10_000_000]
        with pytest.raises(MemoryError):
            await workers.run(allocate, [2_000_000_000])
        assert await workers.run(allocate, [1000]) == [1000], "the worker goes on"
    finally:
        workers.stop()


async def test_a_large_post_goes_out_through_a_real_worker_process(tmp_path: Path,
                                                                   sqlite_url: str) -> None:
    """End to end with the real pool (`read_posts` crosses to a spawned worker and back);
    what a reader's death does is in test_router's test with a dying pool."""
    config = make_config(tmp_path, sqlite_url, router={"processes": 1})
    make_list(config, "steering", ["ana@party.test", "bo@party.test"])
    body = "".join(f"line {n} " + "x" * 900 + "\n" for n in range(400))   # ~360 KB
    async with running(config) as daemon:
        await send(daemon.ports["smtp"], "ana@party.test", [f"steering@{DOMAIN}"],
                   mail("ana@party.test", f"steering@{DOMAIN}", body=body))
        await quiet(daemon)
        held = daemon.db.query(lambda s: s.scalar(select(func.count()).select_from(Held)))
        copies = daemon.db.query(lambda s: s.scalar(
            select(func.count()).select_from(Delivery)))
    assert (held, copies) == (0, 2)
