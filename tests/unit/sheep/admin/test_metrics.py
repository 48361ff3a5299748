"""The metric families: counters kept beside the histograms, the scrape-time collectors,
escaping of hostile label values, the ZooKeeper-backed figures' cache."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.errors import NoObject, NotReady, Unavailable
from sheep.admin.metrics import StageMetrics
from sheep.admin.metrics_cluster import TtlCache
from sheep.peer.client import PendingCall
from sheep.peer.wire import Frame
from tests.unit.sheep.admin.fake_sheep import fake_sheep


def parse(metrics: StageMetrics) -> dict:
    """{(sample name, sorted labels): value} through the official parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics.render()) for s in f.samples}


def test_a_hostile_vdi_name_is_escaped_and_parses_back_intact():
    name = 'v"ol\\ume\n✓é'
    m = StageMetrics('node"\n1')
    m.vdi.labels(name, "write").observe(0.001, 4096)
    got = parse(m)
    key = ("sheep_vdi_bytes_total", (("node", 'node"\n1'), ("op", "write"), ("vdi", name)))
    assert got[key] == 4096


def test_vdi_counters_come_from_the_histogram_children():
    m = StageMetrics("n1")
    write = m.vdi.labels("v", "write")
    for n in (512, 4096, 65536):
        write.observe(2e-4, n)
    m.vdi.labels("v", "flush").observe(1e-3)
    got = parse(m)
    labels = (("node", "n1"), ("op", "write"), ("vdi", "v"))
    assert got[("sheep_vdi_requests_total", labels)] == 3
    assert got[("sheep_vdi_bytes_total", labels)] == 512 + 4096 + 65536
    assert got[("sheep_vdi_request_seconds_count", labels)] == 3
    assert got[("sheep_vdi_bytes_total", (("node", "n1"), ("op", "flush"), ("vdi", "v")))] == 0


def _call(timer, frame=None, error=None, done=True) -> PendingCall:
    conn = type("Conn", (), {"addr": "10.0.0.2", "port": 7000, "_pending": {}})()
    call = PendingCall(conn, 1, timer)
    if done:
        call.complete(frame, error)
    return call


def test_peer_requests_and_errors_count_replies_failures_and_silence():
    m = StageMetrics()
    timer = m.peer.labels("10.0.0.2:7000", "read")
    _call(timer, Frame({"id": 1})).result(1)                           # a reply
    with pytest.raises(NoObject):                                      # an answer, not an error
        _call(timer, Frame({"id": 1, "code": NoObject.code})).result(1)
    with pytest.raises(NotReady):                                      # an error reply
        _call(timer, Frame({"id": 1, "code": NotReady.code})).result(1)
    with pytest.raises(Unavailable):                                   # connection lost
        _call(timer, error=Unavailable("gone")).result(1)
    with pytest.raises(Unavailable):                                   # no reply in time
        _call(timer, done=False).result(1)
    got = parse(m)
    labels = (("op", "read"), ("peer", "10.0.0.2:7000"))
    assert got[("sheep_peer_requests_total", labels)] == 5
    assert got[("sheep_peer_errors_total", labels)] == 3
    assert got[("sheep_peer_request_seconds_count", labels)] == 3     # the replies' latency


def test_node_and_cluster_collectors_read_the_parts():
    m = StageMetrics('n"1')
    m.watch(fake_sheep())
    got = parse(m)
    node = (("node", 'n"1'),)
    assert got[("sheep_recovery_remaining_objects", node)] == 6
    assert got[("sheep_recovery_objects_total", node)] == 14
    assert got[("sheep_recovery_state", node + (("state", "recovering"),))] == 1
    assert got[("sheep_recovery_state", node + (("state", "complete"),))] == 0
    assert got[("sheep_zk_session_state", node + (("state", "connected"),))] == 1
    assert got[("sheep_zk_session_state", node + (("state", "lost"),))] == 0
    assert got[("sheep_fencing_events_total", node)] == 2
    assert got[("sheep_nbd_connections", node)] == 5
    assert got[("sheep_store_objects", node)] == 7
    assert got[("sheep_cluster_members", (("role", "storage"),))] == 2
    assert got[("sheep_cluster_members", (("role", "gateway"),))] == 1
    assert got[("sheep_cluster_vdis", ())] == 2
    assert got[("sheep_cluster_snapshots", ())] == 1
    assert got[("sheep_cluster_provisioned_bytes", ())] == 4 << 20
    assert got[("sheep_cluster_locks", ())] == 1
    assert got[("sheep_cluster_epoch", ())] == 3


def test_no_pass_running_means_nothing_remaining():
    for state in ("complete", "interrupted", "stopped"):
        m = StageMetrics()
        m.watch(fake_sheep(state=state))
        assert parse(m)[("sheep_recovery_remaining_objects", (("node", 'n"1'),))] == 0


def test_cluster_figures_are_read_once_per_ttl_and_kept_when_zookeeper_fails():
    now = [0.0]
    calls = []

    def compute():
        calls.append(now[0])
        if len(calls) == 3:
            raise Unavailable("ZooKeeper unavailable")
        return len(calls)
    cache = TtlCache(compute, ttl_s=5.0, clock=lambda: now[0])
    assert cache.get() == 1
    now[0] = 4.9
    assert cache.get() == 1 and len(calls) == 1        # cached
    now[0] = 5.0
    assert cache.get() == 2
    now[0] = 10.0
    assert cache.get() == 2 and len(calls) == 3        # failed: the old figures stay
    now[0] = 12.0
    assert cache.get() == 2 and len(calls) == 3        # and no retry storm within the ttl
