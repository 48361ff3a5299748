"""Single-attacher VDI locks: one ephemeral znode per locked VDI under ``/locks/<vid hex>``.

Theory of operation
-------------------
* ``acquire`` is an ephemeral create: the create is the test-and-set, and the lock dies
  with the holder's ZooKeeper session (node crash, partition longer than the session
  timeout), so a dead node never keeps a VDI locked.
* The value says who holds it and for whom: ``{"vid", "node_id", "client", "since",
  "generation"}``.
* Generations (fencing tokens): ``/generations/<vid hex>`` (persistent) holds the VDI's
  lock generation, bumped in the same transaction as every acquisition and every break,
  and ``clean``: whether the last holder released it with every write on every replica.
  Every mutation of the VDI's objects carries its writer's generation and replicas refuse
  older ones (`sheep.replication.generations`).
* A refused acquire raises ``Locked`` whose message names the holder, its client address and
  since when, so the NBD handshake can pass it to the user verbatim.
* An operator breaks a lock with ``break_lock`` (``collie vdi lock unlock``).  The holder
  learns of it through ``watch``: ``on_gone(vid)`` runs once, in a new greenlet, when *that*
  lock znode (identified by its creation zxid) disappears or is replaced, so the NBD server
  drops the client at once.
"""
from __future__ import annotations

import logging
import time

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from common.errors import Locked, NotFound
from coordinator.catalog import read_vid_znodes, zk_unavailable
from coordinator.layout import Layout, decode, encode

log = logging.getLogger(__name__)


def _since_text(since: float | None) -> str:
    if not since:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))


class VdiLocks:
    """Acquire / release / list / break the per-VDI attach locks of one cluster."""

    def __init__(self, client, cluster: str):
        self._client = client
        self._layout = Layout(cluster)

    def _ensure_parents(self) -> None:
        self._client.ensure_path(self._layout.locks)
        self._client.ensure_path(self._layout.generations)

    # -- generations --------------------------------------------------------------------
    def _read_generation(self, vid: int) -> tuple[dict, int | None]:
        """(value, znode version or None when it does not exist yet)."""
        try:
            data, stat = self._client.get(self._layout.generation(vid))
        except NoNodeError:
            return {"generation": 0, "clean": True}, None
        return decode(data) or {"generation": 0, "clean": True}, stat.version

    def generation(self, vid: int) -> int:
        """The VDI's current lock generation (0 before its first acquisition)."""
        with zk_unavailable("generation read"):
            return int(self._read_generation(vid)[0].get("generation", 0))

    def _set_generation(self, txn, vid: int, value: dict, version: int | None) -> None:
        path = self._layout.generation(vid)
        if version is None:
            txn.create(path, encode(value))
        else:
            txn.set_data(path, encode(value), version=version)

    # -- the lock -----------------------------------------------------------------------
    def acquire(self, vid: int, node_id: str, client_addr: str) -> dict:
        """Take the lock for ``node_id`` serving ``client_addr`` and return its value.

        One ZooKeeper transaction creates the ephemeral lock and bumps the VDI's
        generation (marking it not clean), so every holder has a generation of its own,
        higher than every earlier one.  The value has ``generation`` and
        ``previous_clean`` (False when the last holder vanished without `release`-ing
        cleanly: its writes may have reached some replicas only).

        Raises Locked (data: holder, client, since, vid) when anyone holds it, including
        this node for another client: a VDI has a single attacher.
        """
        path = self._layout.lock(vid)
        with zk_unavailable("lock acquire"):
            for _attempt in range(20):
                previous, version = self._read_generation(vid)
                generation = int(previous.get("generation", 0)) + 1
                now = time.time()
                value = {"vid": vid, "node_id": node_id, "client": client_addr, "since": now,
                         "generation": generation}
                txn = self._client.transaction()
                txn.create(path, encode(value), ephemeral=True)
                self._set_generation(txn, vid, {"generation": generation, "clean": False,
                                                "holder": node_id, "since": now}, version)
                results = txn.commit()
                if not _failed(results):
                    log.info("lock: acquired vid=%06x node=%s client=%s generation=%d", vid,
                             node_id, client_addr, generation)
                    return {**value, "previous_clean": bool(previous.get("clean", True)),
                            "lease": {"generation_version": 0 if version is None else version + 1,
                                      "since": now}}
                if any(isinstance(r, NoNodeError) for r in results):
                    self._ensure_parents()  # a cluster from before /generations existed
                    continue
                if isinstance(results[0], NodeExistsError):
                    holder = self._read(vid)
                    if holder is None:
                        continue            # released in between: try again
                    raise Locked(
                        f"VDI {vid:06x} is locked by node {holder.get('node_id')} for client "
                        f"{holder.get('client')} since {_since_text(holder.get('since'))}",
                        vid=vid, holder=holder.get("node_id"), client=holder.get("client"),
                        since=holder.get("since"))
                # the generation changed meanwhile (a break, another acquisition): again
        raise Locked(f"VDI {vid:06x}: lock contended too long", vid=vid)

    def release(self, vid: int, node_id: str, clean: bool = True, lock: dict | None = None) -> bool:
        """Delete the lock if ``node_id`` holds it; True when deleted, False when it was not ours
        (or not there).  ``clean``: every write of this holder reached every replica (nothing
        for the next holder to resynchronise).  ``lock``: the value `acquire` returned; then
        the release is one transaction (no reads): it fails exactly when the generation moved
        on, i.e. when the lock was broken and is not ours any more."""
        path = self._layout.lock(vid)
        if lock is not None and lock.get("lease"):
            lease = lock["lease"]
            value = {"generation": lock["generation"], "clean": clean, "holder": node_id,
                     "since": lease["since"]}
            with zk_unavailable("lock release"):
                txn = self._client.transaction()
                txn.delete(path, version=0)             # lock values are never rewritten
                if clean:
                    txn.set_data(self._layout.generation(vid), encode(value),
                                 version=lease["generation_version"])
                else:
                    txn.check(self._layout.generation(vid), lease["generation_version"])
                done = not _failed(txn.commit())
            if done:
                log.info("lock: released vid=%06x node=%s generation=%s clean=%s", vid, node_id,
                         lock["generation"], clean)
            return done
        with zk_unavailable("lock release"):
            for _attempt in range(20):
                try:
                    data, stat = self._client.get(path)
                except NoNodeError:
                    return False
                lock = decode(data) or {}
                if lock.get("node_id") != node_id:
                    return False
                previous, version = self._read_generation(vid)
                txn = self._client.transaction()
                txn.delete(path, version=stat.version)
                if clean and version is not None and \
                        previous.get("generation") == lock.get("generation"):
                    self._set_generation(txn, vid, {**previous, "clean": True}, version)
                results = txn.commit()
                if not _failed(results):
                    log.info("lock: released vid=%06x node=%s generation=%s clean=%s", vid,
                             node_id, lock.get("generation"), clean)
                    return True
                if isinstance(results[0], (NoNodeError, BadVersionError)):
                    return False
        return False

    def list(self) -> list[dict]:
        """Every held lock's value, ascending by vid."""
        with zk_unavailable("lock list"):
            return [decode(data) for _vid, data in
                    read_vid_znodes(self._client, self._layout.locks, self._layout.lock)
                    if data]

    def get(self, vid: int) -> dict | None:
        """The lock's value, or None when the VDI is not locked."""
        with zk_unavailable("lock get"):
            return self._read(vid)

    def break_lock(self, vid: int) -> dict:
        """Delete the lock whoever holds it and bump the VDI's generation (the holder's late
        writes are then refused); returns the value it had plus the new ``generation``.
        NotFound when unlocked."""
        path = self._layout.lock(vid)
        with zk_unavailable("lock break"):
            for _attempt in range(20):
                try:
                    data, stat = self._client.get(path)
                except NoNodeError:
                    raise NotFound(f"VDI {vid:06x} is not locked", vid=vid) from None
                previous, version = self._read_generation(vid)
                generation = int(previous.get("generation", 0)) + 1
                txn = self._client.transaction()
                txn.delete(path, version=stat.version)
                self._set_generation(txn, vid, {"generation": generation, "clean": False,
                                                "holder": None, "since": time.time()}, version)
                results = txn.commit()
                if not _failed(results):
                    break
                if isinstance(results[1], NoNodeError):
                    self._ensure_parents()
            else:
                raise Locked(f"VDI {vid:06x}: lock kept changing; not broken", vid=vid)
        value = decode(data) or {"vid": vid}
        log.warning("lock: broken vid=%06x holder=%s client=%s; generation now %d", vid,
                    value.get("node_id"), value.get("client"), generation)
        return {**value, "new_generation": generation}

    def state(self, vid: int) -> dict:
        """The VDI's generation record: ``generation``, ``clean`` (its last holder let go
        with every write on every replica), ``holder``."""
        with zk_unavailable("generation read"):
            return self._read_generation(vid)[0]

    def wait_released(self, vid: int, timeout_s: float) -> bool:
        """Until nobody holds the lock of ``vid`` (True), or ``timeout_s`` (False)."""
        path = self._layout.lock(vid)
        deadline = time.monotonic() + timeout_s
        with zk_unavailable("lock wait"):
            while True:
                gone = self._client.handler.event_object()
                if self._client.exists(path, watch=lambda _event: gone.set()) is None:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                gone.wait(min(remaining, 1.0))  # and look again: a watch can be lost

    def watch(self, vid: int, on_gone) -> None:
        """Call ``on_gone(vid)`` once, in a new greenlet, when the lock znode that exists now
        disappears or is replaced (broken by an operator, or lost with the session).

        If the VDI is not locked at the time of the call, ``on_gone`` runs at once.
        Survives connection loss: after a new session the recipe re-reads the znode.
        """
        path = self._layout.lock(vid)
        state = {"czxid": None, "fired": False}
        handler = self._client.handler

        def changed(data, stat, event=None):
            if state["fired"]:
                return False
            if stat is not None and state["czxid"] is None:
                state["czxid"] = stat.czxid
                return True
            if stat is None or stat.czxid != state["czxid"]:
                state["fired"] = True
                log.warning("lock: vid=%06x lock is gone", vid)
                handler.spawn(on_gone, vid)
                return False    # stop watching
            return True

        self._client.DataWatch(path, changed)

    def _read(self, vid: int) -> dict | None:
        try:
            data, _ = self._client.get(self._layout.lock(vid))
        except NoNodeError:
            return None
        return decode(data)


def _failed(results) -> bool:
    return any(isinstance(r, Exception) for r in results)
