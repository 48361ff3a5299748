"""Prometheus exposition of one sheep (`GET /metrics`, open route): `StageMetrics`.

Three kinds of series, all written by prometheus_client (names, escaping, format):

* histograms and counters the hot paths feed as they run (`sheep.admin.metrics_hist`:
  a list increment per observation): NBD requests per command and per VDI, the
  gateway's fan-outs, peer round trips with request and error counts, store writes,
  flushes and fsyncs;
* this node's state read from its parts at scrape time (`sheep.admin.metrics_node`);
* cluster-wide figures from any node, ZooKeeper read at most every few seconds
  (`sheep.admin.metrics_cluster`).

Every series is listed, with its labels and meaning, in docs/metrics.md.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sheep.admin.metrics_cluster import ClusterCollector
from sheep.admin.metrics_hist import IoHistogram, PeerHistogram, StageHistogram
from sheep.admin.metrics_node import NodeCollector
from sheep.admin.metrics_qos import QosCollector


# what generate_latest writes; the charset matters: label values (VDI names) are UTF-8
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StageMetrics:
    """The daemon's registry and the histograms its components observe (seconds).

    ``StageMetrics(node_id)``: every series gets ``node=<node_id>`` (none when empty);
    ``watch(sheep)`` adds the scrape-time node and cluster collectors; ``render()`` is
    the text exposition.
    """

    def __init__(self, node_id: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        const = {"node": node_id} if node_id else {}

        def hist(name: str, doc: str, labels: list[str], kind=StageHistogram):
            return kind(name, doc, labels, self.registry, const)
        self.nbd = hist("sheep_nbd_request_seconds",
                        "NBD request received to its reply queued, by command", ["op"])
        self.vdi = IoHistogram("sheep_vdi", "NBD requests served by this node for the VDI "
                               "(export) named, by command", ["vdi", "op"], self.registry,
                               const)
        self.gateway = hist("sheep_gateway_seconds",
                            "a mutation's fan-out to every replica (write, remove) and a "
                            "whole FLUSH on every member, at this gateway", ["op"])
        self.peer = hist("sheep_peer_request_seconds",
                         "peer request sent to its reply, by peer and op", ["peer", "op"],
                         PeerHistogram)
        self.store = hist("sheep_store_seconds",
                          "this replica's store work: a write done on the event loop "
                          "(inline) or through the thread pool (pool), a flush", ["op"])
        self.fsync = hist("sheep_store_fsync_seconds",
                          "one fsync of an object file or directory by the local store", [])

    def watch(self, sheep) -> None:
        """Expose ``sheep``'s state (its parts, read at scrape time) and the cluster's."""
        self.registry.register(NodeCollector(sheep))
        self.registry.register(ClusterCollector(sheep))
        self.registry.register(QosCollector(sheep))

    def render(self) -> str:
        return generate_latest(self.registry).decode()


def render_metrics(sheep) -> str:
    """The text exposition of ``sheep.stage_metrics`` (what ``GET /metrics`` returns)."""
    return sheep.stage_metrics.render()
