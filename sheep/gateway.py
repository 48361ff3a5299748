"""Replicated object I/O: any sheep can be the gateway for any object.

Theory of operation
-------------------
The placement of an object is the ring of the current epoch.  A write goes to
every replica at once (the one on this node by a direct call, the others over
their multiplexed peer connection) and is acknowledged only when all of them
have it.  When a replica answers "old epoch" the gateway waits until it knows
the newer epoch and resends the whole write to the new placement; when a
replica cannot be reached the gateway waits for the next epoch (the leader
makes one when ZooKeeper drops the dead node) and resends.  So a write in
flight when a replica dies completes after the new epoch instead of failing;
it fails with `Unavailable` only when no new epoch comes within the I/O timeout.

Reads go to one replica, the local one when it holds a copy, and fall over to
the next replica on failure.  FLUSH is sent to every member of the epoch: each
fsyncs what it wrote since its last flush.
"""
from __future__ import annotations

import logging
import time

import gevent

from coordinator.ring import Member
from sheep.epoch import EpochState, EpochView
from sheep.errors import (InvalidRequest, NoObject, NoSpace, NotReady,
                          OldEpoch, OutOfRange, ReadOnly, SheepError, Unavailable)
from sheep.peer import PeerPool
from sheep.replica import Replica

log = logging.getLogger(__name__)

# Errors a retry on another epoch cannot fix: give them to the caller at once.
# A remote replica that is fenced is just unavailable; this node being fenced is
# checked before every attempt.
_FINAL = (NoSpace, InvalidRequest, OutOfRange, ReadOnly)


class Gateway:
    def __init__(self, node_id: str, local: Replica, peers: PeerPool, epochs: EpochState, *,
                 io_timeout_s: float = 60.0, peer_timeout_s: float = 30.0) -> None:
        self.node_id = node_id
        self.local = local
        self.peers = peers
        self.epochs = epochs
        self.io_timeout_s = io_timeout_s
        self.peer_timeout_s = peer_timeout_s

    # -- helpers -----------------------------------------------------------
    def _view(self, deadline: float) -> EpochView:
        view = self.epochs.view
        if view is None:
            if not self.epochs.wait_for(1, max(0.0, deadline - time.monotonic())):
                raise NotReady("cluster has no epoch yet (not formatted?)")
            view = self.epochs.view
        return view

    def _writable(self, generation: int | None, deadline: float) -> None:
        """This node may write now: wait while its session is in doubt, up to the deadline."""
        self.local.check_writable(generation, wait_s=max(0.0, deadline - time.monotonic()))

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

    # -- I/O ---------------------------------------------------------------
    def write(self, oid: int, offset: int, data, copies: int, create: bool = False,
              generation: int | None = None) -> None:
        """Replicate a write; ``generation``: refuse it unless the ZooKeeper session is still
        the one of that generation (the one an attached VDI's lock was taken under)."""
        deadline = time.monotonic() + self.io_timeout_s
        while True:
            self._writable(generation, deadline)
            view = self._view(deadline)
            targets = view.ring.replicas(oid, copies)
            errors = self._fan_out(targets, self._write_one, view.epoch, oid, offset, data,
                                   create)
            if not errors:
                return
            _reraise_unexpected(errors)
            log.info("oid=%016x epoch=%d write retry: %s", oid, view.epoch, errors[0])
            self._after_errors(view, errors, deadline)

    def _fan_out(self, targets: list[Member], fn, *args) -> list[BaseException]:
        """Run ``fn(member, *args)`` for every target at once; the local one inline."""
        local = None
        jobs = []
        for m in targets:
            if m.node_id == self.node_id:
                local = m
            else:
                jobs.append(gevent.spawn(fn, m, *args))
        errors = []
        if local is not None:
            try:
                fn(local, *args)
            except Exception as exc:  # collected like the remote ones
                errors.append(exc)
        if jobs:
            gevent.joinall(jobs)
            errors.extend(j.exception for j in jobs if j.exception is not None)
        return errors

    def _write_one(self, m: Member, epoch: int, oid: int, offset: int, data, create: bool):
        if m.node_id == self.node_id:
            return self.local.write(epoch, oid, offset, data, create)
        self._call(m, {"op": "write", "epoch": epoch, "oid": oid, "offset": offset,
                       "create": create}, data)

    def read(self, oid: int, offset: int, length: int, copies: int) -> bytes:
        deadline = time.monotonic() + self.io_timeout_s
        while True:
            view = self._view(deadline)
            targets = view.ring.replicas(oid, copies)
            targets.sort(key=lambda m: m.node_id != self.node_id)  # local first
            errors: list[Exception] = []
            missing = 0
            for m in targets:
                try:
                    if m.node_id == self.node_id:
                        return self.local.read(view.epoch, oid, offset, length)
                    return bytes(self._call(m, {"op": "read", "epoch": view.epoch, "oid": oid,
                                                "offset": offset, "length": length}).payload)
                except NoObject as exc:
                    missing += 1
                    errors.append(exc)
                except SheepError as exc:
                    errors.append(exc)
            if missing == len(targets):
                raise NoObject(f"object {oid:016x} not found")
            errors = [e for e in errors if not isinstance(e, NoObject)]
            self._after_errors(view, errors, deadline)

    def remove(self, oid: int, copies: int, generation: int | None = None) -> None:
        deadline = time.monotonic() + self.io_timeout_s
        while True:
            self._writable(generation, deadline)
            view = self._view(deadline)
            jobs = [gevent.spawn(self._remove_one, m, view.epoch, oid)
                    for m in view.ring.replicas(oid, copies)]
            gevent.joinall(jobs)
            errors = [j.exception for j in jobs
                      if j.exception is not None and not isinstance(j.exception, NoObject)]
            if not errors:
                return
            _reraise_unexpected(errors)
            self._after_errors(view, errors, deadline)

    def _remove_one(self, m: Member, epoch: int, oid: int) -> None:
        if m.node_id == self.node_id:
            return self.local.remove(epoch, oid)
        self._call(m, {"op": "remove", "epoch": epoch, "oid": oid})

    def flush(self) -> None:
        """Every write acknowledged before this call is on stable storage everywhere."""
        deadline = time.monotonic() + self.io_timeout_s
        while True:
            view = self._view(deadline)
            jobs = [gevent.spawn(self._flush_one, m) for m in view.members]
            gevent.joinall(jobs)
            errors = [j.exception for j in jobs if j.exception is not None]
            if not errors:
                return
            _reraise_unexpected(errors)
            self._after_errors(view, errors, deadline)

    def _flush_one(self, m: Member) -> None:
        if m.node_id == self.node_id:
            self.local.flush()
        else:
            self._call(m, {"op": "flush"})

    # -- cluster-wide queries ------------------------------------------------
    def call_member(self, m: Member, header: dict):
        """One request to one member (local by direct dispatch); returns (header, payload)."""
        if m.node_id == self.node_id:
            return self.local.handle(header, b"")
        frame = self._call(m, header)
        return frame.header, frame.payload


def _reraise_unexpected(errors: list[BaseException]) -> None:
    for err in errors:
        if not isinstance(err, SheepError):
            raise err


class SessionBoundGateway:
    """The gateway as one attached export sees it: its writes happen only under the
    ZooKeeper session that took the export's VDI lock (``generation``).  After that
    session is lost the lock may belong to someone else, so every later write fails."""

    def __init__(self, gateway: Gateway, generation: int) -> None:
        self.gateway = gateway
        self.generation = generation

    def read(self, oid: int, offset: int, length: int, copies: int) -> bytes:
        return self.gateway.read(oid, offset, length, copies)

    def write(self, oid: int, offset: int, data, copies: int, create: bool = False) -> None:
        self.gateway.write(oid, offset, data, copies, create, generation=self.generation)

    def remove(self, oid: int, copies: int) -> None:
        self.gateway.remove(oid, copies, generation=self.generation)

    def flush(self) -> None:
        self.gateway.flush()
