"""Prometheus text exposition of one sheep's state (`GET /metrics`).

`StageMetrics` holds the per-stage latency histograms (`StageHistogram`, exposed by
prometheus_client from a registry of this daemon's own) that the components observe;
`render_metrics` writes them followed by the gauges read from the daemon's parts at
scrape time.
"""
from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# 25 us .. ~3.3 s, doubling: a LAN store's stages (prometheus_client's defaults start at 5 ms)
BUCKETS = tuple(25e-6 * 2 ** i for i in range(18))
_LE = tuple(floatToGoString(b) for b in BUCKETS) + ("+Inf",)


class _Counts:
    """One label set's observations: a count per bucket (not cumulative) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class StageHistogram:
    """A histogram with labels whose ``observe`` is a list increment (~0.3 us).

    prometheus_client's own `Histogram` takes a lock for each of its two counter updates;
    under gevent those are greenlet locks written in Python, and a replicated write
    observes five stages (1.4 us each unpatched, several times that patched).  This one
    keeps plain counts, observed only from the event loop (one thread), and hands them
    to prometheus_client as a `HistogramMetricFamily` at scrape time: the exposition is
    prometheus_client's.
    """

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._children: dict[tuple, _Counts] = {}
        registry.register(self)

    def labels(self, *values) -> _Counts:
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _Counts()
        return child

    def describe(self):
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            total, buckets = 0, []
            for le, n in zip(_LE, child.counts):
                total += n
                buckets.append((le, total))
            family.add_metric(list(key), buckets, child.sum)
        yield family


class StageMetrics:
    """Where a request spends its time, one histogram per stage (seconds)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        def hist(name: str, doc: str, labels: list[str]) -> StageHistogram:
            return StageHistogram(name, doc, labels, self.registry)
        self.nbd = hist("sheep_nbd_request_seconds",
                        "NBD request received to its reply queued, by command", ["op"])
        self.gateway = hist("sheep_gateway_seconds",
                            "a mutation's fan-out to every replica (write, remove) and a "
                            "whole FLUSH on every member, at this gateway", ["op"])
        self.peer = hist("sheep_peer_request_seconds",
                         "peer request sent to its reply, by peer and op", ["peer", "op"])
        self.store = hist("sheep_store_seconds",
                          "this replica's store work: a write done on the event loop "
                          "(inline) or through the thread pool (pool), a flush", ["op"])

    def render(self) -> str:
        return generate_latest(self.registry).decode()


def _line(name: str, value, help_text: str, kind: str = "gauge", labels: str = "") -> str:
    return (f"# HELP sheep_{name} {help_text}\n# TYPE sheep_{name} {kind}\n"
            f"sheep_{name}{labels} {value}\n")


def render_metrics(node) -> str:
    """Gauges read from the daemon's parts at scrape time."""
    labels = f'{{node="{node.node_id}"}}'
    out = [node.stage_metrics.render(),_line("epoch", node.epochs.epoch, "current epoch", labels=labels),
           _line("fenced", int(bool(node.coordinator.fenced)),
                 "1 while the ZooKeeper session is lost", labels=labels)]
    if node.replica is not None:
        usage = node.store.usage()
        out.append(_line("objects", usage["objects"], "objects in the local store", labels=labels))
        out.append(_line("store_used_bytes", usage["used_bytes"], "bytes used by objects",
                         labels=labels))
        out.append(_line("store_free_bytes", usage["free_bytes"], "free bytes on the store's disk",
                         labels=labels))
        out.append(_line("store_checksum_errors_total", usage["corrupt_reads"],
                         "reads that found a block failing its checksum", "counter", labels))
        out.append(_line("store_failed", int(usage["failed"] is not None),
                         "1 once an fsync failed (the node leaves the cluster)", labels=labels))
        conv = node.gateway.converger
        out.append(_line("repaired_blocks_total", conv.repaired_blocks,
                         "corrupt blocks rewritten from a replica", "counter", labels))
        out.append(_line("repaired_copies_total", conv.repaired_copies,
                         "whole copies brought to the good one", "counter", labels))
        out.append(_line("stale_generation_refusals_total", node.replica.generations.refused,
                         "mutations refused for an older VDI lock generation", "counter",
                         labels))
        if node.scrubber is not None:
            st = node.scrubber.stats
            out.append(_line("scrub_objects_total", st["objects"], "copies verified by the scrub",
                             "counter", labels))
            out.append(_line("scrub_corrupt_objects_total", st["corrupt_objects"],
                             "copies the scrub found corrupt", "counter", labels))
    if node.recovery is not None:
        p = node.recovery.progress
        out.append(_line("recovery_done_objects", p["done"], "objects checked in this pass",
                         labels=labels))
        out.append(_line("recovery_total_objects", p["total"], "objects to check in this pass",
                         labels=labels))
        out.append(_line("recovery_pulled_bytes", p["bytes"], "bytes pulled in this pass",
                         labels=labels))
    return "".join(out)
