"""The sheep daemon process: clean stop on SIGTERM, identity kept across restarts."""
from __future__ import annotations

import signal
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.fixtures_cluster import api, api_json, collie, wait_epoch


def test_sigterm_stops_cleanly_and_the_node_keeps_its_identity(cluster_factory):
    c = cluster_factory(2, copies=2)
    n0, n1 = c.sheep
    collie(n0, "vdi", "create", "v", "8M")
    collie(n0, "vdi", "write", "v", "0", "5", input=b"hello")
    node_id = api_json(n1, "/node")["node_id"]
    # Prometheus metrics name the node and its epoch
    metrics = api(n1, "/metrics").text
    assert f'sheep_epoch{{node="{node_id}"}} 1' in metrics
    assert "# TYPE sheep_store_objects gauge" in metrics

    # SIGTERM: exit code 0, the member leaves at once, the log says so
    rc = n1.stop()
    assert rc == 0
    assert "stopped" in n1.log_tail()
    wait_epoch([n0], 2)
    assert [e["members"] for e in api_json(n0, "/cluster")["epochs"]][-1] == [n0.node_id]

    # started again from the same store: same node id, and it rejoins
    n1.start()
    n1.wait_ready()
    assert api_json(n1, "/node")["node_id"] == node_id
    wait_epoch(c.sheep, 3)
    assert collie(n1, "vdi", "read", "v", "0", "5").stdout == b"hello"


def test_sigint_also_stops_cleanly(cluster_factory):
    c = cluster_factory(1, copies=1)
    node = c.sheep[0]
    node.signal(signal.SIGINT)
    assert node._proc.wait(timeout=30) == 0


def stage_counts(node) -> dict[tuple[str, tuple], float]:
    """(histogram, labels) -> observation count, parsed with the official text parser."""
    out = {}
    for family in text_string_to_metric_families(api(node, "/metrics").text):
        for sample in family.samples:
            if sample.name.endswith("_count") and family.type == "histogram":
                out[(family.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_per_stage_latency_histograms_move_under_load(cluster_factory):
    c = cluster_factory(3, copies=3)
    n0, n1 = c.sheep[0], c.sheep[1]
    api_json(n0, "/vdis", "POST", json={"name": "v", "size": 64 << 20})
    before0, before1 = stage_counts(n0), stage_counts(n1)
    writes = 64
    cmds = []
    for i in range(writes):
        cmds += ["-c", f"write -P {i % 250} {i * 65536} 4k"]
    subprocess.run(["qemu-io", "-f", "raw", f"nbd://127.0.0.1:{n0.nbd_port}/v", *cmds,
                    "-c", "flush"], check=True, capture_output=True, timeout=60)
    after0, after1 = stage_counts(n0), stage_counts(n1)

    def grew(before, after, name, **labels) -> float:
        keys = [k for k in after if k[0] == name
                and all(dict(k[1]).get(n) == v for n, v in labels.items())]
        return sum(after[k] - before.get(k, 0) for k in keys)

    # the gateway (node 0): every NBD write, its fan-outs, a round trip to each remote
    # replica per write (and per map update), the FLUSH
    assert grew(before0, after0, "sheep_nbd_request_seconds", op="write") == writes
    assert grew(before0, after0, "sheep_nbd_request_seconds", op="flush") >= 1
    assert grew(before0, after0, "sheep_gateway_seconds", op="write") >= writes
    assert grew(before0, after0, "sheep_gateway_seconds", op="flush") >= 1
    peers = {dict(k[1])["peer"] for k in after0 if k[0] == "sheep_peer_request_seconds"
             and dict(k[1]).get("op") == "write" and after0[k] > before0.get(k, 0)}
    assert len(peers) == 2
    # a remote replica: its store did every write (on the loop or through the pool), fsynced
    assert grew(before1, after1, "sheep_store_seconds", op="inline") + \
        grew(before1, after1, "sheep_store_seconds", op="pool") >= writes
    assert grew(before1, after1, "sheep_store_seconds", op="flush") >= 1
