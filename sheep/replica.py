"""This node's replica service: store operations behind epoch and fencing checks.

Both paths into the local store go through here: requests from other sheep
(`handle`, the peer op table) and the gateway on this node (direct calls, no
loopback TCP).  Disk I/O runs in gevent's thread pool so fsync and page-cache
misses never block the event loop.

Epoch rule (DESIGN §5): a request from an older epoch gets `OldEpoch` with ours;
a request from a newer epoch waits until we have seen it, else `NewEpoch`.
A fenced node (ZooKeeper session lost) refuses every write.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol

import gevent
import msgpack
from gevent.lock import Semaphore

from sheep.epoch import EpochState
from sheep.errors import Fenced, InvalidRequest, NewEpoch, NoObject, OldEpoch
from sheep.store import ObjectStore
from sheep.write_batcher import WriteBatcher

log = logging.getLogger(__name__)


class ObjectRecovery(Protocol):
    def ensure(self, oid: int) -> None:
        """Make an object this node should hold current before it is served."""


class Replica:
    def __init__(self, store: ObjectStore, epochs: EpochState, *,
                 is_fenced: Callable[[], bool], epoch_wait_s: float = 10.0,
                 wait_unfenced: Callable[[float], bool] = lambda _s: False,
                 session_generation: Callable[[], int] = lambda: 0,
                 io_threads: int = 16) -> None:
        self.store = store
        self.epochs = epochs
        self.recovery: ObjectRecovery | None = None
        # Ops other modules add (recovery, check): name -> fn(replica, header, payload).
        self.extra_ops: dict[str, Callable] = {}
        # Why writes are refused besides fencing (cluster waiting/shutdown), or None.
        self.write_block: Callable[[], Exception | None] | None = None
        self._is_fenced = is_fenced
        self._wait_unfenced = wait_unfenced
        self._session_generation = session_generation
        self._epoch_wait_s = epoch_wait_s
        self._flush_lock = Semaphore()
        self._pool = gevent.get_hub().threadpool
        self._writes = WriteBatcher(store.write, self._io)
        self._pool.maxsize = max(self._pool.maxsize, io_threads)

    # -- checks ------------------------------------------------------------
    def check_epoch(self, epoch: int) -> None:
        current = self.epochs.epoch
        if epoch < current:
            raise OldEpoch(f"request epoch {epoch} < {current}", epoch=current)
        if epoch > current and not self.epochs.wait_for(epoch, self._epoch_wait_s):
            raise NewEpoch(f"epoch {epoch} not seen yet (at {self.epochs.epoch})",
                           epoch=self.epochs.epoch)

    def check_writable(self, generation: int | None = None, wait_s: float = 0.0) -> None:
        """Refuse writes while fenced, or once the session ``generation`` is gone.

        With ``wait_s``, a session in doubt (ZooKeeper unreachable, e.g. restarting) is
        waited for rather than refused: if the same session comes back the write goes
        on; if the session was lost, whatever was held under it (the VDI lock of the
        ``generation`` given) is gone and the write is refused.
        """
        if self._is_fenced() and not (wait_s > 0 and self._wait_unfenced(wait_s)):
            raise Fenced("node is fenced: ZooKeeper session lost")
        if generation is not None and self._session_generation() != generation:
            raise Fenced("ZooKeeper session lost since the VDI was attached: its lock is gone")
        if self.write_block is not None:
            refusal = self.write_block()
            if refusal is not None:
                raise refusal

    def _io(self, fn, *args):
        return self._pool.apply(fn, args)

    def _ensure_current(self, oid: int) -> None:
        if self.recovery is not None:
            self.recovery.ensure(oid)

    # -- operations --------------------------------------------------------
    def read(self, epoch: int, oid: int, offset: int, length: int) -> bytes:
        self.check_epoch(epoch)
        self._ensure_current(oid)
        data = self.store.read_cached(oid, offset, length)
        if data is None:
            data = self._io(self.store.read, oid, offset, length)
        return data

    def write(self, epoch: int, oid: int, offset: int, data, create: bool = False) -> None:
        self.check_writable(wait_s=self._epoch_wait_s)
        self.check_epoch(epoch)
        self._ensure_current(oid)
        self._writes.write(oid, offset, data, epoch, create)

    def remove(self, epoch: int, oid: int) -> None:
        self.check_writable(wait_s=self._epoch_wait_s)
        self.check_epoch(epoch)
        try:
            self._io(self.store.remove, oid)
        except NoObject:
            pass

    def flush(self) -> int:
        # One flush at a time: a flush that found nothing dirty must not return
        # while an earlier one is still fsyncing what this caller wrote.
        with self._flush_lock:
            return self._io(self.store.flush)

    def list_objects(self) -> dict[int, int]:
        return self._io(self.store.list_objects)

    def checksum(self, oid: int) -> str:
        return self._io(self.store.checksum, oid)

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


def _op_read(r: Replica, h: dict, _payload):
    return {}, r.read(h["epoch"], h["oid"], h["offset"], h["length"])


def _op_write(r: Replica, h: dict, payload):
    r.write(h["epoch"], h["oid"], h["offset"], payload, bool(h.get("create")))
    return {}, b""


def _op_remove(r: Replica, h: dict, _payload):
    r.remove(h["epoch"], h["oid"])
    return {}, b""


def _op_flush(r: Replica, _h: dict, _payload):
    return {"synced": r.flush()}, b""


def _op_list(r: Replica, _h: dict, _payload):
    objs = r.list_objects()
    return {"count": len(objs)}, msgpack.packb(list(objs.items()))


def _op_checksum(r: Replica, h: dict, _payload):
    return {"checksum": r.checksum(h["oid"]), "epoch": r.store.epoch_of(h["oid"])}, b""


def _op_stat(r: Replica, _h: dict, _payload):
    return {"store": r.stat(), "epoch": r.epochs.epoch, "fenced": bool(r._is_fenced())}, b""


def _op_fetch(r: Replica, h: dict, _payload):
    """The whole object as stored (for recovery), with its last-write epoch."""
    epoch, data = r._io(r.store.read_whole, h["oid"])
    return {"object_epoch": epoch}, data


def _op_object_epoch(r: Replica, h: dict, _payload):
    return {"object_epoch": r.store.epoch_of(h["oid"])}, b""


def _op_ping(r: Replica, _h: dict, _payload):
    return {"epoch": r.epochs.epoch}, b""


_OPS = {
    "read": _op_read, "write": _op_write, "remove": _op_remove, "flush": _op_flush,
    "list": _op_list, "checksum": _op_checksum, "stat": _op_stat, "ping": _op_ping,
    "fetch": _op_fetch, "object_epoch": _op_object_epoch,
}


def unpack_object_list(payload) -> dict[int, int]:
    return {int(oid): int(epoch) for oid, epoch in msgpack.unpackb(payload)}
