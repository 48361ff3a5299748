"""This sheep's own state as Prometheus families, read from its parts at scrape time.

`NodeCollector(sheep)` is a prometheus_client collector: ``collect()`` reads counters
and sizes the daemon already keeps (no ZooKeeper, no disk walk: the store's usage is
its in-memory estimate plus one ``statvfs``) and yields gauge and counter families,
every sample labelled ``node``.  Families of parts this node does not have (a gateway
has no store, no recovery) are left out.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

ZK_STATES = ("connected", "suspended", "lost")
RECOVERY_STATES = ("idle", "listing", "recovering", "complete", "interrupted", "retrying",
                   "stopped", "disabled")
_RUNNING = ("listing", "recovering")


class NodeCollector:
    def __init__(self, sheep) -> None:
        self.sheep = sheep

    def describe(self):
        return []       # families depend on the parts: not checked at registration

    def collect(self):
        s = self.sheep
        node = s.node_id
        out = _Families(node)
        coord = s.coordinator
        out.gauge("epoch", "the newest epoch this node has applied", s.epochs.epoch)
        out.gauge("fenced", "1 while the ZooKeeper session is in doubt (no writes)",
                  int(bool(coord.fenced)))
        out.gauge("leader", "1 while this node is the cluster's leader (writes epochs)",
                  int(bool(coord.is_leader)))
        state = str(getattr(coord.client, "state", "")).lower()
        out.enum("zk_session_state", "this node's ZooKeeper connection state: 1 for the "
                 "current one", "state", ZK_STATES, state)
        out.counter("zk_session_losses", "ZooKeeper sessions lost (a new one was made)",
                    coord.session_generation)
        out.counter("fencing_events", "times this node fenced itself (session suspended "
                    "or lost)", coord.fence_events)
        if s.nbd is not None:
            out.gauge("nbd_connections", "NBD client connections open", s.nbd.connections)
            out.counter("nbd_refused_connections", "NBD connections closed at accept "
                        "(over --nbd-max-connections)", s.nbd.refused)
        if s.replica is not None:
            self._store(out)
        if s.recovery is not None:
            self._recovery(out, s.recovery)
        return out.families

    def _store(self, out: "_Families") -> None:
        s = self.sheep
        usage = s.store.usage()
        out.gauge("store_objects", "objects in the local store", usage["objects"])
        out.gauge("store_dirty_objects", "objects written since the last flush",
                  usage["dirty_objects"])
        out.gauge("store_used_bytes", "bytes allocated by the local objects (estimate)",
                  usage["used_bytes"])
        out.gauge("store_capacity_bytes", "size of the store's filesystem",
                  usage["capacity_bytes"])
        out.gauge("store_free_bytes", "free bytes on the store's filesystem",
                  usage["free_bytes"])
        out.counter("store_checksum_errors", "reads that found a block failing its checksum",
                    usage["corrupt_reads"])
        out.gauge("store_failed", "1 once an fsync failed (the node leaves the cluster)",
                  int(usage["failed"] is not None))
        conv = s.gateway.converger
        out.counter("repaired_blocks", "corrupt blocks rewritten from a replica",
                    conv.repaired_blocks)
        out.counter("repaired_copies", "whole copies brought to the good one",
                    conv.repaired_copies)
        out.counter("stale_generation_refusals", "mutations refused for an older VDI lock "
                    "generation", s.replica.generations.refused)
        if s.scrubber is not None:
            st = s.scrubber.stats
            out.counter("scrub_objects", "copies verified by the scrub", st["objects"])
            out.counter("scrub_corrupt_objects", "copies the scrub found corrupt",
                        st["corrupt_objects"])

    @staticmethod
    def _recovery(out: "_Families", rec) -> None:
        p = rec.progress
        out.counter("recovery_objects", "objects recovery handled (found missing or old here "
                    "and brought up to date, or given up on), over every pass", rec.objects_done)
        out.counter("recovery_pulled_objects", "objects recovery copied from other members",
                    rec.pulled_objects)
        out.counter("recovery_pulled_bytes", "bytes recovery copied from other members",
                    rec.pulled_bytes)
        out.counter("recovery_list_requests", "object-list and object-version requests "
                    "recovery sent to members (one per member asked), over every pass",
                    rec.list_requests)
        out.counter("recovery_list_bytes", "bytes of the object lists and versions members "
                    "answered recovery with", rec.list_bytes)
        running = p["state"] in _RUNNING
        out.gauge("recovery_remaining_objects", "objects the current pass has still to handle "
                  "(0 when no pass runs)", max(0, p["total"] - p["done"]) if running else 0)
        out.gauge("recovery_pass_objects", "objects the current (or last) pass has to handle",
                  p["total"])
        out.gauge("recovery_epoch", "the epoch of the current (or last) recovery pass",
                  p["epoch"])
        out.enum("recovery_state", "recovery's state on this node: 1 for the current one",
                 "state", RECOVERY_STATES, p["state"])


class _Families:
    """Collects one-sample families labelled ``node``; names get the ``sheep_`` prefix."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.families: list = []

    def gauge(self, name: str, doc: str, value) -> None:
        f = GaugeMetricFamily(f"sheep_{name}", doc, labels=["node"])
        f.add_metric([self.node], value)
        self.families.append(f)

    def counter(self, name: str, doc: str, value) -> None:
        f = CounterMetricFamily(f"sheep_{name}", doc, labels=["node"])
        f.add_metric([self.node], value)
        self.families.append(f)

    def enum(self, name: str, doc: str, label: str, states, current: str) -> None:
        """One sample per state, 1 for ``current`` (an unknown one gets its own sample)."""
        f = GaugeMetricFamily(f"sheep_{name}", doc, labels=["node", label])
        for state in (*states, *(() if current in states else (current,))):
            f.add_metric([self.node, state], int(state == current))
        self.families.append(f)
