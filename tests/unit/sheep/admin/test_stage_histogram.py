"""StageHistogram: cheap observations, prometheus_client's exposition and parser."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sheep.admin.metrics import StageMetrics
from sheep.admin.metrics_hist import BUCKETS


def samples(metrics: StageMetrics, name: str) -> dict:
    for family in text_string_to_metric_families(metrics.render()):
        if family.name == name:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    raise AssertionError(f"{name} not exposed")


def test_observations_land_in_cumulative_buckets_with_le_semantics():
    m = StageMetrics()
    write = m.peer.labels("10.0.0.2:7000", "write")
    for seconds in (10e-6, BUCKETS[0], 30e-6, 1e-3, 100.0):
        write.observe(seconds)
    got = samples(m, "sheep_peer_request_seconds")
    labels = (("op", "write"), ("peer", "10.0.0.2:7000"))

    def bucket(le: str) -> float:
        return got[("sheep_peer_request_seconds_bucket", tuple(sorted(labels + (("le", le),))))]
    assert bucket("2.5e-05") == 2            # 10 us and exactly 25 us (le: less or equal)
    assert bucket("5e-05") == 3
    assert bucket("0.0008") == 3 and bucket("0.0016") == 4
    assert bucket("+Inf") == 5
    assert got[("sheep_peer_request_seconds_count", labels)] == 5
    assert got[("sheep_peer_request_seconds_sum", labels)] == pytest.approx(100.00104, rel=1e-6)


def test_each_label_set_counts_on_its_own_and_the_same_child_is_returned():
    m = StageMetrics()
    assert m.nbd.labels("write") is m.nbd.labels("write")
    m.nbd.labels("write").observe(0.001)
    m.nbd.labels("read").observe(0.001)
    m.nbd.labels("read").observe(0.002)
    got = samples(m, "sheep_nbd_request_seconds")
    assert got[("sheep_nbd_request_seconds_count", (("op", "write"),))] == 1
    assert got[("sheep_nbd_request_seconds_count", (("op", "read"),))] == 2


def test_wrong_number_of_labels_is_refused():
    with pytest.raises(ValueError):
        StageMetrics().peer.labels("write")
