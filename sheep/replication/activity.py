"""The activity log of a replica: which objects of each VDI may be out of step.

DRBD's activity log is the model.  A write that reaches some replicas and not
others (its gateway died part-way through the fan-out) leaves copies that differ;
the next holder of the VDI must bring them together before it reads or writes.
So every replica records, per vid, each object a mutation touched with the
mutation's (generation, seq); the writing gateway knows which of its mutations
completed on every replica and *settles* them (``settle(vid, generation, seq)``:
everything up to that seq of that generation, and everything of older
generations, is known complete).  What is left unsettled after a holder vanished
is what the next holder resynchronises (`sheep.volumes.fencing`).

In memory only: a replica that restarts rejoins in a new epoch, and recovery
compares versions; its on-disk versions are those of its last flush.
"""
from __future__ import annotations


class ActivityLog:
    def __init__(self) -> None:
        self._by_vid: dict[int, dict[int, tuple[int, int]]] = {}

    def record(self, vid: int, oid: int, generation: int, seq: int) -> None:
        oids = self._by_vid.setdefault(vid, {})
        mark = (generation, seq)
        if oids.get(oid, (-1, -1)) < mark:
            oids[oid] = mark

    def settle(self, vid: int, generation: int, seq: int) -> int:
        """Forget what ``(generation, seq)`` covers; how many objects were settled."""
        oids = self._by_vid.get(vid)
        if not oids:
            return 0
        upto = (generation, seq)
        done = [oid for oid, mark in oids.items() if mark <= upto]
        for oid in done:
            del oids[oid]
        if not oids:
            self._by_vid.pop(vid, None)
        return len(done)

    def unsettled(self, vid: int) -> list[int]:
        return sorted(self._by_vid.get(vid, ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_vid.values())
