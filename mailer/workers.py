"""Worker processes for pure CPU work, so that it runs beside the event loop, not on it.

The daemon is one Python process, which runs one thread at a time: reading hundreds of
replies a second (MIME, then iCalendar) would leave intake and delivery only what is left
of one core. `router.processes` worker processes do such work on the other cores; the
daemon's own process keeps the sockets and the database. A function sent to a worker must
be pure (bytes in, a picklable value out) and importable by name.

With `processes = 0` the work runs in the daemon itself, as it does in the tests, whose
injected clock and fakes a worker process could not see. A worker that dies (killed, out
of memory) costs nothing but time: the pool is started again and the call in hand runs in
the daemon.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
WATCH = 0.5     # seconds between a worker's looks at whether the daemon still lives


def _warm(modules: tuple[str, ...], daemon: int | None = None) -> None:
    """In each new worker: import what the work needs before the first call waits for it,
    and watch the daemon, so as to end with it even when it is killed."""
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
    """A pool of `processes` worker processes (none: run in this process)."""

    def __init__(self, processes: int, preload: tuple[str, ...] = ()) -> None:
        self.processes = processes
        self.preload = preload
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker processes now, in the background, rather than on first use."""
        if self.processes <= 0 or self._pool is not None:
            return
        # Spawned, not forked: the daemon has threads (the database's), and a fork copies
        # their locks in whatever state they are.
        self._pool = ProcessPoolExecutor(self.processes,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_warm,
                                         initargs=(self.preload, os.getpid()))
        for _ in range(self.processes):
            self._pool.submit(_warm, ())

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker process, or here if there is none or the pool broke."""
        if self.processes > 0 and self._pool is None:
            self.start()
        pool = self._pool
        if pool is not None:
            try:
                return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
            except BrokenProcessPool:
                log.warning("a worker process died; starting the pool again")
                if self._pool is pool:
                    self._pool = None
                    pool.shutdown(wait=False, cancel_futures=True)
        return fn(*args)

    def batched(self, fn: Callable[[Sequence[A]], list[T]]) -> Callable[[A], Awaitable[T]]:
        """An async fn of one item that sends the items asked for together in one call.

        Every call made before the event loop next turns joins the same `fn(items)` in a
        worker, so that a batch of fifty replies crosses to a worker once, not fifty times.
        """
        return _Batcher(self, fn)

    def stop(self) -> None:
        """End the worker processes (what they hold is repeated by the router's lease)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Batcher(Generic[A, T]):
    def __init__(self, workers: Workers, fn: Callable[[Sequence[A]], list[T]]) -> None:
        self.workers = workers
        self.fn = fn
        self.waiting: list[tuple[A, asyncio.Future[T]]] = []

    async def __call__(self, item: A) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.waiting.append((item, future))
        if len(self.waiting) == 1:
            loop.call_soon(self._send)
        return await future

    def _send(self) -> None:
        batch, self.waiting = self.waiting, []
        sent = asyncio.ensure_future(self.workers.run(self.fn, [item for item, _ in batch]))

        def answer(done: asyncio.Future[list[T]]) -> None:
            error = done.exception() if not done.cancelled() else asyncio.CancelledError()
            results = done.result() if error is None else []
            for index, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(results[index])
        sent.add_done_callback(answer)
