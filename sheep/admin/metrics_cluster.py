"""Cluster-wide figures any sheep can answer, so one scrape target feeds a dashboard.

The epoch comes from the coordinator's last delivered epoch (memory).  What needs
ZooKeeper (live members by role, the VDI catalog, the lock table) is read at most once
per ``ttl_s`` (`TtlCache`, single-flight: concurrent scrapes share one refresh, and a
failed refresh keeps the previous figures, logged once per failure); the catalog comes
through the NBD exports' `CatalogCache`, which handshakes refresh anyway.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

from prometheus_client.core import GaugeMetricFamily

from common.errors import SheepError

log = logging.getLogger(__name__)

TTL_S = 5.0
ROLES = ("storage", "gateway")


class TtlCache:
    """``get()``: ``compute()``'s last value, recomputed once it is ``ttl_s`` old; while one
    caller recomputes, others get the old value; a failure keeps the old value (None at
    first) and is logged."""

    def __init__(self, compute, ttl_s: float = TTL_S, clock=time.monotonic) -> None:
        self._compute, self.ttl_s, self._clock = compute, ttl_s, clock
        self._value = None
        self._at = float("-inf")
        self._busy = False

    def get(self):
        now = self._clock()
        if now - self._at >= self.ttl_s and not self._busy:
            self._busy = True
            try:
                self._value = self._compute()
            except (SheepError, OSError) as exc:
                log.warning("metrics: cluster figures not refreshed: %s", exc)
            finally:
                self._at = now
                self._busy = False
        return self._value


def cluster_figures(sheep) -> dict:
    """What ZooKeeper says now: members by role, VDIs, snapshots, provisioned bytes,
    locks held."""
    roles = Counter(m.role for m in sheep.coordinator.members())
    entries = sheep.exports.catalog_cache.entries() if sheep.exports is not None else []
    working = [e for e in entries if not e.get("snapshot")]
    return {"members": {role: roles.get(role, 0) for role in (*ROLES, *roles)},
            "vdis": len(working), "snapshots": len(entries) - len(working),
            "provisioned": sum(int(e.get("size") or 0) for e in working),
            "locks": len(sheep.locks.list())}


class ClusterCollector:
    def __init__(self, sheep, ttl_s: float = TTL_S) -> None:
        self.sheep = sheep
        self.cache = TtlCache(lambda: cluster_figures(sheep), ttl_s)

    def describe(self):
        return []

    def collect(self):
        epoch = self.sheep.coordinator.current_epoch
        if epoch is not None:
            yield _gauge("epoch", "the cluster's newest epoch (as this node learned it)",
                         epoch["epoch"])
            yield _gauge("epoch_members", "storage members in the newest epoch",
                         len(epoch.get("members") or ()))
        fig = self.cache.get()
        if fig is None:
            return
        members = GaugeMetricFamily("sheep_cluster_members", "live members (registered in "
                                    "ZooKeeper) by role", labels=["role"])
        for role, n in fig["members"].items():
            members.add_metric([role], n)
        yield members
        yield _gauge("vdis", "VDIs in the catalog (snapshots not counted)", fig["vdis"])
        yield _gauge("snapshots", "snapshots in the catalog", fig["snapshots"])
        yield _gauge("provisioned_bytes", "sum of the VDIs' virtual sizes", fig["provisioned"])
        yield _gauge("locks", "VDI locks held (VDIs attached read-write somewhere)",
                     fig["locks"])


def _gauge(name: str, doc: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"sheep_cluster_{name}", doc, value=value)
