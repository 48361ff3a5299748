"""This node's replica service: store operations behind epoch, fencing and generation checks.

Both paths into the local store go through here: requests from other sheep
(`handle`, the peer op table) and the gateway on this node (direct calls, no
loopback TCP).  Disk I/O runs in gevent's thread pool so fsync and page-cache
misses never block the event loop.

Rules, in the order a mutation meets them:

* fencing: a node whose ZooKeeper session is lost refuses every write;
* epochs (DESIGN §5): a request from an older epoch gets `OldEpoch` with ours; one
  from a newer epoch waits until we have seen it, else `NewEpoch`;
* the barrier: a mutation is counted in flight under its epoch (`InFlight`) until it
  finishes; recovery requests for epoch ``e`` are answered only once nothing older
  than ``e`` is in flight here;
* generations: a mutation of a VDI's object from an older lock generation than this
  replica has seen is refused (`StaleGeneration`, `sheep.replication.generations`);
* currency: before an object is read or written in place, recovery makes sure this
  copy is the newest one (`ObjectRecovery.ensure`); a first write (``create``)
  builds a fresh copy and needs nothing older.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

import gevent
import msgpack
from gevent.lock import Semaphore

from common.stages import NULL
from common.errors import InvalidRequest, NewEpoch, NoObject, OldEpoch, Unavailable
from sheep.replication.activity import ActivityLog
from sheep.replication.epoch import EpochState, InFlight
from sheep.replication.generations import GenerationTable
from sheep.replication.guard import WriteGuard
from sheep.store import objfile
from sheep.store.objects import ANY_TICK, ObjectStore
from sheep.store.objfile import BLOCK, Version
from sheep.store.write_batcher import WriteBatcher
from vdi.objects import oid_vid

log = logging.getLogger(__name__)

DRAIN_WAIT_S = 30.0
INLINE_STALL_S = 0.02       # slower than a scheduler hiccup: writeback is throttling writes
INLINE_BACKOFF_S = 2.0      # then writes go through the thread pool for a while
_now = time.monotonic


class ObjectRecovery(Protocol):
    def ensure(self, oid: int, epoch: int) -> None:
        """Make this node's copy of ``oid`` current for ``epoch`` before it is served."""

    def created(self, oid: int, epoch: int) -> None:
        """A fresh copy of ``oid`` was made at ``epoch``: nothing older may replace it."""


class Replica:
    def __init__(self, store: ObjectStore, epochs: EpochState, *,
                 is_fenced: Callable[[], bool], epoch_wait_s: float = 10.0,
                 wait_unfenced: Callable[[float], bool] = lambda _s: False,
                 session_generation: Callable[[], int] = lambda: 0,
                 generation_of: Callable[[int], int] = lambda _vid: 0,
                 io_threads: int = 16, timing=NULL) -> None:
        self.store = store
        self.epochs = epochs
        self.recovery: ObjectRecovery | None = None
        # Ops other modules add (recovery): name -> fn(replica, header, payload).
        self.extra_ops: dict[str, Callable] = {}
        # Called (in a greenlet) once the store has failed for good (a failed fsync).
        self.on_store_failed: Callable[[str], None] | None = None
        self.generations = GenerationTable(generation_of)
        self.activity = ActivityLog()
        self.inflight = InFlight()
        self.guard = WriteGuard(is_fenced, wait_unfenced=wait_unfenced,
                                session_generation=session_generation)
        self._is_fenced = is_fenced
        self._epoch_wait_s = epoch_wait_s
        self._flush_lock = Semaphore()
        self._pool = gevent.get_hub().threadpool
        self._writes = WriteBatcher(store.write, self._io)
        self._pool.maxsize = max(self._pool.maxsize, io_threads)
        self._failure_reported = False
        self._inline_off_until = 0.0
        self.inline_stalls = 0
        # the store's part of a write (labels: inline, pool) and a flush's fsyncs
        self._t_inline, self._t_pool = timing.labels("inline"), timing.labels("pool")
        self._t_flush = timing.labels("flush")

    # -- checks ------------------------------------------------------------
    def check_epoch(self, epoch: int) -> None:
        current = self.epochs.epoch
        if epoch < current:
            raise OldEpoch(f"request epoch {epoch} < {current}", epoch=current)
        if epoch > current and not self.epochs.wait_for(epoch, self._epoch_wait_s):
            raise NewEpoch(f"epoch {epoch} not seen yet (at {self.epochs.epoch})",
                           epoch=self.epochs.epoch)

    def check_writable(self, generation: int | None = None, wait_s: float = 0.0) -> None:
        """Refuse writes while fenced, or once the session ``generation`` is gone
        (`WriteGuard.check`)."""
        self.guard.check(generation, wait_s)

    @property
    def write_block(self) -> Callable[[], Exception | None] | None:
        return self.guard.write_block

    @write_block.setter
    def write_block(self, fn: Callable[[], Exception | None] | None) -> None:
        self.guard.write_block = fn

    def recovery_barrier(self, epoch: int) -> None:
        """Before answering recovery for ``epoch``: be at it, with older mutations done."""
        self.check_epoch(epoch)
        if not self.inflight.wait_older_done(epoch, DRAIN_WAIT_S):
            raise Unavailable(f"mutations of epochs before {epoch} still in flight after "
                              f"{DRAIN_WAIT_S:.0f}s")

    def _io(self, fn, *args):
        try:
            return self._pool.apply(fn, args)
        except Unavailable:
            if self.store.failed is not None:
                self._report_failure()
            raise

    def _report_failure(self) -> None:
        if not self._failure_reported and self.on_store_failed is not None:
            self._failure_reported = True
            gevent.spawn(self.on_store_failed, self.store.failed)

    def _ensure_current(self, oid: int, epoch: int) -> None:
        if self.recovery is not None:
            self.recovery.ensure(oid, epoch)

    # -- operations --------------------------------------------------------
    def read(self, epoch: int, oid: int, offset: int, length: int):
        self.check_epoch(epoch)
        self._ensure_current(oid, epoch)
        data = self.store.read_cached(oid, offset, length)
        if data is None:
            data = self._io(self.store.read, oid, offset, length)
        return data

    def write(self, epoch: int, oid: int, offset: int, data, create: bool = False,
              generation: int = 0, seq: int = 0, sums=None) -> None:
        """Apply one mutation stamped ``(epoch, generation, seq)``; ``sums``: the block sums
        of a block-aligned write, computed once by its gateway for every replica."""
        self.check_writable(wait_s=self._epoch_wait_s)
        self.check_epoch(epoch)
        vid = oid_vid(oid)
        generations = self.generations
        self.inflight.enter(epoch)
        try:
            generations.admit(vid, generation)
            generations.enter(vid, generation)
            try:
                if create:
                    if self.recovery is not None:
                        self.recovery.created(oid, epoch)
                else:
                    self._ensure_current(oid, epoch)
                self.activity.record(vid, oid, generation, seq)
                version = Version(epoch, generation, seq)
                generations.still_current(vid, generation)
                started = _now()
                if not create and self._write_inline(oid, offset, data, version, sums):
                    self._t_inline.observe(_now() - started)
                else:
                    self._writes.write(oid, offset, data, version, create, sums)
                    self._t_pool.observe(_now() - started)
            finally:
                generations.leave(vid, generation)
        except Unavailable:
            if self.store.failed is not None:
                self._report_failure()
            raise
        finally:
            self.inflight.leave(epoch)

    def _write_inline(self, oid: int, offset: int, data, version: Version, sums) -> bool:
        """A buffered write on the event loop (no pool trip) unless one recently stalled."""
        if self._inline_off_until > _now():
            return False
        started = _now()
        done = self.store.write_cached(oid, offset, data, version, sums)
        took = _now() - started
        if took > INLINE_STALL_S:
            # writeback is throttling buffered writes: the loop must not wait on them
            self._inline_off_until = _now() + INLINE_BACKOFF_S
            self.inline_stalls += 1
            log.warning("a buffered write took %.1f ms on the event loop: writes go through "
                        "the thread pool for %.0f s", took * 1e3, INLINE_BACKOFF_S)
        return done

    def remove(self, epoch: int, oid: int, generation: int = 0, seq: int = 0) -> None:
        self.check_writable(wait_s=self._epoch_wait_s)
        self.check_epoch(epoch)
        vid = oid_vid(oid)
        with self.inflight.mutation(epoch):
            self.generations.admit(vid, generation)
            self.generations.enter(vid, generation)
            try:
                self.activity.record(vid, oid, generation, seq)
                try:
                    self._io(self.store.remove, oid, Version(epoch, generation, seq))
                except NoObject:
                    pass
            finally:
                self.generations.leave(vid, generation)

    def install(self, epoch: int, oid: int, data, version: Version, *,
                expect_tick=ANY_TICK, only_if_newer: bool = False) -> bool:
        """Install a whole copy (repair, resync) under the epoch barrier; True if installed."""
        self.check_writable()
        self.check_epoch(epoch)
        with self.inflight.mutation(epoch):
            return self._io(lambda: self.store.install(oid, data, version,
                                                       expect_tick=expect_tick,
                                                       only_if_newer=only_if_newer))

    def flush(self, settle=()) -> int:
        """fsync what this node wrote; ``settle``: (vid, generation, seq) marks of mutations
        known complete everywhere (`sheep.replication.activity`)."""
        for vid, generation, seq in settle:
            self.activity.settle(int(vid), int(generation), int(seq))
        # One flush at a time: a flush that found nothing dirty must not return
        # while an earlier one is still fsyncing what this caller wrote.
        with self._flush_lock:
            started = _now()
            try:
                return self._io(self.store.flush)
            finally:
                self._t_flush.observe(_now() - started)

    def list_objects(self) -> dict[int, Version]:
        return self._io(self.store.list_objects)

    def info(self, oid: int, verify: bool = True) -> dict:
        return self._io(self.store.info, oid, verify)

    def stat(self) -> dict:
        return self._io(self.store.usage)

    # -- peer op table -----------------------------------------------------
    def handle(self, header: dict, payload) -> tuple[dict, bytes]:
        op = header.get("op")
        fn = _OPS.get(op) or self.extra_ops.get(op)
        if fn is None:
            raise InvalidRequest(f"unknown op {op!r}")
        try:
            return fn(self, header, payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequest(f"bad {op} request: {exc}") from None


def info_to_wire(info: dict) -> dict:
    return {**info, "version": info["version"].to_wire()}


def info_from_wire(header: dict) -> dict:
    return {"version": Version.from_wire(header["version"]), "tick": int(header["tick"]),
            "length": int(header["length"]), "digest": header["digest"],
            "bad_blocks": list(header.get("bad_blocks") or []),
            "sums": bytes(header.get("sums") or b"")}


def _op_read(r: Replica, h: dict, _payload):
    return {}, r.read(h["epoch"], h["oid"], h["offset"], h["length"])


def _op_write(r: Replica, h: dict, payload):
    sums = objfile.sums_from_wire(h.get("sums"), memoryview(payload).nbytes)
    r.write(h["epoch"], h["oid"], h["offset"], payload, bool(h.get("create")),
            int(h.get("generation", 0)), int(h.get("seq", 0)), sums)
    return {}, b""


def _op_remove(r: Replica, h: dict, _payload):
    r.remove(h["epoch"], h["oid"], int(h.get("generation", 0)), int(h.get("seq", 0)))
    return {}, b""


def _op_flush(r: Replica, h: dict, _payload):
    return {"synced": r.flush(h.get("settle") or ())}, b""


def _op_install(r: Replica, h: dict, payload):
    tick = h.get("expect_tick", ANY_TICK)
    done = r.install(h["epoch"], h["oid"], payload, Version.from_wire(h["version"]),
                     expect_tick=tick, only_if_newer=bool(h.get("only_if_newer")))
    return {"installed": done}, b""


def _op_info(r: Replica, h: dict, _payload):
    return info_to_wire(r.info(h["oid"], bool(h.get("verify", True)))), b""


def _op_fetch(r: Replica, h: dict, _payload):
    """The whole verified copy (repair, resync) with its version."""
    version, data = r._io(r.store.read_whole, h["oid"])
    return {"version": version.to_wire()}, data


def _op_read_blocks(r: Replica, h: dict, _payload):
    """Whole verified 4 KiB blocks (a repair donor), with their sums."""
    blocks = [int(k) for k in h["blocks"]]
    got = r._io(r.store.read_blocks, h["oid"], blocks)
    return ({"blocks": blocks, "sums": [objfile.block_sum(got[k]) for k in blocks]},
            b"".join(got[k] for k in blocks))


def _op_repair_blocks(r: Replica, h: dict, payload):
    view = memoryview(payload)
    blocks = {int(k): (int(expected), bytes(view[i * BLOCK:(i + 1) * BLOCK]))
              for i, (k, expected) in enumerate(zip(h["blocks"], h["sums"]))}
    return {"repaired": r._io(r.store.repair_blocks, h["oid"], blocks)}, b""


def _op_fence(r: Replica, h: dict, _payload):
    r.generations.raise_to(int(h["vid"]), int(h["generation"]))
    return {}, b""


def _op_activity(r: Replica, h: dict, _payload):
    return {"oids": r.activity.unsettled(int(h["vid"]))}, b""


def _op_settle(r: Replica, h: dict, _payload):
    return {"settled": r.activity.settle(int(h["vid"]), int(h["generation"]),
                                         int(h["seq"]))}, b""


def _op_list(r: Replica, _h: dict, _payload):
    return {"count": len(objs := r.list_objects())}, pack_object_list(objs)


def _op_stat(r: Replica, _h: dict, _payload):
    return {"store": r.stat(), "epoch": r.epochs.epoch, "fenced": bool(r._is_fenced())}, b""


def _op_ping(r: Replica, _h: dict, _payload):
    return {"epoch": r.epochs.epoch}, b""


_OPS = {
    "read": _op_read, "write": _op_write, "remove": _op_remove, "flush": _op_flush,
    "install": _op_install, "info": _op_info, "fetch": _op_fetch, "fence": _op_fence,
    "activity": _op_activity, "settle": _op_settle, "list": _op_list, "stat": _op_stat,
    "read_blocks": _op_read_blocks, "repair_blocks": _op_repair_blocks,
    "ping": _op_ping,
}


def pack_object_list(objs: dict[int, Version]) -> bytes:
    return msgpack.packb([(oid, *v) for oid, v in objs.items()])


def unpack_object_list(payload) -> dict[int, Version]:
    return {int(oid): Version(int(e), int(g), int(s)) for oid, e, g, s in msgpack.unpackb(payload)}
