"""Reclaim: remove the objects of deleted VDIs that no live VDI references any more.

Theory of operation
-------------------
Deleting a VDI or a snapshot only marks its catalog entry ``deleted``; then a
pass runs (`Reclaimer.run`):

1. list the catalog; nothing to do without deleted entries;
2. read the object map of every entry (live ones decide what is referenced);
3. list the catalog again: if anything changed (a clone or snapshot appeared,
   another entry was deleted) the listing was not a consistent picture, so
   start over.  The catalog listing reads znodes one by one: without this check
   a pass could see a snapshot already deleted but not the clone made from it
   just before;
4. `vdi.family.plan_reclaim` says which objects of deleted entries no live map
   points at: they are removed from every replica, and the deleted entry's own
   map entries for them are zeroed (so no later pass removes them again);
   a deleted entry with nothing referenced left loses its inode and catalog
   znode, which frees its vid.

A live map that cannot be read (an entry being created) postpones the pass, except
that of a restore's hidden entry (``restoring``, `sheep.volumes.backup`), which counts
as empty: its map is a copy of the map of the working VDI the restore holds the write
right of (live, read in the same pass) plus objects of its own, and such an entry may
stay without an inode until its leftover is discarded, which must not stall reclaim
for the whole cluster.
New references only ever come from copying a live map, so a pass never frees
an object that a VDI created during the pass could point at.

Copy-on-write and trim on a working VDI can drop its last reference to a
deleted snapshot's object; the writers call `kick` (through `shared_before` and `after`,
or `watching`), which
runs one more pass in the background, coalescing kicks that arrive meanwhile.
Passes on one node run one at a time; passes on two nodes may overlap and are
harmless (removes are idempotent).
"""
from __future__ import annotations

import contextlib
import logging

import gevent
from gevent.lock import RLock
from gevent.pool import Pool

from common.errors import NoObject, NotFound, SheepError
from vdi import family, objects
from vdi.inode import entry_offset

log = logging.getLogger(__name__)

ATTEMPTS = 20
REMOVE_CONCURRENCY = 16


class Reclaimer:
    def __init__(self, vdis) -> None:
        self.vdis = vdis
        self._lock = RLock()
        self._pending = False
        self._worker = None

    # -- background ------------------------------------------------------------
    def kick(self) -> None:
        """Run a pass soon, in the background."""
        self._pending = True
        if self._worker is None or self._worker.dead:
            self._worker = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while self._pending:
            self._pending = False
            try:
                self.run()
            except Exception as exc:  # the next delete or kick tries again
                log.warning("reclaim pass failed: %s", exc)

    def shared_before(self, volume, offset: int, length: int) -> list[tuple[int, int]] | None:
        """Before a write/trim on ``volume``: the indexes in the range that point at another
        VDI's object, as (index, owner); None when there are none (the common case: then
        nothing can drop a reference)."""
        osz = volume.object_size
        objmap = volume.objmap
        first, last = offset // osz, (offset + max(length, 1) - 1) // osz
        last = min(last, len(objmap) - 1)
        vid = volume.vid
        shared = None
        for i in range(first, last + 1):
            owner = objmap.get(i)
            if owner and owner != vid:
                if shared is None:
                    shared = []
                shared.append((i, owner))
        return shared

    def after(self, volume, shared: list[tuple[int, int]] | None) -> None:
        """After it: kick a pass if it dropped a reference to another VDI's object
        (copy-on-write or trim of a shared object)."""
        if shared and any(volume.objmap.get(i) != owner for i, owner in shared):
            self.kick()

    @contextlib.contextmanager
    def watching(self, volume, offset: int, length: int):
        """`shared_before` and `after` around a block."""
        shared = self.shared_before(volume, offset, length)
        try:
            yield
        finally:
            self.after(volume, shared)

    # -- one pass --------------------------------------------------------------
    def run(self) -> family.ReclaimPlan:
        """One reclaim pass; returns what it removed."""
        with self._lock:
            for attempt in range(ATTEMPTS):
                plan = self._try_once()
                if plan is not None:
                    return plan
                gevent.sleep(min(0.02 * (attempt + 1), 0.5))
            log.warning("reclaim: catalog kept changing; giving up this pass")
            return family.ReclaimPlan()

    def _try_once(self) -> family.ReclaimPlan | None:
        catalog = self.vdis.catalog
        entries = catalog.list()
        if not any(not family.is_live(e) for e in entries):
            return family.ReclaimPlan()
        maps: dict[int, list[int]] = {}
        for e in entries:
            try:
                maps[e["vid"]] = list(self.vdis.read_map(e).entries())
            except (NotFound, NoObject):
                if family.is_live(e) and not e.get("restoring"):
                    log.info("reclaim: map of live vid=%06x unreadable yet; retrying", e["vid"])
                    return None
                maps[e["vid"]] = []     # a restore's entry: see the module's docstring
        if catalog.list() != entries:
            return None
        plan = family.plan_reclaim(entries, maps)
        if plan:
            self._execute(plan, {e["vid"]: e for e in entries})
        return plan

    def _execute(self, plan: family.ReclaimPlan, by_vid: dict[int, dict]) -> None:
        pool = Pool(REMOVE_CONCURRENCY)
        for vid, idxs in plan.free.items():
            gw = self.vdis.unlocked_writer(vid)     # a deleted vid: nobody holds its lock
            copies = int(by_vid[vid]["copies"])
            jobs = [pool.spawn(gw.remove, objects.data_oid(vid, i), copies) for i in idxs]
            gevent.joinall(jobs, raise_error=True)
            for first, n in family.runs(idxs):
                try:
                    gw.write(objects.inode_oid(vid), entry_offset(first), bytes(4 * n), copies)
                except NoObject:
                    break  # another node's pass dropped the inode already
            log.info("reclaim: vid=%06x freed %d objects", vid, len(idxs))
        for vid in plan.drop:
            self.vdis.unlocked_writer(vid).remove(objects.inode_oid(vid),
                                                  int(by_vid[vid]["copies"]))
            try:
                self.vdis.catalog.delete(vid)
            except NotFound:
                pass
            except SheepError as exc:
                log.warning("reclaim: dropping vid=%06x failed: %s", vid, exc)
                continue
            log.info("reclaim: vid=%06x (%s) forgotten", vid, by_vid[vid].get("name"))
