"""Single-attacher VDI locks: one ephemeral znode per locked VDI under ``/locks/<vid hex>``.

Theory of operation
-------------------
* ``acquire`` is a plain ephemeral create: the create is the test-and-set, and the lock dies
  with the holder's ZooKeeper session (node crash, partition longer than the session
  timeout), so a dead node never keeps a VDI locked.
* The value says who holds it and for whom: ``{"vid", "node_id", "client", "since"}``.
  A refused acquire raises ``Locked`` whose message names the holder, its client address and
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

from coordinator.catalog import read_vid_znodes, zk_unavailable
from coordinator.layout import Layout, decode, encode
from sheep.errors import Locked, NotFound

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

    def acquire(self, vid: int, node_id: str, client_addr: str) -> dict:
        """Take the lock for ``node_id`` serving ``client_addr`` and return its value.

        Raises Locked (data: holder, client, since, vid) when anyone holds it, including
        this node for another client: a VDI has a single attacher.
        """
        path = self._layout.lock(vid)
        value = {"vid": vid, "node_id": node_id, "client": client_addr, "since": time.time()}
        with zk_unavailable("lock acquire"):
            try:
                self._client.create(path, encode(value), ephemeral=True, makepath=True)
            except NodeExistsError:
                holder = self._read(vid)
                if holder is None:      # released in between: one more try, then give up
                    try:
                        self._client.create(path, encode(value), ephemeral=True, makepath=True)
                    except NodeExistsError:
                        holder = self._read(vid) or {}
                    else:
                        holder = None
                if holder is not None:
                    raise Locked(
                        f"VDI {vid:06x} is locked by node {holder.get('node_id')} for client "
                        f"{holder.get('client')} since {_since_text(holder.get('since'))}",
                        vid=vid, holder=holder.get("node_id"), client=holder.get("client"),
                        since=holder.get("since")) from None
        log.info("lock: acquired vid=%06x node=%s client=%s", vid, node_id, client_addr)
        return value

    def release(self, vid: int, node_id: str) -> bool:
        """Delete the lock if ``node_id`` holds it; True when deleted, False when it was not ours
        (or not there)."""
        path = self._layout.lock(vid)
        with zk_unavailable("lock release"):
            try:
                data, stat = self._client.get(path)
            except NoNodeError:
                return False
            if (decode(data) or {}).get("node_id") != node_id:
                return False
            try:
                self._client.delete(path, version=stat.version)
            except (NoNodeError, BadVersionError):
                return False
        log.info("lock: released vid=%06x node=%s", vid, node_id)
        return True

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
        """Delete the lock whoever holds it and return the value it had; NotFound when unlocked."""
        path = self._layout.lock(vid)
        with zk_unavailable("lock break"):
            try:
                data, _ = self._client.get(path)
                self._client.delete(path)
            except NoNodeError:
                raise NotFound(f"VDI {vid:06x} is not locked", vid=vid) from None
        value = decode(data) or {"vid": vid}
        log.warning("lock: broken vid=%06x holder=%s client=%s", vid, value.get("node_id"),
                    value.get("client"))
        return value

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
