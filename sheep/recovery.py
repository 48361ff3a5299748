"""Recovery: after every epoch change, hold the newest copy of each object placed here.

Theory of operation
-------------------
Every replica stamps an object with the epoch of its last write, and a write
that missed a replica is resent in a later epoch, so among the copies of an
object the one with the highest epoch is the newest.  On each new epoch a pass
(`run_once`) lists the objects of every member, and for each object that the
new ring places on this node pulls the whole object from a holder of the newest
copy unless the local copy is already that new.  A pass that a newer epoch
overtakes stops and the next pass starts over the listing; objects already
pulled compare equal and cost nothing, so work carries on rather than
restarting from zero.

Until the pass for the current epoch is finished, a request for an object is
preceded by `ensure(oid)`, which recovers that one object out of order (or waits
for the pass that is already pulling it).  A rejoining node with old copies
therefore never serves them as current, and a write never lands on an outdated
or missing copy to create a partial object.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
from gevent.event import Event

from coordinator.ring import Member
from sheep.epoch import EpochState, EpochView
from sheep.errors import NoObject, SheepError
from sheep.replica import Replica, unpack_object_list

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, node_id: str, replica: Replica, call_member: Callable, epochs: EpochState,
                 copies_of: Callable[[int], int], *, max_bytes_per_s: float = 0.0) -> None:
        self.node_id = node_id
        self.replica = replica
        self.store = replica.store
        self._call = call_member          # (Member, header) -> (reply header, payload)
        self.epochs = epochs
        self.copies_of = copies_of
        self.max_bytes_per_s = max_bytes_per_s
        self.done_epoch = 0               # newest epoch whose pass has finished
        self._verified: dict[int, int] = {}   # oid -> epoch it was checked current for
        self._inflight: dict[int, Event] = {}
        self._wakeup = Event()
        self._worker: gevent.Greenlet | None = None
        self.progress = {"epoch": 0, "state": "idle", "total": 0, "done": 0, "pulled": 0,
                         "bytes": 0, "started": 0.0, "finished": 0.0}

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._worker = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.kill(block=True, timeout=2)

    def kick(self) -> None:
        """A new epoch arrived: start (or restart) a pass."""
        self._wakeup.set()

    def _loop(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            view = self.epochs.view
            if view is None or view.epoch <= self.done_epoch:
                continue
            try:
                self.run_once(view)
            except SheepError as exc:
                log.warning("epoch=%d recovery pass failed: %s; retrying", view.epoch, exc)
                gevent.sleep(1)
                self._wakeup.set()
            except Exception:
                log.exception("epoch=%d recovery pass crashed; retrying", view.epoch)
                gevent.sleep(1)
                self._wakeup.set()

    # -- the pass ------------------------------------------------------------------
    def run_once(self, view: EpochView) -> dict:
        """One whole pass for ``view``; returns the progress record."""
        p = self.progress
        p.update(epoch=view.epoch, state="listing", total=0, done=0, pulled=0, bytes=0,
                 started=time.time(), finished=0.0)
        holders = self._collect_lists(view)
        wanted = self._wanted(view, holders)
        p.update(state="recovering", total=len(wanted))
        for oid, (newest, sources) in wanted.items():
            if self.epochs.epoch != view.epoch:
                p["state"] = "interrupted"
                log.info("epoch=%d recovery overtaken by epoch %d", view.epoch, self.epochs.epoch)
                return p
            self._recover(oid, newest, sources, view)
            p["done"] += 1
        self.done_epoch = view.epoch
        self._verified.clear()
        p.update(state="complete", finished=time.time())
        log.info("epoch=%d recovery complete: %d objects checked, %d pulled, %d bytes",
                 view.epoch, p["total"], p["pulled"], p["bytes"])
        return p

    def _collect_lists(self, view: EpochView) -> dict[Member, dict[int, int]]:
        jobs = {m: gevent.spawn(self._call, m, {"op": "list", "epoch": view.epoch})
                for m in view.members}
        gevent.joinall(list(jobs.values()))
        lists = {}
        for m, job in jobs.items():
            if job.exception is not None:
                log.info("epoch=%d recovery: no object list from %s: %s", view.epoch,
                         m.node_id, job.exception)
                continue
            lists[m] = unpack_object_list(job.value[1])
        return lists

    def _wanted(self, view: EpochView, lists: dict[Member, dict[int, int]]):
        """oid -> (newest epoch, members holding it) for objects placed on this node."""
        out: dict[int, tuple[int, list[Member]]] = {}
        newest: dict[int, int] = {}
        for objs in lists.values():
            for oid, epoch in objs.items():
                if epoch > newest.get(oid, -1):
                    newest[oid] = epoch
        for oid, epoch in newest.items():
            placed = view.ring.replicas(oid, self.copies_of(oid))
            if not any(m.node_id == self.node_id for m in placed):
                continue
            sources = [m for m, objs in lists.items() if objs.get(oid) == epoch]
            out[oid] = (epoch, sources)
        return out

    # -- one object ----------------------------------------------------------------
    def _local_epoch(self, oid: int) -> int:
        try:
            return self.store.epoch_of(oid)
        except NoObject:
            return -1

    def _recover(self, oid: int, newest: int, sources: list[Member], view: EpochView) -> None:
        event = self._inflight.get(oid)
        if event is not None:
            event.wait()
            return
        if self._local_epoch(oid) >= newest:
            return
        event = self._inflight[oid] = Event()
        try:
            self._pull(oid, newest, sources)
            self._verified[oid] = view.epoch
        finally:
            del self._inflight[oid]
            event.set()

    def _pull(self, oid: int, newest: int, sources: list[Member]) -> None:
        last: Exception | None = None
        for m in sorted(sources, key=lambda m: m.node_id == self.node_id):
            if m.node_id == self.node_id:
                return
            try:
                header, data = self._call(m, {"op": "fetch", "oid": oid})
            except SheepError as exc:
                last = exc
                continue
            epoch = int(header.get("object_epoch", newest))
            if self._local_epoch(oid) >= epoch:
                return  # a client write overtook us: the local copy is newer
            self.replica._io(self.store.replace, oid, data, epoch)
            self.progress["pulled"] += 1
            self.progress["bytes"] += len(data)
            log.debug("oid=%016x pulled epoch=%d from %s (%d bytes)", oid, epoch, m.node_id,
                      len(data))
            self._throttle(len(data))
            return
        raise last or NoObject(f"no source for object {oid:016x}")

    def _throttle(self, nbytes: int) -> None:
        if self.max_bytes_per_s > 0:
            gevent.sleep(nbytes / self.max_bytes_per_s)

    def ensure(self, oid: int) -> None:
        """Called before serving ``oid``: recover it first if this epoch's pass has not."""
        view = self.epochs.view
        if view is None or self.done_epoch >= view.epoch or self._verified.get(oid) == view.epoch:
            return
        event = self._inflight.get(oid)
        if event is not None:
            event.wait()
            return
        newest, sources = self._probe(oid, view)
        if sources and newest > self._local_epoch(oid):
            self._recover(oid, newest, sources, view)
        self._verified[oid] = view.epoch

    def _probe(self, oid: int, view: EpochView) -> tuple[int, list[Member]]:
        others = [m for m in view.members if m.node_id != self.node_id]
        jobs = {m: gevent.spawn(self._call, m, {"op": "object_epoch", "oid": oid})
                for m in others}
        gevent.joinall(list(jobs.values()))
        epochs = {m: int(j.value[0]["object_epoch"]) for m, j in jobs.items()
                  if j.exception is None}
        if not epochs:
            return -1, []
        newest = max(epochs.values())
        return newest, [m for m, e in epochs.items() if e == newest]
