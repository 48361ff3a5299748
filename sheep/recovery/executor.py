"""Recovery: after every epoch change, hold the newest copy of each live object placed here.

Theory of operation
-------------------
Every copy carries a `Version` (epoch, lock generation, seq): a write that missed a
replica is resent in a later epoch, so among the copies of an object the highest
version has seen the latest write.  On each new epoch a pass (`run_once`):

1. waits for every member to be at this epoch with every mutation it admitted at an
   older one finished (the barrier, `Replica.recovery_barrier`): afterwards no
   older-epoch write can start anywhere, and every acknowledged one is in place.
   Without every member's answer no pass finishes: a missing member's copy could be
   the only newest one;
2. reads the live objects from the catalog and the inode maps (after the barrier: they
   are the authority, `vdi.family.Liveness`) and, from the rings since the last epoch
   complete everywhere (`sheep.recovery.history`), which of those the new ring places
   here that this node may lack, and which members can hold them; it asks those
   members only, and only about those objects (``versions_any``: their live or stale
   copies, `sheep.recovery.stale`).  When that history is unknown it lists every
   member's objects instead (``list_all``, filtered by the member to what the new ring
   places here), after their barrier;
3. picks those that some member holds in a newer version than this node and keeps
   only the *live* ones.  A copy that no live VDI
   references (trimmed, or its VDI deleted, while its node was away) is never
   pulled or re-replicated, whatever its version.  An object that becomes
   referenced later was written at the newer epoch by its allocation, straight to
   the new placement (`vdi.volume`: the object is written again when its map entry
   lands in a later epoch);
4. pulls each from a holder of the newest copy (raw payload, verified against its
   block checksums; a corrupt source is skipped for the next holder) and installs
   it only if it is still newer than the local copy and than a removal seen here
   meanwhile (tombstones), under the object's lock in the store.

Pulls run a few at a time, paced by a `Throttle` (objects/s, bytes/s; settable at
run time, cluster-wide through ``/cluster``).  When the pass is complete, copies no
longer placed here go to the stale area, then every pulled copy and every move is
made durable (one flush: files and directories) *before* the node records its
ZooKeeper marker: once every member has marked, every node deletes its stale
copies, which may be the last durable ones elsewhere.  The stale area is purged
once every member has finished (`StaleJanitor`).  ``done_epoch`` is kept in the store
directory, so a restart into the same epoch (after ``collie cluster shutdown``) starts
no recovery.

Carrying on.  A pass that a newer epoch overtakes stops after the pulls in flight;
the next pass lists again, and everything already pulled compares equal and costs
nothing: work carries on rather than restarting from zero.

Out of order.  Until the pass for the current epoch is finished, a request for an
object is preceded by `ensure(oid, epoch)` (`sheep.recovery.puller`, which also does
the pass's pulls, one at a time per object).  Ordering rule: an object a client made
current is never overwritten by the pass, and a request waits for a pull of its
object already in flight.

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
import sys
import time
from array import array
from typing import Callable

import gevent
from gevent.event import Event
from gevent.pool import Pool

from common.errors import Corrupt, InvalidRequest, NoSpace, SheepError, Unavailable
from coordinator.ring import Member
from sheep.recovery.history import placed_on
from sheep.recovery.puller import NONE, ObjectPuller
from sheep.recovery.stale import StaleJanitor, fetch_any, list_all, version_any, versions_any
from sheep.recovery.throttle import Limits, RateMeter, Throttle
from sheep.replication.epoch import EpochState, EpochView
from sheep.replication.replica import Replica, pack_object_list, unpack_object_list
from sheep.store.objfile import Version
from vdi import objects

log = logging.getLogger(__name__)

PARALLEL_PULLS = 4
VERSIONS_PER_REQUEST = 16384      # oids per versions_any request (a 128 KiB payload)


class Recovery:
    def __init__(self, node_id: str, replica: Replica, call_member: Callable, epochs: EpochState,
                 catalog: Callable[[bool], object], *, janitor: StaleJanitor | None = None,
                 state_store=None, parallel: int = PARALLEL_PULLS, history=None,
                 clock: Callable[[], float] = time.monotonic, io_timeout_s: float = 60.0) -> None:
        self.node_id = node_id
        self.replica = replica
        self.store = replica.store
        self._call = call_member          # (Member, header) -> (reply header, payload)
        self.epochs = epochs
        self._catalog = catalog           # (with_maps) -> Liveness: copies_of, is_live
        self.janitor = janitor
        self._state_store = state_store   # StoreDir-like get/set, keeps done_epoch
        self._parallel = parallel
        self._history = history           # (EpochView) -> History | None (sheep.recovery.history)
        self._copies: tuple[int, object] | None = None   # (epoch, Liveness without maps)
        self._io_timeout_s = io_timeout_s
        self.throttle = Throttle(clock=clock)
        self.meter = RateMeter(clock=clock)
        self.enabled = True
        self.done_epoch = int(state_store.get("recovered_epoch", 0) or 0) if state_store else 0
        self.puller = ObjectPuller(node_id, replica, call_member, epochs,
                                   lambda: self.done_epoch, self._pulled,
                                   holders=self._holders if history else None,
                                   io_timeout_s=io_timeout_s)
        self._wakeup = Event()
        self._pacing = Event()            # set when a throttle wait must look again
        self._worker: gevent.Greenlet | None = None
        # over every pass, never reset (the Prometheus counters)
        self.objects_done = self.pulled_objects = self.pulled_bytes = 0
        self.list_requests = self.list_bytes = 0
        self.progress = {"epoch": 0, "state": "idle", "total": 0, "done": 0, "checked": 0,
                         "pulled": 0, "bytes": 0, "unreferenced": 0, "started": 0.0,
                         "finished": 0.0, "error": None, "enabled": True, **_NO_ASKING}
        replica.extra_ops.update({"list_all": _op_list_all, "fetch_any": _op_fetch_any,
                                  "version_any": _op_version_any, "barrier": _op_barrier,
                                  "versions_any": _op_versions_any,
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
            if view.member(self.node_id) is None:
                # joined, not yet in an epoch: nothing is placed here, no pass to run
                self.progress.update(epoch=view.epoch, state="idle")
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
                 bytes=0, unreferenced=0, started=time.time(), finished=0.0, error=None,
                 **_NO_ASKING)
        self.meter.reset()
        self.throttle.reset()
        history = self._history(view) if self._history is not None else None
        if history is None:
            p["sources"] = "all"
            copies = self._catalog(False).max_copies()
            lists = self._collect_lists(view, copies)   # after every member's barrier
            catalog = self._catalog(False)
            if catalog.max_copies() > copies:           # a VDI with more copies meanwhile
                lists = self._collect_lists(view, catalog.max_copies())
            candidates = self._wanted(view, lists, catalog)
            live = self._catalog(True) if candidates else catalog
        else:
            p["sources"] = f"rings since epoch {history.complete}"
            self._barrier(view)
            live = self._catalog(True)
            needed = history.needed(live.live_objects(),
                                    have=lambda oid: self.puller.local_version(oid) != NONE)
            lists = self._collect_versions(view, needed, history.returning, live.max_copies())
            candidates = self._wanted(view, lists, live)
        wanted = {}
        for oid, item in candidates.items():
            if live.is_live(oid):
                wanted[oid] = item
            else:
                p["unreferenced"] += 1
        if p["unreferenced"]:
            log.info("epoch=%d %d newer copies are referenced by no live VDI: not pulled",
                     view.epoch, p["unreferenced"])
        p.update(state="recovering", checked=len(candidates), total=len(wanted))
        pool = Pool(self._parallel)
        failures: list[BaseException] = []
        lost: list[int] = []                # every source corrupt: nothing to pull from
        for oid, (newest, sources) in sorted(wanted.items()):
            self._pace(view)
            pool.wait_available()
            if self.epochs.epoch != view.epoch or not self.enabled or failures:
                break
            self.throttle.start()
            pool.spawn(self._background, failures, lost, oid, newest, sources, view)
        pool.join()
        if failures and self.epochs.epoch == view.epoch:
            raise failures[0]
        if lost and self.epochs.epoch == view.epoch and self.enabled:
            # the rest is pulled; this epoch stays unfinished (no marker: every stale copy
            # is kept) until an operator repairs the objects or a new epoch comes
            message = (f"RECOVERY INCOMPLETE: {len(lost)} object(s) have no intact copy on "
                       f"any member ({', '.join(f'{o:016x}' for o in sorted(lost)[:5])}"
                       f"{' ...' if len(lost) > 5 else ''}); see 'collie cluster check'")
            p.update(state="stopped", error=message)
            log.error("epoch=%d %s", view.epoch, message)
            return p
        if self.epochs.epoch != view.epoch or not self.enabled:
            p["state"] = "interrupted" if self.enabled else "disabled"
            log.info("epoch=%d recovery %s after %d of %d objects", view.epoch, p["state"],
                     p["done"], p["total"])
            return p
        self._finish(view, live)
        return p

    def _background(self, failures: list, lost: list, oid: int, newest: Version,
                    sources: list[Member], view: EpochView) -> None:
        """One pull of the pass; a failure stops the pass (kept, not printed by gevent),
        except an object whose every source is corrupt: the others go on."""
        try:
            self.throttle.moved(self.puller.recover(oid, newest, sources, view))
        except Corrupt:
            lost.append(oid)
        except Exception as exc:
            failures.append(exc)
        finally:
            self.progress["done"] += 1
            self.objects_done += 1

    def _pulled(self, nbytes: int) -> None:
        self.progress["pulled"] += 1
        self.progress["bytes"] += nbytes
        self.pulled_objects += 1
        self.pulled_bytes += nbytes
        self.meter.record(nbytes)

    # -- what a replica calls before serving an object ---------------------------------
    def ensure(self, oid: int, epoch: int) -> None:
        self.puller.ensure(oid, epoch)

    def created(self, oid: int, epoch: int) -> None:
        self.puller.created(oid, epoch)

    def _pace(self, view: EpochView) -> None:
        """Wait until the throttle lets one more pull start (or the pass must stop)."""
        while self.epochs.epoch == view.epoch and self.enabled:
            delay = self.throttle.delay(0)
            if delay <= 0:
                return
            self._pacing.clear()
            self._pacing.wait(min(delay, 1.0))

    def _finish(self, view: EpochView, catalog) -> None:
        p = self.progress
        moved = 0
        if self.janitor is not None:
            moved = self.janitor.retire(view.epoch,
                                        lambda oid: self._placed_here(view, oid, catalog),
                                        lambda: self.epochs.epoch)
        # what was pulled (and moved aside) is durable before the marker lets anyone
        # delete the copies it came from
        self.replica._io(self.store.flush)
        if self.epochs.epoch != view.epoch:
            p["state"] = "interrupted"
            return
        self.done_epoch = view.epoch
        if self._state_store is not None:
            self.replica._io(self._state_store.set, "recovered_epoch", view.epoch)
        self.puller.forget()
        self.replica._io(self.store.drop_tombstones, view.epoch - 1)
        p.update(state="complete", finished=time.time())
        log.info("epoch=%d recovery complete: %d objects missing or old, %d pulled, %d bytes, "
                 "%d unreferenced left alone, %d moved to stale", view.epoch, p["total"],
                 p["pulled"], p["bytes"], p["unreferenced"], moved)
        if self.janitor is not None:
            try:
                self.janitor.finished(view.epoch, [m.node_id for m in view.members],
                                      lambda: self.epochs.epoch)
            except SheepError as exc:
                log.warning("epoch=%d recovery marker not recorded: %s", view.epoch, exc)

    def _placed_here(self, view: EpochView, oid: int, catalog) -> bool:
        return any(m.node_id == self.node_id
                   for m in view.ring.replicas(oid, catalog.copies_of(oid)))

    def _ask(self, view: EpochView, requests: list, what: str) -> list:
        """Send every (member, header, payload) request at once; [(member, (header,
        payload))], Unavailable unless every one was answered."""
        jobs = [(m, gevent.spawn(self._call, m, {**h, "epoch": view.epoch}, payload))
                for m, h, payload in requests]
        gevent.joinall([job for _m, job in jobs])
        missing = sorted({f"{m.node_id} ({job.exception})" for m, job in jobs
                          if job.exception is not None})
        if missing:
            # A member's copies could be the only newest ones: no pass may finish without
            # them.  The loop retries; until then `ensure` keeps serving requests safely.
            raise Unavailable(f"no {what} from {', '.join(missing)} at epoch {view.epoch}")
        return [(m, job.value) for m, job in jobs]

    def _barrier(self, view: EpochView) -> None:
        self._ask(view, [(m, {"op": "barrier"}, b"") for m in view.members], "barrier")
        self.progress["barriers"] = len(view.members)

    def _collect_lists(self, view: EpochView, copies: int) -> dict[Member, dict[int, Version]]:
        """Every member's objects that the ring places here with ``copies`` (the most any
        VDI has: a superset of what it places here with fewer), after its barrier."""
        header = {"op": "list_all", "for": self.node_id, "copies": copies}
        return self._lists(self._ask(view, [(m, header, b"") for m in view.members],
                                     "object list"))

    def _collect_versions(self, view: EpochView, needed: dict[int, list[Member]],
                          returning, copies: int):
        """member -> {oid: version}: from each holder, the copies it has of the objects
        asked about (in requests of at most ``VERSIONS_PER_REQUEST`` oids, a payload of
        little-endian u64s); from each returning member, everything it has that the ring
        places here (``list_all``, filtered by the member with ``copies``)."""
        asked: dict[Member, list[int]] = {}
        for oid, holders in needed.items():
            for m in holders:
                asked.setdefault(m, []).append(oid)
        requests = [(m, {"op": "list_all", "for": self.node_id, "copies": copies}, b"")
                    for m in returning]
        for m, oids in asked.items():
            for i in range(0, len(oids), VERSIONS_PER_REQUEST):
                chunk = array("Q", oids[i:i + VERSIONS_PER_REQUEST])
                if sys.byteorder != "little":
                    chunk.byteswap()
                requests.append((m, {"op": "versions_any"}, chunk.tobytes()))
        return self._lists(self._ask(view, requests, "object versions"))

    def _lists(self, replies: list) -> dict[Member, dict[int, Version]]:
        """member -> {oid: newest version it answered}, counted in the progress record."""
        p = self.progress
        p["asked"] += len({m for m, _reply in replies})
        self.list_requests += len(replies)
        lists: dict[Member, dict[int, Version]] = {}
        for m, (_h, payload) in replies:
            nbytes = memoryview(payload).nbytes
            objs = unpack_object_list(payload)
            p["listed"] += len(objs)
            p["listed_bytes"] += nbytes
            self.list_bytes += nbytes
            mine = lists.setdefault(m, {})
            for oid, version in objs.items():
                if version > mine.get(oid, NONE):
                    mine[oid] = version
        return lists

    def _wanted(self, view: EpochView, lists: dict[Member, dict[int, Version]], catalog):
        """oid -> (newest version, members holding it) for objects placed here that some
        member holds newer than this node does."""
        out: dict[int, tuple[Version, list[Member]]] = {}
        newest: dict[int, Version] = {}
        for objs in lists.values():
            for oid, version in objs.items():
                if version > newest.get(oid, NONE):
                    newest[oid] = version
        for oid, version in newest.items():
            if not self._placed_here(view, oid, catalog) or \
                    self.puller.local_version(oid) >= version:
                continue
            sources = [m for m, objs in lists.items() if objs.get(oid) == version]
            out[oid] = (version, sources)
        return out

    # -- who to ask about one object (ObjectPuller.ensure) ------------------------------
    def _holders(self, oid: int, view: EpochView) -> list[Member] | None:
        """The members that can hold the newest copy of ``oid`` ([] when this node's copy
        is current by continuity), or None when only asking everyone can tell."""
        history = self._history(view)
        if history is None:
            return None
        if self._copies is None or self._copies[0] != view.epoch:
            self._copies = (view.epoch, self._catalog(False))
        catalog = self._copies[1]
        if objects.oid_vid(oid) not in catalog.entries:
            return None                 # a VDI newer than the cached catalog
        copies = catalog.copies_of(oid)
        if history.continuous(oid, copies) and self.puller.local_version(oid) != NONE:
            return list(history.returning)
        return history.holders(oid, copies)

# -- peer ops this module adds (Replica.extra_ops); each waits for the barrier ---------

_NO_ASKING = {"sources": None, "barriers": 0, "asked": 0, "listed": 0, "listed_bytes": 0}


def _op_barrier(r: Replica, h: dict, _payload):
    """Answers once this member is at the epoch with every older-epoch mutation finished."""
    r.recovery_barrier(int(h["epoch"]))
    return {}, b""


def _op_list_all(r: Replica, h: dict, _payload):
    """Live and stale copies here; with ``for`` and ``copies``, only those the ring of
    this epoch places on that node (the whole list when this member is past the epoch)."""
    epoch = int(h["epoch"])
    r.recovery_barrier(epoch)
    objs = r._io(list_all, r.store)
    view = r.epochs.view
    if h.get("for") and view is not None and view.epoch == epoch:
        objs = {oid: v for oid, v in objs.items()
                if placed_on(view, h["for"], oid, int(h["copies"]))}
    return {"count": len(objs)}, pack_object_list(objs)


def _op_versions_any(r: Replica, h: dict, payload):
    """The newest version here, live or stale, of each oid of the payload (little-endian
    u64s) that has a copy."""
    r.recovery_barrier(int(h["epoch"]))
    if memoryview(payload).nbytes % 8:
        raise InvalidRequest("versions_any payload is not a whole number of oids")
    oids = array("Q", bytes(payload))
    if sys.byteorder != "little":
        oids.byteswap()
    objs = r._io(versions_any, r.store, list(oids))
    return {"count": len(objs)}, pack_object_list(objs)


def _op_fetch_any(r: Replica, h: dict, _payload):
    """The newest copy here, live or stale, as raw verified payload with its version."""
    r.recovery_barrier(int(h["epoch"]))
    version, data = r._io(fetch_any, r.store, h["oid"])
    return {"version": version.to_wire()}, data


def _op_version_any(r: Replica, h: dict, _payload):
    r.recovery_barrier(int(h["epoch"]))
    return {"version": r._io(version_any, r.store, h["oid"]).to_wire()}, b""
