"""The sheep daemon process: clean stop on SIGTERM, identity kept across restarts."""
from __future__ import annotations

import signal

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
    assert "# TYPE sheep_objects gauge" in metrics

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
