"""Fencing tokens on a replica: the newest lock generation seen per VDI.

Every mutation of a VDI's objects carries the generation of the lock its writer
holds (a number ZooKeeper bumps at every acquisition and every break, see
`coordinator.locks`).  A replica remembers the highest generation it has seen
per vid and refuses older ones with `StaleGeneration`, so a write an old holder
sent before it lost the lock (expired session, ``collie vdi lock unlock``, a
partition) cannot land after a new holder took the VDI.

A new holder broadcasts its generation to every member before its first I/O
(`raise_to`, the ``fence`` peer op); a replica that has no entry for a vid (it
restarted, or its ZooKeeper session was lost and the table cleared) asks
ZooKeeper (``lookup(vid)``) before it admits anything for that vid.

Admitted is not done: a mutation admitted under generation ``g`` may still wait
(recovery of its object, the write queue) when ``g + 1`` arrives.  So admitted
mutations are counted per (vid, generation) until they finish (`enter`/`leave`),
`raise_to` returns only once none of an older generation is left (or fails after
``drain_s``: the new holder's attach fails and is retried), and the replica checks
the generation once more right before the store is written (`still_current`).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from gevent.event import Event

from common.errors import StaleGeneration, Unavailable

log = logging.getLogger(__name__)


DRAIN_S = 30.0


class GenerationTable:
    def __init__(self, lookup: Callable[[int], int] = lambda _vid: 0,
                 drain_s: float = DRAIN_S) -> None:
        self._lookup = lookup          # vid -> current generation in ZooKeeper (may block)
        self._newest: dict[int, int] = {}
        self._admitted: dict[tuple[int, int], int] = {}   # (vid, generation) -> in flight
        self._drained = Event()
        self._drain_s = drain_s
        self.refused = 0

    def newest(self, vid: int) -> int:
        known = self._newest.get(vid)
        if known is None:
            looked_up = int(self._lookup(vid))
            known = max(self._newest.get(vid, 0), looked_up)
            self._newest[vid] = known
        return known

    def admit(self, vid: int, generation: int) -> None:
        """Refuse a mutation of ``vid`` from an older generation; remember a newer one."""
        known = self.newest(vid)
        if generation < known:
            self.refused += 1
            log.warning("vid=%06x refused a mutation of generation %d (newest %d)", vid,
                        generation, known)
            raise StaleGeneration(f"VDI {vid:06x}: lock generation {generation} was "
                                  f"superseded by {known}", vid=vid, generation=generation,
                                  newest=known)
        if generation > known:
            self._newest[vid] = generation

    def enter(self, vid: int, generation: int) -> None:
        """An admitted mutation starts (after `admit`)."""
        key = (vid, generation)
        self._admitted[key] = self._admitted.get(key, 0) + 1

    def leave(self, vid: int, generation: int) -> None:
        key = (vid, generation)
        n = self._admitted[key] - 1
        if n:
            self._admitted[key] = n
        else:
            del self._admitted[key]
            drained, self._drained = self._drained, Event()
            drained.set()

    def still_current(self, vid: int, generation: int) -> None:
        """Right before the store is written: refuse if a newer holder arrived meanwhile."""
        known = self._newest.get(vid, 0)
        if generation < known:
            self.refused += 1
            raise StaleGeneration(f"VDI {vid:06x}: lock generation {generation} was "
                                  f"superseded by {known} while the write waited", vid=vid,
                                  generation=generation, newest=known)

    def raise_to(self, vid: int, generation: int) -> None:
        """From now on refuse generations older than ``generation``, and return once no
        mutation of an older one is still running here (Unavailable after ``drain_s``)."""
        if generation > self._newest.get(vid, 0):
            self._newest[vid] = generation
        deadline = time.monotonic() + self._drain_s
        while any(v == vid and g < generation for v, g in self._admitted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"VDI {vid:06x}: mutations of older lock generations still "
                                  f"running after {self._drain_s:.0f}s", vid=vid)
            self._drained.wait(remaining)

    def clear(self) -> None:
        """Forget everything (the ZooKeeper session was lost: broadcasts may be missed)."""
        self._newest.clear()
