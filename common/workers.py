"""Recycled greenlets for per-request work (the NBD server's requests, the peer server's).

Starting a greenlet and letting it finish costs about 10 us of CPU here (its stack is
set up on the first switch and freed at the end); handing a task to a greenlet parked
after its last one costs about 1 us.  `Workers` keeps the greenlets that finish a task
parked, up to ``limit`` of them, and runs the next task in one of them.

Like ``gevent.pool.Pool(limit)``: ``spawn`` blocks while ``limit`` tasks run, so a reader
that spawns stops reading (back-pressure), and ``join`` waits for the tasks.  A task's
exception is reported as the hub reports a failed greenlet's (``hub.NOT_ERROR`` quietly).
Tasks are not killed; ``close`` ends the parked greenlets.
"""
from __future__ import annotations

import sys

import gevent
from gevent.event import Event
from gevent.hub import Waiter, get_hub


class Workers:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.busy = 0
        self._hub = get_hub()
        self._idle: list[Waiter] = []
        self._room: Event | None = None     # set when a task ends while spawn waits
        self._idle_event: Event | None = None  # set when busy drops to 0 while join waits
        self._closed = False

    def spawn(self, fn, *args) -> None:
        """Run ``fn(*args)`` in a worker greenlet, after waiting for room when ``limit`` run."""
        while self.busy >= self.limit:
            if self._room is None:
                self._room = Event()
            self._room.wait()
        self.busy += 1
        if self._idle:
            self._hub.loop.run_callback(self._idle.pop().switch, (fn, args))
        else:
            gevent.spawn(self._work, [(fn, args)])   # a list emptied at once: the greenlet's
            #                                          own ``args`` must not keep the first task

    def join(self, timeout: float | None = None) -> bool:
        """Until no task runs (or ``timeout`` passes); True when none runs."""
        if self.busy:
            if self._idle_event is None:
                self._idle_event = Event()
            self._idle_event.wait(timeout)
        return self.busy == 0

    def close(self) -> None:
        """End the parked greenlets; running tasks finish, then their greenlets end too."""
        self._closed = True
        idle, self._idle = self._idle, []
        for waiter in idle:
            self._hub.loop.run_callback(waiter.switch, None)

    def _work(self, first: list) -> None:
        task = first.pop()
        while task is not None:
            fn, args = task
            try:
                fn(*args)
            except BaseException:  # noqa: B036 - reported as the hub reports greenlets
                self._hub.handle_error(fn, *sys.exc_info())
            finally:
                self._finished()
            fn = args = task = None     # a parked greenlet must not keep its last payload alive
            if self._closed or len(self._idle) >= self.limit:
                return
            waiter = Waiter(self._hub)
            self._idle.append(waiter)
            task = waiter.get()

    def _finished(self) -> None:
        self.busy -= 1
        room, self._room = self._room, None
        if room is not None:
            room.set()
        if not self.busy and self._idle_event is not None:
            event, self._idle_event = self._idle_event, None
            event.set()
