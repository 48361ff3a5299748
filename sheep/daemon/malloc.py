"""glibc malloc tuning for a daemon that receives megabyte payloads all day.

By default glibc serves allocations above its mmap threshold (128 KiB, raised
dynamically up to the largest block freed) with fresh ``mmap``s, and hands freed memory
at the top of the heap back to the kernel past 128 KiB.  A 1 MiB write payload is a
``bytearray`` that Python zero-fills: on fresh pages each of its 256 pages faults and is
cleared by the kernel before the memset, and is unmapped again when the payload is
freed.  Measured on a 3-node cluster, 1 MiB sequential writes went from 314 to 379 MiB/s
(CPU per write 2,241 -> 1,932 us at the gateway, 1,140 -> 990 us at each replica) with
the thresholds below, which keep such buffers in the heap for reuse.

That cache is for a busy daemon; an idle one gives it back.  `trim_when_idle` checks the
process's CPU time every ``TRIM_CHECK_S``: after a busy period followed by one whole
interval of (almost) no work it calls ``malloc_trim(0)`` once.  Measured at 100 sheep, the
gateway that took 400 MiB of writes kept 190 MiB resident without it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20     # glibc's ceiling for it on 64-bit
TRIM_THRESHOLD_BYTES = 128 << 20    # freed memory kept for reuse before any goes back


def keep_large_buffers() -> bool:
    """Tune glibc (when it is the C library) as above; False when not applied."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    if not ok:
        log.info("mallopt refused the large-buffer thresholds; using malloc's defaults")
    return ok


TRIM_CHECK_S = 10.0
IDLE_CPU_S = 0.05        # CPU time in one interval below which the daemon counts as idle


class IdleTrim:
    """Pure decision: given the process CPU time at each check, trim once per idle spell
    that follows work."""

    def __init__(self, idle_cpu_s: float = IDLE_CPU_S) -> None:
        self.idle_cpu_s = idle_cpu_s
        self._last: float | None = None
        self._worked = False

    def step(self, cpu_s: float) -> bool:
        last, self._last = self._last, cpu_s
        if last is None:
            return False
        if cpu_s - last >= self.idle_cpu_s:
            self._worked = True
            return False
        if self._worked:
            self._worked = False
            return True
        return False


def trim_when_idle(interval_s: float = TRIM_CHECK_S):
    """A greenlet giving cached heap memory back to the kernel once the daemon is idle
    (None when glibc's ``malloc_trim`` is not there)."""
    import gevent
    try:
        malloc_trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    decide = IdleTrim()

    def loop():
        while True:
            t = os.times()
            if decide.step(t.user + t.system):
                malloc_trim(0)
            gevent.sleep(interval_s)
    return gevent.spawn(loop)
