"""Recovery: after every epoch change, hold the newest copy of each object placed here.

Theory of operation
-------------------
Every replica stamps an object with the epoch of its last write, and a write
that missed a replica is resent in a later epoch, so among the copies of an
object the one with the highest epoch is the newest.  On each new epoch a pass
(`run_once`) lists the objects of every member (live and stale copies, see
`sheep.stale`), and for each object that the new ring places on this node pulls
the whole object (raw payload, never msgpack) from a holder of the newest copy
unless the local copy is already that new.  Pulls run a few at a time, paced by
a `Throttle` (objects/s, bytes/s; settable at run time, cluster-wide through
``/cluster``).  Each pull is counted when it starts, so the pool cannot burst
past an objects/s limit; a wait for the throttle wakes up as soon as the limit
changes (or the epoch, or recovery is disabled), so raising the limit takes
effect at once, not after the wait computed under the old one.

Carrying on.  A pass that a newer epoch overtakes stops after the pulls in
flight; the next pass lists again, and everything already pulled compares
equal and costs nothing, so ``total`` of the new pass counts only what is
still missing: work carries on rather than restarting from zero.

When the pass is complete, copies no longer placed here go to the stale area,
the node records its ZooKeeper marker, and the stale area is purged once every
member has finished (`StaleJanitor`).  ``done_epoch`` is kept in the store
directory, so a restart into the same epoch (after ``collie cluster shutdown``)
starts no recovery at all.

Out of order.  Until the pass for the current epoch is finished, a request for
an object is preceded by `ensure(oid)`, which recovers that one object first
(or waits for the pull already in flight).  A rejoining node with old copies
therefore never serves them as current, and a write never lands on an outdated
or missing copy to create a partial object.  Ordering rule: `ensure` marks an
object verified *before* the client's I/O runs, and a pass re-checks that mark
after its fetch and before it installs a copy, so a pull never overwrites a
newer client write.

Stopping.  A pull that would eat into the store's free-space reserve raises
`NoSpace`: the pass stops after the pulls in flight with state ``stopped`` and
an error that says so (``RECOVERY STOPPED: ...``, also in the log), and starts
again on the next epoch or ``collie cluster recover enable`` (any write of
``/cluster`` with recovery enabled retries a stopped pass; it stops again at
once if the space is still missing).  ``collie cluster recover disable`` pauses
passes cluster-wide (``ensure`` still serves clients correctly).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
import msgpack
from gevent.event import Event
from gevent.pool import Pool

from coordinator.ring import Member
from sheep.epoch import EpochState, EpochView
from sheep.errors import NoObject, NoSpace, SheepError, Unavailable
from sheep.replica import Replica, unpack_object_list
from sheep.stale import StaleJanitor, epoch_any, fetch_any, list_all
from sheep.throttle import Limits, RateMeter, Throttle

log = logging.getLogger(__name__)

PARALLEL_PULLS = 4


class Recovery:
    def __init__(self, node_id: str, replica: Replica, call_member: Callable, epochs: EpochState,
                 copies_of: Callable[[int], int], *, janitor: StaleJanitor | None = None,
                 state_store=None, parallel: int = PARALLEL_PULLS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.replica = replica
        self.store = replica.store
        self._call = call_member          # (Member, header) -> (reply header, payload)
        self.epochs = epochs
        self.copies_of = copies_of
        self.janitor = janitor
        self._state_store = state_store   # StoreDir-like get/set, keeps done_epoch
        self._parallel = parallel
        self.throttle = Throttle(clock=clock)
        self.meter = RateMeter(clock=clock)
        self.enabled = True
        self.done_epoch = int(state_store.get("recovered_epoch", 0) or 0) if state_store else 0
        self._verified: dict[int, int] = {}   # oid -> epoch it was checked current for
        self._inflight: dict[int, Event] = {}
        self._wakeup = Event()
        self._pacing = Event()            # set when a throttle wait must look again
        self._worker: gevent.Greenlet | None = None
        self.progress = {"epoch": 0, "state": "idle", "total": 0, "done": 0, "checked": 0,
                         "pulled": 0, "bytes": 0, "started": 0.0, "finished": 0.0,
                         "error": None, "enabled": True}
        replica.extra_ops.update({"list_all": _op_list_all, "fetch_any": _op_fetch_any,
                                  "epoch_any": _op_epoch_any,
                                  "recovery": lambda r, h, p: ({"progress": self.report()}, b"")})

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._worker = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.kill(block=True, timeout=2)

    def kick(self) -> None:
        """A new epoch arrived (or recovery was enabled): start (or restart) a pass."""
        self._wakeup.set()
        self._pacing.set()

    def set_limits(self, limits: Limits) -> None:
        if limits != self.throttle.limits:
            log.info("recovery throttle objects_per_s=%s bytes_per_s=%s",
                     limits.objects_per_s, limits.bytes_per_s)
            self.throttle.set(limits)
            self._pacing.set()

    def set_enabled(self, enabled: bool) -> None:
        if enabled == self.enabled:
            if enabled and self.progress["state"] == "stopped":
                self.kick()   # 'collie cluster recover enable' retries a stopped pass
            return
        self.enabled = enabled
        self.progress["enabled"] = enabled
        log.warning("recovery %s", "enabled" if enabled else "disabled")
        self._pacing.set()
        if enabled:
            self.kick()

    def report(self) -> dict:
        """Progress for ``collie node recovery``: the record plus rates and limits."""
        return {**self.progress, "node_id": self.node_id, **self.meter.rates(),
                "throttle": self.throttle.limits.to_dict()}

    def _loop(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            view = self.epochs.view
            if view is None:
                continue
            if view.epoch <= self.done_epoch:
                if self.progress["state"] == "idle" or self.progress["epoch"] < view.epoch:
                    self.progress.update(epoch=view.epoch, state="complete")
                continue
            if not self.enabled:
                self.progress.update(epoch=view.epoch, state="disabled")
                continue
            try:
                self.run_once(view)
            except NoSpace as exc:
                message = (f"RECOVERY STOPPED: {exc.message} (free space, then 'collie cluster "
                           "recover enable' or a new epoch resumes it)")
                self.progress.update(state="stopped", error=message)
                log.error("epoch=%d %s", view.epoch, message)
            except SheepError as exc:
                self.progress.update(state="retrying", error=exc.message)
                log.warning("epoch=%d recovery pass failed: %s; retrying", view.epoch, exc)
                gevent.sleep(1)
                self._wakeup.set()
            except Exception as exc:
                self.progress.update(state="retrying", error=str(exc))
                log.exception("epoch=%d recovery pass crashed; retrying", view.epoch)
                gevent.sleep(1)
                self._wakeup.set()

    # -- the pass ------------------------------------------------------------------
    def run_once(self, view: EpochView) -> dict:
        """One whole pass for ``view``; returns the progress record."""
        p = self.progress
        p.update(epoch=view.epoch, state="listing", total=0, done=0, checked=0, pulled=0,
                 bytes=0, started=time.time(), finished=0.0, error=None)
        self.meter.reset()
        self.throttle.reset()
        lists = self._collect_lists(view)
        wanted = self._wanted(view, lists)
        p.update(state="recovering", checked=len(wanted), total=len(wanted))
        pool = Pool(self._parallel)
        failures: list[BaseException] = []
        for oid, (newest, sources) in sorted(wanted.items()):
            self._pace(view)
            pool.wait_available()
            if self.epochs.epoch != view.epoch or not self.enabled or failures:
                break
            self.throttle.start()
            pool.spawn(self._background, failures, oid, newest, sources, view)
        pool.join()
        if failures:
            raise failures[0]
        if self.epochs.epoch != view.epoch or not self.enabled:
            p["state"] = "interrupted" if self.enabled else "disabled"
            log.info("epoch=%d recovery %s after %d of %d objects", view.epoch, p["state"],
                     p["done"], p["total"])
            return p
        self._finish(view)
        return p

    def _background(self, failures: list, oid: int, newest: int, sources: list[Member],
                    view: EpochView) -> None:
        """One pull of the pass; a failure stops the pass (kept, not printed by gevent)."""
        try:
            self._recover(oid, newest, sources, view)
        except Exception as exc:
            failures.append(exc)

    def _pace(self, view: EpochView) -> None:
        """Wait until the throttle lets one more pull start (or the pass must stop)."""
        while self.epochs.epoch == view.epoch and self.enabled:
            delay = self.throttle.delay(0)
            if delay <= 0:
                return
            self._pacing.clear()
            self._pacing.wait(min(delay, 1.0))

    def _finish(self, view: EpochView) -> None:
        p = self.progress
        moved = 0
        if self.janitor is not None:
            moved = self.janitor.retire(view.epoch, lambda oid: self._placed_here(view, oid),
                                        lambda: self.epochs.epoch)
        self.done_epoch = view.epoch
        if self._state_store is not None:
            self._state_store.set("recovered_epoch", view.epoch)
        self._verified.clear()
        p.update(state="complete", finished=time.time())
        log.info("epoch=%d recovery complete: %d objects missing or old, %d pulled, %d bytes, "
                 "%d moved to stale", view.epoch, p["total"], p["pulled"], p["bytes"], moved)
        if self.janitor is not None:
            try:
                self.janitor.finished(view.epoch, [m.node_id for m in view.members],
                                      lambda: self.epochs.epoch)
            except SheepError as exc:
                log.warning("epoch=%d recovery marker not recorded: %s", view.epoch, exc)

    def _placed_here(self, view: EpochView, oid: int) -> bool:
        return any(m.node_id == self.node_id
                   for m in view.ring.replicas(oid, self.copies_of(oid)))

    def _collect_lists(self, view: EpochView) -> dict[Member, dict[int, int]]:
        jobs = {m: gevent.spawn(self._call, m, {"op": "list_all", "epoch": view.epoch})
                for m in view.members}
        gevent.joinall(list(jobs.values()))
        missing = [m.node_id for m, job in jobs.items() if job.exception is not None]
        if missing:
            # A member's copies could be the only newest ones: no pass may finish without
            # them.  The loop retries; until then `ensure` keeps serving requests safely.
            raise Unavailable(f"no object list from {', '.join(missing)} at epoch {view.epoch}")
        return {m: unpack_object_list(job.value[1]) for m, job in jobs.items()}

    def _wanted(self, view: EpochView, lists: dict[Member, dict[int, int]]):
        """oid -> (newest epoch, members holding it) for objects placed here and not current."""
        out: dict[int, tuple[int, list[Member]]] = {}
        newest: dict[int, int] = {}
        for objs in lists.values():
            for oid, epoch in objs.items():
                if epoch > newest.get(oid, -1):
                    newest[oid] = epoch
        for oid, epoch in newest.items():
            if not self._placed_here(view, oid) or self._local_epoch(oid) >= epoch:
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

    def _recover(self, oid: int, newest: int, sources: list[Member], view: EpochView,
                 background: bool = True) -> None:
        event = self._inflight.get(oid)
        if event is not None:
            event.wait()
        elif self._local_epoch(oid) < newest and self._verified.get(oid) != view.epoch:
            event = self._inflight[oid] = Event()
            try:
                self._pull(oid, newest, sources, view, background)
            finally:
                del self._inflight[oid]
                event.set()
        if background:
            self.progress["done"] += 1

    def _pull(self, oid: int, newest: int, sources: list[Member], view: EpochView,
              background: bool) -> None:
        last: Exception | None = None
        # this node first (a stale copy of its own costs no network), then the others
        for m in sorted(sources, key=lambda m: m.node_id != self.node_id):
            try:
                if m.node_id == self.node_id:
                    epoch, data = self.replica._io(fetch_any, self.store, oid)
                else:
                    header, data = self._call(m, {"op": "fetch_any", "oid": oid})
                    epoch = int(header.get("object_epoch", newest))
            except SheepError as exc:
                last = exc
                continue
            if self._local_epoch(oid) >= epoch or self._verified.get(oid) == view.epoch:
                return  # a client write overtook us: the local copy is newer
            nbytes = memoryview(data).nbytes
            self.replica._io(self.store.replace, oid, data, epoch)
            self.progress["pulled"] += 1
            self.progress["bytes"] += nbytes
            self.meter.record(nbytes)
            log.debug("oid=%016x pulled epoch=%d from %s (%d bytes)", oid, epoch, m.node_id,
                      nbytes)
            if background:
                self.throttle.moved(nbytes)
            return
        if last is not None:
            raise last
        log.warning("oid=%016x: no live holder of epoch %d; left as is", oid, newest)

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
            self._recover(oid, newest, sources, view, background=False)
        self._verified[oid] = view.epoch

    def _probe(self, oid: int, view: EpochView) -> tuple[int, list[Member]]:
        """(newest epoch, holders of it) among the other members' live and stale copies."""
        others = [m for m in view.members if m.node_id != self.node_id]
        jobs = {m: gevent.spawn(self._call, m, {"op": "epoch_any", "oid": oid})
                for m in others}
        gevent.joinall(list(jobs.values()))
        epochs = {m: int(j.value[0]["object_epoch"]) for m, j in jobs.items()
                  if j.exception is None}
        if not epochs:
            return -1, []
        newest = max(epochs.values())
        return newest, [m for m, e in epochs.items() if e == newest]


# -- peer ops this module adds (Replica.extra_ops) ----------------------------------------

def _op_list_all(r: Replica, _h: dict, _payload):
    objs = r._io(list_all, r.store)
    return {"count": len(objs)}, msgpack.packb(list(objs.items()))


def _op_fetch_any(r: Replica, h: dict, _payload):
    """The newest copy here, live or stale, as raw payload with its last-write epoch."""
    epoch, data = r._io(fetch_any, r.store, h["oid"])
    return {"object_epoch": epoch}, data


def _op_epoch_any(r: Replica, h: dict, _payload):
    return {"object_epoch": r._io(epoch_any, r.store, h["oid"])}, b""
