"""Per-VDI QoS series of this gateway, read at scrape time from its `QosRegistry`.

Every VDI that has had limits while attached here: its limits as gauges (0 = none) and
the time its requests waited for tokens, by kind (read, write).  docs/metrics.md.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sheep.volumes.qos import LIMITS, READ, WRITE


class QosCollector:
    def __init__(self, sheep) -> None:
        self.sheep = sheep

    def describe(self):
        return []

    def collect(self):
        qos = getattr(getattr(self.sheep, "exports", None), "qos", None)
        if qos is None:
            return
        node = self.sheep.node_id
        labels = ["node", "vdi"]
        waited = CounterMetricFamily(
            "sheep_vdi_qos_throttled_seconds", "seconds NBD requests to the VDI waited for "
            "its QoS limits at this gateway, by kind", labels=labels + ["op"])
        delayed = CounterMetricFamily(
            "sheep_vdi_qos_throttled_requests", "NBD requests to the VDI that waited for its "
            "QoS limits at this gateway, by kind", labels=labels + ["op"])
        limit = GaugeMetricFamily(
            "sheep_vdi_qos_limit", "the VDI's QoS limit enforced here (iops: requests/s, "
            "bps: bytes/s; 0 = none)", labels=labels + ["limit"])
        for name, throttle in sorted(qos.throttles.items()):
            for kind in (READ, WRITE):
                waited.add_metric([node, name, kind], throttle.throttled_s[kind])
                delayed.add_metric([node, name, kind], throttle.throttled[kind])
            values = throttle.limits.values
            for key in LIMITS:
                limit.add_metric([node, name, key], values.get(key, 0))
        yield waited
        yield delayed
        yield limit
