"""Open file descriptors of objects, shared by the store's I/O threads without locks.

Opening and closing an object file for every 4 KiB request cost more than the
I/O itself (path lookup, and gevent's wrapper around ``os.close``), so the
store keeps one O_RDWR descriptor per recently used object.

Theory of operation
-------------------
Several OS threads use the cache at once and take no locks (see
`sheep.store`).  The danger with shared descriptors is closing one while
another thread is about to use it: the number could be reused by an unrelated
``open`` and the I/O would hit the wrong file.  So a descriptor that leaves the
cache (eviction, object removed or replaced) is never closed at once: it is
*retired* to a graveyard and closed only after ``grace_s`` seconds, far longer
than any thread holds a descriptor between looking it up and issuing its
syscall.  A descriptor still in use when its file is unlinked or renamed over
keeps pointing at the old inode, which is the same outcome as an ordinary
open file.
"""
from __future__ import annotations

import collections
import os
import time
from typing import Callable


class FdCache:
    def __init__(self, capacity: int = 2048, grace_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.grace_s = grace_s
        self._clock = clock
        self._fds: dict[int, int] = {}
        self._graveyard: collections.deque[tuple[float, int]] = collections.deque()

    def get(self, oid: int, path: str) -> int:
        """The descriptor of ``oid``'s file, opening it if needed (FileNotFoundError)."""
        fd = self._fds.get(oid)
        if fd is not None:
            return fd
        fd = os.open(path, os.O_RDWR)
        winner = self._fds.setdefault(oid, fd)
        if winner != fd:          # another thread cached one first: ours was never shared
            os.close(fd)
        elif len(self._fds) > self.capacity:
            self._evict()
        return winner

    def peek(self, oid: int) -> int | None:
        """The cached descriptor, or None (never opens: safe on the event loop)."""
        return self._fds.get(oid)

    def discard(self, oid: int) -> None:
        """Forget ``oid``'s descriptor (its file was removed or replaced)."""
        fd = self._fds.pop(oid, None)
        if fd is not None:
            self._retire(fd)

    def _evict(self) -> None:
        for _ in range(len(self._fds) - self.capacity):
            try:
                oid = next(iter(self._fds))   # oldest insertion first
            except (StopIteration, RuntimeError):  # emptied or resized meanwhile
                return
            self.discard(oid)

    def _retire(self, fd: int) -> None:
        now = self._clock()
        self._graveyard.append((now, fd))
        while True:
            try:
                entry = self._graveyard.popleft()
            except IndexError:
                return
            if now - entry[0] < self.grace_s:
                self._graveyard.appendleft(entry)  # too young: keep it (order barely matters)
                return
            os.close(entry[1])

    def close_all(self) -> None:
        """Close everything (the store is shutting down; no I/O may be in flight)."""
        for oid in list(self._fds):
            fd = self._fds.pop(oid, None)
            if fd is not None:
                os.close(fd)
        while self._graveyard:
            os.close(self._graveyard.popleft()[1])

    def __len__(self) -> int:
        return len(self._fds)
