"""Store writes handed to the thread pool in batches.

Every trip through gevent's thread pool costs a queue hand-off, a worker wake-up
and a wake-up of the event loop, more than a 4 KiB buffered ``pwrite`` itself.
So writes queue here and run in the pool together: while one batch runs, the
writes that arrive meanwhile form the next one.  At queue depth 1 this is one
trip per write as before; at depth 16 it is one trip for many.  Up to
``parallel`` batches run at once, so one slow write (a cold block allocation)
does not hold up everything behind it for long.

Each caller still gets its own outcome: its write's exception, or None.
"""
from __future__ import annotations

from typing import Callable

import gevent
from gevent.event import AsyncResult


class WriteBatcher:
    def __init__(self, write: Callable, run_in_pool: Callable, parallel: int = 2,
                 max_batch: int = 64) -> None:
        self._write = write              # the store's blocking write(oid, offset, data, epoch, create)
        self._run_in_pool = run_in_pool  # (fn, *args) -> result, blocking this greenlet only
        self._parallel = parallel
        self._max_batch = max_batch
        self._queue: list[tuple[tuple, AsyncResult]] = []
        self._running = 0

    def write(self, *args) -> None:
        """Queue one write and wait for it; raises what the store raised."""
        done = AsyncResult()
        self._queue.append((args, done))
        if self._running < self._parallel:
            # no spare batch runner: this caller runs the next batch itself (no extra
            # hop at queue depth 1), and hands the rest on so it can return
            self._running += 1
            try:
                self._run_one_batch()
            finally:
                self._running -= 1
            if self._queue and self._running < self._parallel:
                self._running += 1
                gevent.spawn(self._drain)
        done.get()

    def _run_one_batch(self) -> None:
        batch = self._queue[:self._max_batch]
        del self._queue[:self._max_batch]
        if not batch:
            return
        try:
            outcomes = self._run_in_pool(self._run_batch, [args for args, _ in batch])
        except BaseException as exc:    # the runner was killed (shutdown) or the pool failed
            for _, done in batch:
                if not done.ready():
                    done.set_exception(exc if isinstance(exc, Exception)
                                       else RuntimeError(f"write batch abandoned: {exc!r}"))
            raise
        for (_, done), outcome in zip(batch, outcomes):
            if outcome is None:
                done.set(None)
            else:
                done.set_exception(outcome)

    def _drain(self) -> None:
        try:
            while self._queue:
                self._run_one_batch()
        finally:
            self._running -= 1

    def _run_batch(self, batch: list[tuple]) -> list[BaseException | None]:
        """In a pool thread: every write of the batch, each outcome kept apart."""
        outcomes: list[BaseException | None] = []
        for args in batch:
            try:
                self._write(*args)
                outcomes.append(None)
            except Exception as exc:  # handed back to that write's own caller
                outcomes.append(exc)
        return outcomes
