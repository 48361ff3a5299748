"""Open file descriptors of objects, shared by the store's I/O threads.

Opening and closing an object file for every 4 KiB request cost more than the
I/O itself (path lookup, and gevent's wrapper around ``os.close``), so the
store keeps one O_RDWR descriptor per recently used object.

Theory of operation
-------------------
Several OS threads use the cache at once.  The danger with shared descriptors
is closing one while another thread is about to use it: the number could be
reused by an unrelated ``open`` and the I/O would hit the wrong file, however
long ago the descriptor left the cache (a thread can stall for minutes in
writeback).  So every use is a *lease*: `acquire` returns the descriptor and
counts a user, `release` ends the use, and a descriptor that leaves the cache
(eviction, object removed or replaced) is closed only when its last lease ends.
The counts are guarded by one short lock (a real OS lock in the daemon).

Callers holding the object's stripe lock in the store (writes) open and cache
descriptors (`acquire`).  A lock-free reader uses a cached one (`lease`) or opens
its own and offers it (`adopt`): it enters the cache only if the object's tick
(which every replace and remove changes *before* it discards the cached
descriptor) is still the one read before the open, so a descriptor of a file
that a replace just renamed over can never enter the cache.  A
descriptor still in use when its file is unlinked or renamed over keeps
pointing at the old inode, which is the same outcome as an ordinary open file.
"""
from __future__ import annotations

import os
import threading


class FdCache:
    def __init__(self, capacity: int = 2048, lock=None) -> None:
        self.capacity = capacity
        self._lock = lock if lock is not None else threading.Lock()
        self._fds: dict[int, int] = {}      # oid -> fd, oldest insertion first
        self._users: dict[int, int] = {}    # fd -> leases outstanding
        self._retired: set[int] = set()     # out of the cache, closed at the last release

    def acquire(self, oid: int, path: str) -> int:
        """A leased descriptor of ``oid``'s file, opening and caching it when needed
        (FileNotFoundError).  Call with the object's stripe lock held."""
        with self._lock:
            fd = self._fds.get(oid)
            if fd is not None:
                self._users[fd] += 1
                return fd
        fd = os.open(path, os.O_RDWR)
        with self._lock:
            cached = self._fds.get(oid)
            if cached is not None:      # a reader adopted one while we opened ours
                self._users[cached] += 1
                evicted = [fd]
                fd = cached
            else:
                self._fds[oid] = fd
                self._users[fd] = 1
                evicted = self._evict_locked()
        for old in evicted:
            os.close(old)
        return fd

    def adopt(self, oid: int, fd: int, still_valid) -> bool:
        """Cache a descriptor a reader opened without the stripe lock, leased to it, if
        ``still_valid()`` (checked under the cache's lock: nothing replaced or removed the
        file since it was opened) and none is cached yet; False: the caller keeps it."""
        with self._lock:
            if oid in self._fds or not still_valid():
                return False
            self._fds[oid] = fd
            self._users[fd] = 1
            evicted = self._evict_locked()
        for old in evicted:
            os.close(old)
        return True

    def lease(self, oid: int) -> int | None:
        """A leased cached descriptor, or None (never opens: safe anywhere)."""
        with self._lock:
            fd = self._fds.get(oid)
            if fd is not None:
                self._users[fd] += 1
            return fd

    def release(self, fd: int) -> None:
        with self._lock:
            n = self._users[fd] - 1
            if n or fd not in self._retired:
                self._users[fd] = n
                return
            del self._users[fd]
            self._retired.discard(fd)
        os.close(fd)

    def discard(self, oid: int) -> None:
        """Forget ``oid``'s descriptor (its file was removed or replaced)."""
        with self._lock:
            fd = self._fds.pop(oid, None)
            closable = fd is not None and self._retire_locked(fd)
        if closable:
            os.close(fd)

    def _retire_locked(self, fd: int) -> bool:
        """True when nobody uses ``fd`` (close it now), else it closes at its last release."""
        if self._users.get(fd, 0) == 0:
            self._users.pop(fd, None)
            return True
        self._retired.add(fd)
        return False

    def _evict_locked(self) -> list[int]:
        closable = []
        while len(self._fds) > self.capacity:
            oid = next(iter(self._fds))
            fd = self._fds.pop(oid)
            if self._retire_locked(fd):
                closable.append(fd)
        return closable

    def close_all(self) -> None:
        """Close everything (the store is shutting down; no I/O may be in flight)."""
        with self._lock:
            fds = list(self._fds.values()) + list(self._retired)
            self._fds.clear()
            self._retired.clear()
            self._users.clear()
        for fd in fds:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._fds)
