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
"""
from __future__ import annotations

import logging
from typing import Callable

from common.errors import StaleGeneration

log = logging.getLogger(__name__)


class GenerationTable:
    def __init__(self, lookup: Callable[[int], int] = lambda _vid: 0) -> None:
        self._lookup = lookup          # vid -> current generation in ZooKeeper (may block)
        self._newest: dict[int, int] = {}
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

    def raise_to(self, vid: int, generation: int) -> None:
        if generation > self._newest.get(vid, 0):
            self._newest[vid] = generation

    def clear(self) -> None:
        """Forget everything (the ZooKeeper session was lost: broadcasts may be missed)."""
        self._newest.clear()
