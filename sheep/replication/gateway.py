"""Replicated object I/O: any sheep can be the gateway for any object.

Theory of operation
-------------------
The placement of an object is the ring of the current epoch.  A mutation (write or
remove) goes to every replica at once (the one on this node by a direct call, the
others over their multiplexed peer connection), stamped with a version: the epoch,
the VDI's lock generation and a sequence number this gateway picks (`next_seq`).
It is acknowledged only when all of them have it.

* A replica answering "old epoch": wait until the newer epoch is known and resend
  the whole mutation to the new placement.  A replica that cannot be reached: wait
  for the next epoch (the leader makes one when ZooKeeper drops the dead node) and
  resend.  So a write in flight when a replica dies completes after the new epoch
  instead of failing; it fails with `Unavailable` only when no new epoch comes
  within the I/O timeout.
* A fan-out that succeeded while the epoch changed under it (it *straddled* the
  change) is sent again at the new epoch, to the new placement.
* Every target answering `NoObject` to a write in place: the object does not exist
  (reported at once, so the volume can allocate it).  Only some: those copies are
  brought back from the others (`resync`) and the write is sent again.
* Some replicas applied a write and another refused it for good (`NoSpace`): the
  copies now differ, so the gateway converges them at once (`resync`) and, when that
  cannot be done either, drops the refusing replica's copy, so that no gateway ever
  reads the old bytes there.  The error goes to the caller.
* Fewer targets than the cluster's ``min_copies`` (``min(min_copies, copies)``):
  writes are refused with `Degraded` instead of being held by too few replicas.

Whole-copy repairs (`resync`) run with new mutations of that object held back here and
those in flight finished (the VDI's writer is this gateway), so they can never undo a
write.  Corrupt blocks found by reads are repaired in the background from a replica
holding their right bytes (`sheep.replication.convergence`).

Reads go to one replica, the local one when it holds a copy, and fall over to the
next replica on failure (also when a copy fails its checksum).  FLUSH is sent to
every member of the epoch: each fsyncs what it wrote since its last flush.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Callable

import gevent
from gevent.event import Event

from common.errors import (Corrupt, Degraded, Fenced, InvalidRequest, NewEpoch, NoObject,
                           NoSpace, NotReady, OldEpoch, OutOfRange, ReadOnly, SheepError,
                           StaleGeneration, Unavailable)
from common.stages import NULL
from coordinator.ring import Member
from sheep.peer.client import PeerPool
from sheep.replication.convergence import Converger
from sheep.replication.epoch import EpochState, EpochView
from sheep.replication.guard import WriteGuard
from sheep.replication.replica import Replica
from sheep.store import objfile
from sheep.store.objfile import Version

log = logging.getLogger(__name__)

# Errors a retry on another epoch cannot fix: give them to the caller at once.
# A remote replica that is fenced is just unavailable; this node being fenced is
# checked before every attempt.
_FINAL = (NoSpace, InvalidRequest, OutOfRange, ReadOnly, StaleGeneration, Degraded)
RESYNC_ATTEMPTS = 3


class Gateway:
    def __init__(self, node_id: str, local: Replica | None, peers: PeerPool, epochs: EpochState,
                 *, guard: WriteGuard | None = None, io_timeout_s: float = 60.0,
                 peer_timeout_s: float = 30.0, min_copies: Callable[[], int] = lambda: 1,
                 timing=NULL) -> None:
        """``local``: this node's replica, called directly; None on a gateway-only node
        (never in a placement: every request goes to a peer).  ``guard``: who says this
        node may write (the replica's by default)."""
        self.node_id = node_id
        self.local = local
        self.guard = guard if guard is not None else local.guard
        self.peers = peers
        self.epochs = epochs
        self.io_timeout_s = io_timeout_s
        self.peer_timeout_s = peer_timeout_s
        self.min_copies = min_copies
        self.converger = Converger(self)
        # one fan-out (sent to every replica, all replied) and one whole FLUSH: labels(op)
        self._t_write, self._t_remove = timing.labels("write"), timing.labels("remove")
        self._t_flush = timing.labels("flush")
        self._seq = itertools.count(time.time_ns() // 1000)
        self._mutating: dict[int, list] = {}       # oid -> [(lo, hi, done)] in flight here
        self._held: dict[int, Event] = {}          # oid -> set when its resync is over
        self._repairing: set[int] = set()

    def next_seq(self) -> int:
        """A sequence number for one mutation: increasing for the life of this process
        (and past it: it starts from the clock)."""
        return next(self._seq)

    # -- helpers -----------------------------------------------------------
    def _view(self, deadline: float) -> EpochView:
        view = self.epochs.view
        if view is None:
            if not self.epochs.wait_for(1, max(0.0, deadline - time.monotonic())):
                raise NotReady("cluster has no epoch yet (not formatted?)")
            view = self.epochs.view
        return view

    def _writable(self, session: int | None, deadline: float) -> None:
        """This node may write now: wait while its session is in doubt, up to the deadline."""
        self.guard.check(session, wait_s=max(0.0, deadline - time.monotonic()))

    def _call(self, member: Member, header: dict, payload=b""):
        return self.peers.call(member.addr, member.port, header, payload, self.peer_timeout_s)

    def _await_newer(self, view: EpochView, deadline: float, why: Exception) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.epochs.wait_newer(view.epoch, remaining):
            raise Unavailable(f"no replica set available at epoch {view.epoch}: {why}")

    def _after_errors(self, view: EpochView, errors: list[Exception], deadline: float) -> None:
        """Decide what to do after a round with failures: raise, or return to retry."""
        for err in errors:
            if isinstance(err, _FINAL):
                raise err
        newest = max((e.data.get("epoch", 0) for e in errors if isinstance(e, OldEpoch)),
                     default=0)
        if newest > view.epoch:
            remaining = max(0.0, deadline - time.monotonic())
            if self.epochs.wait_for(newest, remaining):
                return
        self._await_newer(view, deadline, errors[0])

    def _enter(self, oid: int, lo: int, hi: int) -> tuple:
        """Register a mutation of bytes ``[lo, hi)`` of ``oid``, once no resync of it runs
        and no mutation of an overlapping range is in flight here.  Overlapping writes one
        after the other: two replicas applying them in different orders (the network or the
        write queue may reorder them) would end up with different bytes under one version.
        Mutations of separate ranges of one object still run together."""
        while True:
            held = self._held.get(oid)
            if held is not None:
                held.wait()
                continue
            running = self._mutating.get(oid)
            if running:
                clash = next((r for r in running if r[0] < hi and lo < r[1]), None)
                if clash is not None:
                    clash[2].wait()
                    continue
            mine = (lo, hi, Event())
            self._mutating.setdefault(oid, []).append(mine)
            return mine

    def _leave(self, oid: int, mine: tuple) -> None:
        running = self._mutating[oid]
        running.remove(mine)
        if not running:
            del self._mutating[oid]
        mine[2].set()

    # -- mutations -----------------------------------------------------------
    def write(self, oid: int, offset: int, data, copies: int, create: bool = False, *,
              generation: int = 0, seq: int | None = None, session: int | None = None) -> int:
        """Replicate a write; returns the epoch it completed at.  ``generation``: the VDI's
        lock generation; ``seq``: this mutation's number (`next_seq` when None);
        ``session``: refuse unless this node's ZooKeeper session is still that one."""
        seq = self.next_seq() if seq is None else seq
        header = {"op": "write", "oid": oid, "offset": offset, "create": create,
                  "generation": generation, "seq": seq}
        sums = None
        if not create and objfile.aligned(offset, memoryview(data).nbytes):
            # whole blocks: their sums are computed here once, not again by every replica
            sums = objfile.sums_of(data)
            header["sums"] = sums.tobytes()

        def local(epoch: int) -> None:
            self.local.write(epoch, oid, offset, data, create, generation, seq, sums)
        # a fresh copy replaces the whole object: it overlaps everything
        span = (0, 1 << 62) if create else (offset, offset + memoryview(data).nbytes)
        return self._mutate(oid, copies, header, data, local, session, in_place=not create,
                            write=True, stamp=(generation, seq), span=span, timer=self._t_write)

    def remove(self, oid: int, copies: int, *, generation: int = 0, seq: int | None = None,
               session: int | None = None) -> int:
        seq = self.next_seq() if seq is None else seq
        header = {"op": "remove", "oid": oid, "generation": generation, "seq": seq}

        def local(epoch: int) -> None:
            self.local.remove(epoch, oid, generation, seq)
        return self._mutate(oid, copies, header, b"", local, session, in_place=False,
                            write=False, stamp=(generation, seq), timer=self._t_remove)

    def _mutate(self, oid: int, copies: int, header: dict, payload, local, session: int | None,
                *, in_place: bool, write: bool, stamp: tuple[int, int],
                span: tuple[int, int] = (0, 1 << 62), timer=NULL) -> int:
        deadline = time.monotonic() + self.io_timeout_s
        resyncs = 0
        while True:
            self._writable(session, deadline)
            view = self._view(deadline)
            targets = view.ring.replicas(oid, copies)
            need = min(self.min_copies(), copies)
            if write and len(targets) < need:
                raise Degraded(f"only {len(targets)} of the {need} copies the cluster requires "
                               f"(min_copies) can be written at epoch {view.epoch}: writes are "
                               "refused until more zones are up", epoch=view.epoch)
            mine = self._enter(oid, *span)
            started = time.monotonic()
            try:
                results = self._fan_out(targets, header, payload, local, view.epoch)
            finally:
                self._leave(oid, mine)
                timer.observe(time.monotonic() - started)
            errors = [e for e in results.values() if e is not None]
            if not errors:
                if self.epochs.epoch > view.epoch and time.monotonic() < deadline:
                    log.info("oid=%016x epoch=%d mutation straddled epoch %d: sent again",
                             oid, view.epoch, self.epochs.epoch)
                    continue
                return view.epoch
            applied = [m for m, e in results.items() if e is None]
            refused = [m for m, e in results.items() if _refused_for_good(e)]
            if applied and refused:
                self._diverged(oid, copies, applied, refused, view, stamp)
            _reraise_unexpected(errors)
            missing = [m for m, e in results.items() if isinstance(e, (NoObject, Corrupt))]
            if in_place and missing:
                if len(missing) == len(targets) and all(
                        isinstance(e, NoObject) for e in results.values()):
                    raise NoObject(f"object {oid:016x} does not exist", oid=oid)
                if resyncs < RESYNC_ATTEMPTS and len(missing) < len(targets):
                    resyncs += 1
                    log.warning("oid=%016x epoch=%d missing or corrupt on %s: resync", oid,
                                view.epoch, ",".join(m.node_id for m in missing))
                    self.resync(oid, copies)
                    continue
            log.info("oid=%016x epoch=%d mutation retry: %s", oid, view.epoch, errors[0])
            self._after_errors(view, [e for e in errors if not isinstance(e, NoObject)]
                               or errors, deadline)

    def _diverged(self, oid: int, copies: int, applied: list[Member], refused: list[Member],
                  view: EpochView, stamp: tuple[int, int]) -> None:
        """A write applied by some replicas and refused for good by others: converge, or
        drop the refusing copies so nobody reads their old bytes."""
        log.warning("oid=%016x write applied on %s, refused on %s: converging", oid,
                    ",".join(m.node_id for m in applied), ",".join(m.node_id for m in refused))
        report = self.resync(oid, copies)
        if report["verdict"] == "ok":
            return
        generation, seq = stamp
        for m in refused:
            try:
                if m.node_id == self.node_id:
                    self.local.remove(view.epoch, oid, generation, seq)
                else:
                    self._call(m, {"op": "remove", "epoch": view.epoch, "oid": oid,
                                   "generation": generation, "seq": seq})
                log.warning("oid=%016x dropped the divergent copy on %s", oid, m.node_id)
            except SheepError as exc:
                log.error("oid=%016x divergent copy on %s could not be dropped: %s", oid,
                          m.node_id, exc)

    def _fan_out(self, targets: list[Member], header: dict, payload, local,
                 epoch: int) -> dict[Member, Exception | None]:
        """The mutation to every target at once: the remote requests are sent first (no
        greenlet per replica: their replies are waited for afterwards), then the local
        replica is written inline."""
        results: dict[Member, Exception | None] = {}
        pending = {}
        me = None
        for m in targets:
            if m.node_id == self.node_id:
                me = m
                continue
            try:
                pending[m] = self.peers.start(m.addr, m.port, {**header, "epoch": epoch},
                                              payload)
            except SheepError as exc:
                results[m] = exc
        if me is not None:
            try:
                local(epoch)
                results[me] = None
            except Exception as exc:  # collected like the remote ones
                results[me] = exc
        if pending:
            self.peers.gather(pending.values(), self.peer_timeout_s)
        for m, call in pending.items():
            try:
                call.result(self.peer_timeout_s)
                results[m] = None
            except Exception as exc:
                results[m] = exc
        return results

    def resync(self, oid: int, copies: int) -> dict:
        """Bring every copy of ``oid`` to the good one, whole copies included, with this
        gateway's mutations of it held back meanwhile (the caller is its only writer)."""
        held = self._held.get(oid)
        if held is not None:            # another resync of it runs: wait for that one
            held.wait()
            return self.converger.converge(oid, copies, repair=False)
        held = self._held[oid] = Event()
        try:
            while self._mutating.get(oid):
                gevent.sleep(0.001)
            return self.converger.converge(oid, copies, whole=True)
        finally:
            del self._held[oid]
            held.set()

    # -- reads ---------------------------------------------------------------
    def read(self, oid: int, offset: int, length: int, copies: int) -> bytes:
        deadline = time.monotonic() + self.io_timeout_s
        while True:
            view = self._view(deadline)
            targets = view.ring.replicas(oid, copies)
            targets.sort(key=lambda m: m.node_id != self.node_id)  # local first
            errors: list[Exception] = []
            missing = corrupt = 0
            for m in targets:
                try:
                    if m.node_id == self.node_id:
                        data = self.local.read(view.epoch, oid, offset, length)
                    else:
                        data = self._call(m, {"op": "read", "epoch": view.epoch, "oid": oid,
                                              "offset": offset, "length": length}).payload
                except NoObject as exc:
                    missing += 1
                    errors.append(exc)
                    continue
                except Corrupt as exc:
                    corrupt += 1
                    errors.append(exc)
                    continue
                except SheepError as exc:
                    errors.append(exc)
                    continue
                if corrupt:
                    self.repair_soon(oid, copies)
                return data
            if missing == len(targets):
                raise NoObject(f"object {oid:016x} not found", oid=oid)
            if missing + corrupt == len(targets):
                self.repair_soon(oid, copies)
                raise Corrupt(f"object {oid:016x}: no replica has an intact copy of "
                              f"{offset}+{length}", oid=oid)
            errors = [e for e in errors if not isinstance(e, (NoObject, Corrupt))]
            self._after_errors(view, errors, deadline)

    def repair_soon(self, oid: int, copies: int) -> None:
        """Repair the corrupt blocks of ``oid`` in the background (once at a time)."""
        if oid in self._repairing:
            return
        self._repairing.add(oid)

        def run():
            try:
                self.converger.converge(oid, copies)
            except Exception as exc:
                log.warning("oid=%016x background repair failed: %s", oid, exc)
            finally:
                self._repairing.discard(oid)
        gevent.spawn(run)

    # -- flush ---------------------------------------------------------------
    def flush(self, settle=()) -> None:
        """Every write acknowledged before this call is on stable storage everywhere.
        ``settle``: ``(vid, generation, seq)`` marks for the replicas' activity logs."""
        settle = [list(s) for s in settle]
        started = time.monotonic()
        try:
            self._flush_all(settle, started + self.io_timeout_s)
        finally:
            self._t_flush.observe(time.monotonic() - started)

    def _flush_all(self, settle: list, deadline: float) -> None:
        while True:
            view = self._view(deadline)
            jobs = [gevent.spawn(self._flush_one, m, settle) for m in view.members]
            gevent.joinall(jobs)
            errors = [j.exception for j in jobs if j.exception is not None]
            if not errors:
                return
            _reraise_unexpected(errors)
            self._after_errors(view, errors, deadline)

    def _flush_one(self, m: Member, settle: list) -> None:
        if m.node_id == self.node_id:
            self.local.flush(settle)
        else:
            self._call(m, {"op": "flush", "settle": settle})

    # -- one member ------------------------------------------------------------
    def call_member(self, m: Member, header: dict, payload=b""):
        """One request to one member (local by direct dispatch); returns (header, payload)."""
        if m.node_id == self.node_id and self.local is not None:
            return self.local.handle(header, payload)
        frame = self._call(m, header, payload)   # a gateway asks even itself over the wire
        return frame.header, frame.payload

    def install(self, m: Member, epoch: int, oid: int, data, version: Version, *,
                expect_tick=None) -> bool:
        header = {"op": "install", "epoch": epoch, "oid": oid, "version": version.to_wire(),
                  "expect_tick": expect_tick}
        h, _ = self.call_member(m, header, data)
        return bool(h.get("installed"))

    def repair_blocks(self, m: Member, oid: int, blocks: dict[int, tuple[int, bytes]]) -> int:
        order = sorted(blocks)
        header = {"op": "repair_blocks", "oid": oid, "blocks": order,
                  "sums": [blocks[k][0] for k in order]}
        h, _ = self.call_member(m, header, b"".join(blocks[k][1] for k in order))
        return int(h.get("repaired", 0))

    def broadcast(self, header: dict, what: str,
                  timeout_s: float | None = None) -> dict[Member, tuple]:
        """Send ``header`` to every member of the current epoch until all of them answered
        in one epoch (waiting for the next epoch when one cannot be reached), for at most
        ``timeout_s`` (the I/O timeout by default)."""
        deadline = time.monotonic() + (self.io_timeout_s if timeout_s is None else timeout_s)
        while True:
            view = self._view(deadline)
            jobs = {m: gevent.spawn(self.call_member, m, {**header, "epoch": view.epoch})
                    for m in view.members}
            gevent.joinall(list(jobs.values()))
            errors = [j.exception for j in jobs.values() if j.exception is not None]
            if not errors:
                return {m: j.value for m, j in jobs.items()}
            _reraise_unexpected(errors)
            log.info("%s at epoch %d: %s; retrying", what, view.epoch, errors[0])
            self._after_errors(view, errors, deadline)


_RETRYABLE = (Unavailable, OldEpoch, NewEpoch, Fenced, NotReady, NoObject, Corrupt,
              StaleGeneration)


def _refused_for_good(err) -> bool:
    """A replica refused a mutation others may have applied, and no retry at a new epoch
    will change that (a full disk, an internal error).  Not a superseded generation: a
    stale writer must leave the copies to the new holder."""
    return err is not None and not isinstance(err, _RETRYABLE)


def _reraise_unexpected(errors: list[BaseException]) -> None:
    for err in errors:
        if not isinstance(err, SheepError):
            raise err
