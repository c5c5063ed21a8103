"""Worker processes for pure CPU work, so that it runs beside the event loop, not on it.

The daemon is one Python process, which runs one thread at a time: reading hundreds of
replies a second (MIME, then iCalendar) would leave intake and delivery only what is left
of one core. `router.processes` worker processes do such work on the other cores; the
daemon's own process keeps the sockets and the database. A function sent to a worker must
be pure (bytes in, a picklable value out) and importable by name.

Without workers (`processes = 0`, as in the tests, whose injected clock and fakes a worker
could not see; or while no worker process can be started) the work runs in a thread of
the daemon, never on its event loop.

A worker that dies, or takes longer than `call_limit` (and is then killed), takes the call
in hand with it. The items of such a call (`batched`) are tried again one at a time, each
alone in a pool of its own that nothing else uses, and never in the daemon: only the item
that kills a worker fails (`WorkerDied`), and one hostile message never takes the daemon
down, nor costs the others anything but time.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, TypeVar

from mailer.inbound import WorkerDied

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
WATCH = 0.5          # seconds between a worker's looks at whether the daemon still lives
BREAKS = 3           # pools in a row whose workers could not even start, before a pause
PAUSE = 30.0         # seconds of working in the daemon after that, before a new pool
STOP_WAIT = 5.0      # seconds a worker has to finish when the daemon stops
CALL_LIMIT = 30.0    # seconds a call may take, its wait in the queue included


def _warm(modules: tuple[str, ...], daemon: int | None = None,
          level: int = logging.WARNING, memory: int = 0) -> None:
    """In each new worker: cap its memory (`memory` bytes of address space, 0: none), log
    as the daemon does, import what the work needs before the first call waits for it,
    and watch the daemon, so as to end with it even if killed."""
    if memory > 0:
        # A runaway parse meets MemoryError, or the worker dies: never the daemon.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker {os.getpid()} "
                               "%(name)s: %(message)s")
    for name in modules:
        importlib.import_module(name)
    if daemon is not None:
        threading.Thread(target=_end_with, args=(daemon,), daemon=True,
                         name="end-with-daemon").start()


def _end_with(daemon: int) -> None:
    # The daemon holds the queue's other end, but so does each worker (the pool hands
    # both ends to its children), so its death is never seen as an end of file: a
    # worker whose parent changed has been orphaned, and ends.
    while os.getppid() == daemon:
        time.sleep(WATCH)
    os._exit(0)


class Workers:
    """A pool of `processes` worker processes (none: a thread of the daemon), and, while
    suspects are tried, a second pool of one process for them alone."""

    def __init__(self, processes: int, preload: tuple[str, ...] = (),
                 call_limit: float = CALL_LIMIT, memory: int = 0) -> None:
        self.processes = processes
        self.preload = preload
        self.memory = memory
        self.call_limit = call_limit
        self._pools: dict[bool, ProcessPoolExecutor] = {}   # alone or not: its pool
        self._warmed: dict[bool, Future[None]] = {}          # its first call: did it start?
        self._breaks = 0            # pools in a row whose workers never started
        self._paused_until = 0.0
        self._stopped = False

    def start(self) -> None:
        """Start the worker processes now, in the background, rather than on first use."""
        self._current(alone=False)

    def _current(self, alone: bool) -> ProcessPoolExecutor | None:
        """The pool, started if need be; None when there are no workers to be had."""
        pool = self._pools.get(alone)
        if pool is not None or self.processes <= 0 or self._stopped \
                or time.monotonic() < self._paused_until:
            return pool
        size = 1 if alone else self.processes
        try:
            # Spawned, not forked: the daemon has threads (the database's), and a fork
            # copies their locks in whatever state they are.
            pool = ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_warm,
                                       initargs=(self.preload, os.getpid(),
                                                 logging.getLogger().getEffectiveLevel(),
                                                 self.memory))
            self._warmed[alone] = pool.submit(_warm, ())
            for _ in range(size - 1):
                pool.submit(_warm, ())
        except Exception:
            # No processes to be had (file descriptors, memory, /dev/shm).
            log.exception("could not start worker processes; working in the daemon for "
                          "%.0f s", PAUSE)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            self._paused_until = time.monotonic() + PAUSE
            return None
        self._pools[alone] = pool
        return pool

    async def run(self, fn: Callable[..., T], *args: Any, alone: bool = False) -> T:
        """fn(*args) in a worker process; without one, in a thread of the daemon.

        `alone`: in the pool of its own, and never in the daemon. WorkerDied if the worker
        died doing it, if it took longer than `call_limit` (the pool's workers are then
        killed), or, when `alone`, if there is no worker to do it.
        """
        pool = self._current(alone)
        if pool is None:
            if alone:
                raise WorkerDied(f"no worker process to run {fn.__name__} in")
            return await asyncio.to_thread(fn, *args)
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            self._broken(pool, alone)
            return await self.run(fn, *args, alone=alone)   # broke before: a new pool
        except Exception:
            log.exception("could not hand work to a worker process")
            self._broken(pool, alone)
            if alone:
                raise WorkerDied(f"no worker process to run {fn.__name__} in") from None
            return await asyncio.to_thread(fn, *args)
        try:
            return await asyncio.wait_for(future, self.call_limit)
        except TimeoutError:
            log.error("%s took more than %.0f s in a worker process; ending the workers",
                      fn.__name__, self.call_limit)
            for process in _processes(pool):
                process.kill()
            self._broken(pool, alone)
            raise WorkerDied(f"{fn.__name__} took more than {self.call_limit:.0f} s in a "
                             "worker process") from None
        except BrokenProcessPool as error:
            self._broken(pool, alone)
            raise WorkerDied(f"a worker process died running {fn.__name__}") from error
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise           # this caller is being cancelled
            # The pool was shut down under the call: a failure, not a cancellation.
            raise WorkerDied(f"the worker processes were stopped during {fn.__name__}") \
                from None

    def _broken(self, pool: ProcessPoolExecutor, alone: bool) -> None:
        """Forget a broken pool. If its workers never started, BREAKS times in a row, the
        work is done in the daemon for a while; a worker that started and then died was
        killed by what it was given (or from outside), and that never counts."""
        if self._pools.get(alone) is not pool:
            return
        del self._pools[alone]
        warmed = self._warmed.pop(alone, None)
        pool.shutdown(wait=False, cancel_futures=True)
        started = warmed is not None and warmed.done() and not warmed.cancelled() \
            and warmed.exception() is None
        self._breaks = 0 if started else self._breaks + 1
        if self._breaks >= BREAKS:
            log.error("worker processes could not start %d times in a row; working in the "
                      "daemon for %.0f s", self._breaks, PAUSE)
            self._paused_until = time.monotonic() + PAUSE
            self._breaks = 0
        else:
            log.warning("a worker process died; starting the pool again")

    def retire_alone(self) -> None:
        """No suspect left: end the pool kept for them."""
        pool = self._pools.pop(True, None)
        self._warmed.pop(True, None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def batched(self, fn: Callable[[Sequence[A]], list[T]]) -> Callable[[A], Awaitable[T]]:
        """An async fn of one item that sends the items asked for together in one call.

        Every call made before the event loop next turns joins the same `fn(items)` in a
        worker, so that a batch of fifty replies crosses to a worker once, not fifty times.
        `fn` must return one result per item, in order, and never raise for one item.
        """
        return _Batcher(self, fn)

    def stop(self) -> None:
        """End the worker processes; what they held is taken again by the router's lease."""
        self._stopped = True
        pools, self._pools = list(self._pools.values()), {}
        processes = [process for pool in pools for process in _processes(pool)]
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + STOP_WAIT
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker process %s did not end; terminating it", process.pid)
                process.terminate()
                process.join(1.0)


def _processes(pool: ProcessPoolExecutor) -> list[Any]:
    """The pool's worker processes (the executor keeps them in a private attribute)."""
    return list((getattr(pool, "_processes", None) or {}).values())


class _Batcher(Generic[A, T]):
    def __init__(self, workers: Workers, fn: Callable[[Sequence[A]], list[T]]) -> None:
        self.workers = workers
        self.fn = fn
        self.waiting: list[tuple[A, asyncio.Future[T]]] = []
        self.sending: set[asyncio.Task[None]] = set()
        # Items that were in a worker when it died go back one at a time, each alone in a
        # pool of its own, so that a killer takes nothing else with it.
        self.suspects = asyncio.Lock()
        self.suspected = 0

    async def __call__(self, item: A) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.waiting.append((item, future))
        if len(self.waiting) == 1:
            loop.call_soon(self._send)
        return await future

    def _send(self) -> None:
        batch, self.waiting = self.waiting, []
        task = asyncio.create_task(self._answer(batch))
        self.sending.add(task)                  # a task is kept only while referenced
        task.add_done_callback(self.sending.discard)

    async def _answer(self, batch: list[tuple[A, asyncio.Future[T]]]) -> None:
        batch = [(item, future) for item, future in batch if not future.done()]
        if not batch:
            return      # every caller has gone (cancelled by a stop)
        try:
            results = await self.workers.run(self.fn, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.fn.__name__} gave {len(results)} results "
                                   f"for {len(batch)} items")
        except WorkerDied:
            # Any of them, or another call's item, may have killed it: each again, alone.
            for item, future in batch:
                await self._suspect(item, future)
            return
        except BaseException as error:
            for _, future in batch:
                _settle(future, error=error if isinstance(error, Exception)
                        else RuntimeError(f"{self.fn.__name__} was cancelled"))
            if not isinstance(error, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    async def _suspect(self, item: A, future: asyncio.Future[T]) -> None:
        """One item of a call whose worker died, tried alone; failed if it kills that one."""
        self.suspected += 1
        try:
            async with self.suspects:
                if future.done():
                    return
                try:
                    [result] = await self.workers.run(self.fn, [item], alone=True)
                except WorkerDied as error:
                    _settle(future, error=WorkerDied(f"alone in a worker process: {error}"))
                except Exception as error:
                    _settle(future, error=error)
                else:
                    _settle(future, result=result)
        finally:
            self.suspected -= 1
            if not self.suspected:
                self.workers.retire_alone()


def _settle(future: asyncio.Future[Any], *, result: Any = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return      # its caller was cancelled
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
