"""The store's free-space reserve: writes that would eat into it are refused.

``statvfs`` runs at most every ``SPACE_CHECK_INTERVAL_S`` seconds or every
``SPACE_CHECK_BYTES`` written; in between, free space is estimated as the last
reading minus the bytes written since (overwrites make this pessimistic, so a
refusal is always confirmed by a fresh reading).  A write that passes is
*pending* until `release`: statvfs may not see it yet, so a fresh reading
subtracts the pending bytes (else N writes in flight in the thread pool could
each pass on the same reading and eat into the reserve).  Space is counted in
whole filesystem blocks.  Several OS threads call this: one short lock (a real
OS lock in the daemon; gevent's patched lock is a greenlet lock).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from common.errors import NoSpace

SPACE_CHECK_INTERVAL_S = 0.5
SPACE_CHECK_BYTES = 64 << 20
SPACE_UNIT = 4096   # filesystems allocate whole blocks: a 520-byte inode costs 4 KiB


def whole_blocks(nbytes: int) -> int:
    return -(-nbytes // SPACE_UNIT) * SPACE_UNIT


class SpaceReserve:
    def __init__(self, root, reserve_bytes: int, clock: Callable[[], float] = time.monotonic,
                 lock=None) -> None:
        self.root = root
        self.reserve_bytes = reserve_bytes
        self._clock = clock
        self._lock = lock if lock is not None else threading.Lock()
        self._reading: tuple[float, int] = (float("-inf"), 0)   # (checked_at, free bytes)
        self._written_since = 0
        self._pending = 0

    def claim(self, nbytes: int) -> None:
        """Count ``nbytes`` about to be written; NoSpace if they would eat into the reserve."""
        nbytes = whole_blocks(nbytes)
        with self._lock:
            checked_at, free = self._reading
            written = self._written_since + nbytes
            now = self._clock()
            stale = now - checked_at >= SPACE_CHECK_INTERVAL_S or written >= SPACE_CHECK_BYTES
            if stale or free - written < self.reserve_bytes:
                free = self._refresh(now)
                written = nbytes    # this write is not in the fresh reading: count it
                if free - nbytes < self.reserve_bytes:
                    raise NoSpace(
                        f"store {self.root}: {free} bytes free, writing {nbytes} would drop "
                        f"below the reserve of {self.reserve_bytes}",
                        free_bytes=free, reserve_bytes=self.reserve_bytes)
            self._written_since = written
            self._pending += nbytes

    def release(self, nbytes: int) -> None:
        """A write that passed `claim` finished (or failed)."""
        with self._lock:
            self._pending -= whole_blocks(nbytes)

    def _refresh(self, now: float) -> int:
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize - self._pending
        self._written_since = 0
        self._reading = (now, free)
        return free
