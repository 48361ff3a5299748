"""The stale area: copies a node no longer holds by placement, kept until it is safe to drop.

Theory of operation
-------------------
When a node finishes recovering epoch N, every local object the epoch-N ring no
longer places on it moves to ``stale/N/`` (`ObjectStore.move_to_stale`).  It is
not deleted yet: a node that must now hold the object may not have pulled it,
and this stale copy may be the newest one left (a join and a failure in the
same epoch).  So stale copies stay visible to peers: ``list_all`` reports them
next to the live objects and ``fetch_any`` serves them.

The node then records ``/recovery/<N>/<node_id>`` in ZooKeeper.  Once every
member of epoch N has its marker, every placed replica holds the newest copy of
everything, and each node deletes ``stale/<=N``.  A newer epoch arriving first
simply hands the job on: its completion purges everything up to it.

After its purge the node deletes the marker directories of every epoch older than
N (``prune_recovery_markers``; see `coordinator.cluster_state.prunable_marker_epochs`
for why that is safe), so ``/recovery`` keeps only the newest complete epoch and
any newer ones instead of growing with every epoch.

A stale copy is never served as current to a client: client I/O reads and
writes only ``obj/``; stale copies are only a source for recovery.
"""
from __future__ import annotations

import logging
from typing import Callable

import gevent
from gevent.event import Event

from common.errors import NoObject, SheepError
from sheep.store.objects import ObjectStore
from sheep.store.objfile import Version

log = logging.getLogger(__name__)


def list_all(store: ObjectStore) -> dict[int, Version]:
    """Live objects plus stale copies (a live copy wins unless a stale one is newer).

    The live objects are listed first: a copy moving to the stale area meanwhile is then
    found in one list or the other (or both), never in neither."""
    out = store.list_objects()
    for oid, version in store.stale.list().items():
        if oid not in out or version > out[oid]:
            out[oid] = version
    return out


def version_any(store: ObjectStore, oid: int) -> Version:
    """The newest version of ``oid`` here, live or stale; NoObject when neither exists
    (live first, for the same reason as `list_all`)."""
    try:
        live = store.version_of(oid)
    except NoObject:
        live = None
    best = store.stale.version_of(oid)
    if live is not None and (best is None or live >= best):
        best = live
    if best is None:
        raise NoObject(f"no copy of object {oid:016x}", oid=oid)
    return best


def versions_any(store: ObjectStore, oids) -> dict[int, Version]:
    """The newest version here, live or stale, of each of ``oids`` that has a copy (one
    listing of the stale area, however many oids)."""
    out = {}
    for oid in oids:                    # live first, for the same reason as `list_all`
        try:
            out[oid] = store.version_of(oid)
        except NoObject:
            pass
    wanted = set(oids)
    for oid, version in store.stale.list().items():
        if oid in wanted and (oid not in out or version > out[oid]):
            out[oid] = version
    return out


def fetch_any(store: ObjectStore, oid: int) -> tuple[Version, bytes]:
    """(version, verified bytes) of the newest copy here, live or stale; NoObject when
    neither exists, Corrupt when the newest fails its checksums."""
    try:
        live = store.read_whole(oid)
    except NoObject:
        live = None
    try:
        stale = store.stale.read(oid)
    except NoObject:
        stale = None
    if live is None and stale is None:
        raise NoObject(f"no copy of object {oid:016x}", oid=oid)
    if live is None or (stale is not None and stale[0] > live[0]):
        return stale
    return live


class StaleJanitor:
    """Moves unplaced copies aside after a pass and purges them once the epoch is done
    everywhere.  ``markers`` is the coordinator (``mark_recovered``, ``recovered``,
    ``prune_recovery_markers``)."""

    def __init__(self, store: ObjectStore, markers, io: Callable) -> None:
        self.store = store
        self.markers = markers
        self._io = io                   # run a blocking store call in the thread pool
        self._waiter: gevent.Greenlet | None = None

    def retire(self, epoch: int, placed_here: Callable[[int], bool],
               current: Callable[[], int]) -> int:
        """Move every live object not placed here at ``epoch`` to ``stale/<epoch>``
        (stops early when ``current()`` moves past ``epoch``)."""
        moved = 0
        for oid in list(self.store.list_objects()):
            if current() != epoch:
                break
            if placed_here(oid):
                continue
            try:
                self._io(self.store.move_to_stale, oid, epoch)
                moved += 1
            except NoObject:
                pass
        if moved:
            log.info("epoch=%d %d copies no longer placed here moved to the stale area",
                     epoch, moved)
        return moved

    def finished(self, epoch: int, members: list[str], current: Callable[[], int]) -> None:
        """This node finished ``epoch``: record it, and purge once all ``members`` have."""
        self.markers.mark_recovered(epoch)
        if self._waiter is not None:
            self._waiter.kill(block=False)
        self._waiter = gevent.spawn(self._purge_when_done, epoch, set(members), current)

    def _purge_when_done(self, epoch: int, members: set[str], current: Callable[[], int]) -> None:
        while current() == epoch:
            changed = Event()
            try:
                done = self.markers.recovered(epoch, watch=lambda _e: changed.set())
            except SheepError as exc:
                log.info("epoch=%d recovery markers unreadable: %s", epoch, exc)
                done = set()
                changed.wait(1.0)
                continue
            if members <= done:
                n = self._io(self.store.stale.purge, epoch)
                log.info("epoch=%d recovered on every member; %d stale dirs purged", epoch, n)
                try:
                    self.markers.prune_recovery_markers(epoch)
                except Exception as exc:   # only housekeeping: the next epoch retries
                    log.info("epoch=%d old recovery markers not deleted: %s", epoch, exc)
                return
            changed.wait(5.0)
