"""Pacing of recovery transfers: at most N objects and/or B bytes per second.

A `Throttle` is a pure pacing rule with an injected clock: ``delay(nbytes)``
says how long to wait before the next transfer of ``nbytes`` may start so that
the totals since ``reset()`` stay within both limits.  It never sleeps itself
(the recovery executor does), which keeps it deterministic under test.
Limits change at run time with ``set()``; 0 means unlimited.

With transfers running in parallel, an object is counted when its transfer
*starts* (``start()``) and its bytes when they have moved (``moved()``): so a
pool of N workers cannot burst N objects past an objects/s limit (the bytes of
the transfers in flight can overshoot a bytes/s limit by at most N objects).
``record(nbytes)`` is both at once.

`RateMeter` measures what was actually moved (objects/s and bytes/s over the
pass), for ``collie node recovery``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Limits:
    objects_per_s: float = 0.0
    bytes_per_s: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "Limits":
        d = d or {}
        return cls(float(d.get("objects_per_s") or 0), float(d.get("bytes_per_s") or 0))

    def to_dict(self) -> dict:
        return {"objects_per_s": self.objects_per_s, "bytes_per_s": self.bytes_per_s}

    @property
    def unlimited(self) -> bool:
        return self.objects_per_s <= 0 and self.bytes_per_s <= 0


class Throttle:
    """Objects/s and bytes/s limits over a window that restarts on every change."""

    def __init__(self, limits: Limits = Limits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.limits = limits
        self.reset()

    def set(self, limits: Limits) -> None:
        self.limits = limits
        self.reset()

    def reset(self) -> None:
        self._start = self._clock()
        self._objects = 0
        self._bytes = 0

    def delay(self, nbytes: int) -> float:
        """Seconds to wait before moving one more object of ``nbytes`` (0: go now)."""
        lim = self.limits
        if lim.unlimited:
            return 0.0
        elapsed = self._clock() - self._start
        due = 0.0
        if lim.objects_per_s > 0:
            due = max(due, self._objects / lim.objects_per_s)
        if lim.bytes_per_s > 0:
            due = max(due, self._bytes / lim.bytes_per_s)
        return max(0.0, due - elapsed)

    def start(self) -> None:
        """One more object transfer starts (counts against objects/s)."""
        self._objects += 1

    def moved(self, nbytes: int) -> None:
        """``nbytes`` were moved (count against bytes/s)."""
        self._bytes += nbytes

    def record(self, nbytes: int) -> None:
        """One object of ``nbytes`` was moved."""
        self.start()
        self.moved(nbytes)


class RateMeter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._start = self._clock()
        self.objects = 0
        self.bytes = 0

    def record(self, nbytes: int) -> None:
        self.objects += 1
        self.bytes += nbytes

    def rates(self) -> dict:
        elapsed = max(1e-6, self._clock() - self._start)
        return {"objects_per_s": round(self.objects / elapsed, 2),
                "bytes_per_s": round(self.bytes / elapsed, 1)}
