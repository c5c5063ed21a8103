"""Worker processes for pure CPU work, so that it runs beside the event loop, not on it.

The daemon is one Python process, which runs one thread at a time: reading hundreds of
replies a second (MIME, then iCalendar) would leave intake and delivery only what is left
of one core. `router.processes` worker processes do such work on the other cores; the
daemon's own process keeps the sockets and the database. A function sent to a worker must
be pure (bytes in, a picklable value out) and importable by name.

Without workers (`processes = 0`, as in the tests, whose injected clock and fakes a worker
could not see; or while a pool cannot be started) the work runs in a thread of the daemon,
never on its event loop.

A worker that dies takes the call in hand with it. A call of many items (`batched`) is
then split, each item sent alone to a fresh worker, so that only the item that kills a
worker fails (`WorkerDied`): one hostile message never costs the others anything, nor
takes the daemon down with it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
WATCH = 0.5          # seconds between a worker's looks at whether the daemon still lives
BREAKS = 3           # pools in a row whose workers could not even start, before a pause
PAUSE = 30.0         # seconds of working in the daemon after that, before a new pool
STOP_WAIT = 5.0      # seconds a worker has to finish when the daemon stops


class WorkerDied(RuntimeError):
    """The worker process died while doing this, and nothing else was in its hands."""


def _warm(modules: tuple[str, ...], daemon: int | None = None,
          level: int = logging.WARNING) -> None:
    """In each new worker: log as the daemon does, import what the work needs before the
    first call waits for it, and watch the daemon, so as to end with it even if killed."""
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
    """A pool of `processes` worker processes (none: a thread of the daemon)."""

    def __init__(self, processes: int, preload: tuple[str, ...] = ()) -> None:
        self.processes = processes
        self.preload = preload
        self._pool: ProcessPoolExecutor | None = None
        self._warmed: Future[None] | None = None    # the pool's first call: did it start?
        self._breaks = 0            # pools in a row whose workers never started
        self._paused_until = 0.0
        self._stopped = False

    def start(self) -> None:
        """Start the worker processes now, in the background, rather than on first use."""
        self._current()

    def _current(self) -> ProcessPoolExecutor | None:
        """The pool, started if need be; None when the work is to run in the daemon."""
        if self._pool is not None or self.processes <= 0 or self._stopped \
                or time.monotonic() < self._paused_until:
            return self._pool
        try:
            # Spawned, not forked: the daemon has threads (the database's), and a fork
            # copies their locks in whatever state they are.
            pool = ProcessPoolExecutor(self.processes,
                                       mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_warm,
                                       initargs=(self.preload, os.getpid(),
                                                 logging.getLogger().getEffectiveLevel()))
            self._warmed = pool.submit(_warm, ())
            for _ in range(self.processes - 1):
                pool.submit(_warm, ())
        except Exception:
            # No processes to be had (file descriptors, memory, /dev/shm): the daemon
            # does the work itself for a while.
            log.exception("could not start worker processes; working in the daemon for "
                          "%.0f s", PAUSE)
            self._paused_until = time.monotonic() + PAUSE
            return None
        self._pool = pool
        return pool

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker process (in a thread of the daemon if there is none).

        WorkerDied if the worker died doing it.
        """
        pool = self._current()
        if pool is None:
            return await asyncio.to_thread(fn, *args)
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            self._broken(pool)
            return await self.run(fn, *args)    # it broke before this call: a new pool
        except Exception:
            log.exception("could not hand work to a worker process; doing it in the daemon")
            self._broken(pool)
            return await asyncio.to_thread(fn, *args)
        try:
            result = await future
        except BrokenProcessPool as error:
            self._broken(pool)
            raise WorkerDied(f"a worker process died running {fn.__name__}") from error
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise           # this caller is being cancelled
            # The pool was shut down under the call: a failure, not a cancellation.
            raise WorkerDied(f"the worker processes were stopped during {fn.__name__}") \
                from None
        return result

    def _broken(self, pool: ProcessPoolExecutor) -> None:
        """Forget a broken pool. If its workers never started, BREAKS times in a row, the
        work is done in the daemon for a while; a worker that started and then died was
        killed by what it was given (or from outside), which must never reach the daemon,
        so that never counts."""
        if self._pool is not pool:
            return
        self._pool = None
        warmed = self._warmed
        pool.shutdown(wait=False, cancel_futures=True)
        started = warmed is not None and warmed.done() and not warmed.cancelled() \
            and warmed.exception() is None
        self._breaks = 0 if started else self._breaks + 1
        if self._breaks >= BREAKS:
            log.error("worker processes broke %d times in a row; working in the daemon for "
                      "%.0f s", self._breaks, PAUSE)
            self._paused_until = time.monotonic() + PAUSE
            self._breaks = 0
        else:
            log.warning("a worker process died; starting the pool again")

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
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + STOP_WAIT
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker process %s did not end; terminating it", process.pid)
                process.terminate()
                process.join(1.0)


class _Batcher(Generic[A, T]):
    def __init__(self, workers: Workers, fn: Callable[[Sequence[A]], list[T]]) -> None:
        self.workers = workers
        self.fn = fn
        self.waiting: list[tuple[A, asyncio.Future[T]]] = []
        self.sending: set[asyncio.Task[None]] = set()
        # Items that were in a worker when it died go back one at a time, each alone in
        # the pool as far as this batcher goes, so that a killer takes no suspect with it.
        self.suspects = asyncio.Lock()

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

    async def _answer(self, batch: list[tuple[A, asyncio.Future[T]]],
                      suspect: bool = False) -> None:
        batch = [(item, future) for item, future in batch if not future.done()]
        if not batch:
            return      # every caller has gone (cancelled by a stop)
        try:
            if suspect:
                async with self.suspects:
                    results = await self.workers.run(self.fn, [item for item, _ in batch])
            else:
                results = await self.workers.run(self.fn, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.fn.__name__} gave {len(results)} results "
                                   f"for {len(batch)} items")
        except WorkerDied:
            if suspect:
                _settle(batch[0][1], error=WorkerDied(
                    f"a worker process died running {self.fn.__name__} on this item alone"))
            else:
                # Any of them, or another call's item, may have killed it: each again,
                # alone, so that only the item that kills a worker fails.
                for item, future in batch:
                    await self._answer([(item, future)], suspect=True)
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


def _settle(future: asyncio.Future[Any], *, result: Any = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return      # its caller was cancelled
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
