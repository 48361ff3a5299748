"""Session expiry and a network partition, each sheep its own host (network namespaces)."""
from __future__ import annotations

import os

from tests.integration.fixtures_cluster import poll
from tests.integration.fixtures_netns import netns_cluster  # noqa: F401

MiB = 1 << 20


def last_members(net, via) -> set:
    return set(net.curl(net.client, via, "/cluster")["epochs"][-1]["members"])


def recovered(net, nodes) -> bool:
    states = [net.curl(net.client, n, "/node") for n in nodes]
    return len({s["epoch"] for s in states}) == 1 and all(
        s["recovery"]["state"] == "complete" and s["recovery"]["epoch"] == s["epoch"]
        for s in states)


def check_clean(net, via) -> None:
    import json
    report = json.loads(net.collie(net.client, via, "cluster", "check", "-e", "--json",
                                   check=False).stdout)
    assert report["problems"] == 0, report["details"]


def test_session_expiry_and_partition(netns_cluster):
    net = netns_cluster(3)
    n0, n1, n2 = net.sheep
    everyone = {s.node_id for s in net.sheep}
    net.curl(net.client, n0, "/cluster/format", "POST", {"copies": 3, "block_size_shift": 20})
    poll(lambda: last_members(net, n0) == everyone, 30, "epoch 1")
    net.collie(net.client, n0, "vdi", "create", "vol", "2M")
    a = os.urandom(2 * MiB)
    net.collie(net.client, n0, "vdi", "write", "vol", "0", str(len(a)), input=a)

    # -- 6. expire node 2's ZooKeeper session: drop only its packets to ZooKeeper
    net.drop_to(n2, net.zk.host, net.zk.port)
    poll(lambda: last_members(net, n0) == everyone - {n2.node_id}, 30, "node 2's session expired")
    assert net.curl(net.client, n2, "/node")["fenced"] is True
    net.heal(n2)
    # it rejoins with a new session, recovers, and serves writes again
    poll(lambda: last_members(net, n0) == everyone and
         net.curl(net.client, n2, "/node")["fenced"] is False, 40, "node 2 back")
    poll(lambda: recovered(net, net.sheep), 40, "recovery after the rejoin")
    assert net.collie(net.client, n2, "vdi", "read", "vol").stdout == a
    b = os.urandom(2 * MiB)
    net.collie(net.client, n2, "vdi", "write", "vol", "0", str(len(b)), input=b)
    assert net.collie(net.client, n0, "vdi", "read", "vol").stdout == b

    # -- 7. cut node 2 off from its peers and ZooKeeper
    net.cut(n2)
    poll(lambda: last_members(net, n0) == everyone - {n2.node_id}, 30, "node 2 partitioned")
    # the others keep serving reads and writes
    c = os.urandom(2 * MiB)
    net.collie(net.client, n1, "vdi", "write", "vol", "0", str(len(c)), input=c)
    assert net.collie(net.client, n0, "vdi", "read", "vol").stdout == c
    # the cut node, asked from inside its own host, is fenced and takes no writes
    poll(lambda: net.curl(n2.ns, n2, "/node")["fenced"] is True, 20, "node 2 fenced")
    cut_write = net.collie(n2.ns, n2, "vdi", "write", "vol", "0", "4096",
                           input=b"\xff" * 4096, check=False, timeout=6)
    assert cut_write.returncode == 2, cut_write.stderr   # refused at once, not hanging
    assert b"fenced" in cut_write.stderr
    # heal: it rejoins and converges on the newest data
    net.heal(n2)
    poll(lambda: last_members(net, n0) == everyone, 40, "node 2 rejoined")
    poll(lambda: recovered(net, net.sheep), 40, "recovery after healing")
    for node in net.sheep:
        assert net.collie(net.client, node, "vdi", "read", "vol").stdout == c
    check_clean(net, n2)
