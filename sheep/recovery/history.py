"""Who can hold the newest copy of an object: the rings since the last epoch complete everywhere.

Theory of operation
-------------------
Let K be the newest epoch older than the current one, E, that every one of its members
finished recovering (all their ``/recovery/K/<node>`` markers are present).  When K was
complete, every replica K placed held the newest copy of what it placed there.  From then
on a write acknowledged at epoch j went to every replica ring j placed (a write that
straddled an epoch change is resent at the new epoch, to the new placement).  So the
newest copy of an object is held by a member of E that some ring j in K..E-1 placed it
on: its *holders*.  Nobody else has to be asked about it.

A node that ring j placed the object on for every j in K..E-1, and that has not
restarted since K (its member value, with its start time, is the same in each of those
epochs), saw every acknowledged write of the object: it is *continuous* and has nothing
to pull for it.  A restarted node is never continuous: a power loss may have taken
writes it acknowledged before a FLUSH it never got.

One exception: a copy can outlive every ring that placed it.  When every holder of an
object was away at K, K completed without it, and the node that kept it comes back later:
no ring of K..E-1 placed the object on it.  So the members of E that are *returning* (absent
from an epoch of K..E-1, or with another member value there: restarted) are asked too, for
everything they have that E places on the asker (``list_all``, filtered by the member; a
fresh joiner answers with nothing), and a continuous node with no copy at all asks the
holders and the returning members like any other.

So a pass at E asks only the holders of the objects it is not continuous for, and only
about those objects, and the returning members; when nothing is complete yet, or too many epochs passed since (more
than ``MAX_RINGS``), or ZooKeeper cannot say, the pass asks every member about everything
(`History` is None).  `History` is a pure value; `HistoryLoader` reads it from the
coordinator once per epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable

from common.errors import SheepError
from coordinator.ring import Member
from sheep.replication.epoch import EpochView

log = logging.getLogger(__name__)

MAX_RINGS = 16          # epochs K..E-1 beyond this: ask everyone (and spare the rings)


def placed_on(view: EpochView, node_id: str, oid: int, copies: int) -> bool:
    return any(m.node_id == node_id for m in view.ring.replicas(oid, copies))


@dataclass(frozen=True)
class History:
    node_id: str
    complete: int                       # K
    past: tuple[EpochView, ...]         # epochs K..E-1, ascending
    current: EpochView                  # E
    me: Member | None = None            # this process's own member value (else E's record)

    @cached_property
    def returning(self) -> tuple[Member, ...]:
        """Members of E absent from an epoch of K..E-1 or with another value there (this
        node included when it restarted); they may keep copies no ring since K placed."""
        return tuple(m for m in self.current.members
                     if any(v.member(m.node_id) != m for v in self.past))

    @cached_property
    def restarted(self) -> bool:
        """This node is missing from one of K..E-1, or started again since."""
        me = self.current.member(self.node_id)
        return me is None or (self.me is not None and self.me != me) or \
            any(v.member(self.node_id) != me for v in self.past)

    def continuous(self, oid: int, copies: int) -> bool:
        """Every ring since K placed ``oid`` here and this node never restarted: it saw
        every acknowledged write of the object."""
        return not self.restarted and all(placed_on(v, self.node_id, oid, copies)
                                          for v in self.past)

    def holders(self, oid: int, copies: int) -> list[Member]:
        """The members of E that some ring of K..E-1 placed ``oid`` on (this node too),
        and the returning members."""
        ids = {m.node_id for m in self.returning}
        for v in self.past:
            ids.update(m.node_id for m in v.ring.replicas(oid, copies))
        return [m for m in self.current.members if m.node_id in ids]

    def needed(self, objects: Iterable[tuple[int, int]],
               have: Callable[[int], bool] = lambda _oid: True) -> dict[int, list[Member]]:
        """oid -> holders, for each (oid, copies) that E places here and this node is not
        continuous for, or has no copy of (``have``)."""
        out: dict[int, list[Member]] = {}
        for oid, copies in objects:
            if placed_on(self.current, self.node_id, oid, copies) and \
                    not (self.continuous(oid, copies) and have(oid)):
                out[oid] = self.holders(oid, copies)
        return out


class HistoryLoader:
    """``History`` for an epoch view, read from the coordinator (``complete_epoch``,
    ``epoch``) once per epoch; None whenever it cannot be known."""

    def __init__(self, node_id: str, markers, me: Member | None = None) -> None:
        self.node_id = node_id
        self._markers = markers
        self._me = me                   # this process's member value
        self._views: dict[int, EpochView] = {}
        self._last: tuple[int, History | None] | None = None

    def __call__(self, view: EpochView) -> History | None:
        if self._last is not None and self._last[0] == view.epoch:
            return self._last[1]
        try:
            history = self._load(view)
        except SheepError as exc:
            log.info("epoch=%d placement history unknown (%s): asking every member",
                     view.epoch, exc)
            return None                 # not remembered: the next call tries again
        self._last = (view.epoch, history)
        return history

    def _load(self, view: EpochView) -> History | None:
        k = self._markers.complete_epoch(before=view.epoch)
        if k is None or view.epoch - k > MAX_RINGS:
            return None
        past = []
        for n in range(k, view.epoch):
            v = self._views.get(n)
            if v is None:
                record = self._markers.epoch(n)
                if record is None:
                    return None
                v = self._views[n] = EpochView.from_dict(record)
            past.append(v)
        for n in [n for n in self._views if n < k]:
            del self._views[n]
        if any(v.placement_seq != view.placement_seq for v in past):
            # copies changed since K (``collie vdi alter-copy``): the rings of K..E-1 with
            # today's copies are not where the copies were, and a raise's new holders
            # would pass for continuous.  Ask every member about everything, this once.
            log.info("epoch=%d copies changed since epoch %d: asking every member",
                     view.epoch, k)
            return None
        return History(self.node_id, k, tuple(past), view, self._me)
