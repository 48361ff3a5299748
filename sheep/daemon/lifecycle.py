"""Cluster lifecycle on one sheep: follow ``/cluster`` and act on it.

The coordinator's data watch hands every new ``/cluster`` value to `Lifecycle.on_cluster`:

* ``state`` other than ``running`` (``shutdown``, ``waiting``): writes are refused
  (`write_refusal`, installed as ``Replica.write_block``) with a message that says why;
* ``shutdown`` whose ``shutdown_at`` is later than this node's start: this node stops
  cleanly (flushes its store, leaves ZooKeeper) - that is how ``collie cluster shutdown``
  reaches every node;
* ``recovery`` (``enabled``/``disabled``) and ``recovery_throttle`` go to `Recovery`.
"""
from __future__ import annotations

import logging
from typing import Callable

from common.errors import NotReady, Shutdown
from sheep.recovery.throttle import Limits

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, node_id: str, started: float, stop: Callable[[], None]) -> None:
        self.node_id = node_id
        self.started = started
        self._stop = stop
        self.recovery = None            # set once the store is open
        self.value: dict = {}
        self._stopping = False

    def on_cluster(self, value: dict | None) -> None:
        self.value = value or {}
        state = self.value.get("state")
        if state == "shutdown" and float(self.value.get("shutdown_at") or 0) > self.started:
            if not self._stopping:
                self._stopping = True
                log.warning("node=%s cluster shutdown: stopping", self.node_id)
                self._stop()
            return
        self.apply_recovery()

    def apply_recovery(self) -> None:
        if self.recovery is None:
            return
        self.recovery.set_limits(Limits.from_dict(self.value.get("recovery_throttle")))
        self.recovery.set_enabled(self.value.get("recovery", "enabled") != "disabled")

    def write_refusal(self) -> Exception | None:
        """Why this node must not take writes now (cluster not running), or None."""
        state = self.value.get("state")
        if state in (None, "running"):
            return None
        if state == "shutdown":
            return Shutdown("cluster is shutting down: no writes")
        waiting = ", ".join(self.value.get("waiting_for") or []) or "missing nodes"
        return NotReady(f"cluster is waiting for {waiting} to come back (or 'collie cluster "
                        "recover force'): no writes")
