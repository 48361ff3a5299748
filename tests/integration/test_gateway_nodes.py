"""Gateway-only nodes (`sheep --gateway`): a member with no store that serves NBD and the
admin API and forwards every request; its join and leave move no data and make no epoch."""
from __future__ import annotations

import json

from tests.integration.fixtures_cluster import api_json, collie, node_epoch, poll
from tests.integration.fixtures_nbd import create_vdi, run, uri, wait_unlocked

MiB = 1 << 20


def epochs(node) -> list[int]:
    return [e["epoch"] for e in api_json(node, "/cluster")["epochs"]]


def objects_on(node) -> int:
    return api_json(node, "/node")["store"]["objects"]


def test_a_gateway_serves_a_vdi_and_its_coming_and_going_changes_no_epoch(cluster_factory):
    c = cluster_factory(3, copies=3)
    n0 = c.sheep[0]
    create_vdi(n0, "vm1", 64 * MiB)
    before = objects_on(n0)

    gw = c.add_node(gateway=True)
    gw.start()
    gw.wait_ready()
    poll(lambda: node_epoch(gw) == 1, 30, "the gateway to follow epoch 1")

    # collie shows the roles; the gateway has no vnodes and no store
    listed = json.loads(collie(gw, "node", "list", "--json").stdout)["nodes"]
    roles = {n["node_id"]: (n["role"], n["weight"]) for n in listed}
    assert roles[gw.node_id] == ("gateway", 0)
    assert sorted(r for r, _ in roles.values()) == ["gateway", "storage", "storage", "storage"]
    table = collie(n0, "node", "list").stdout.decode().splitlines()
    row = next(line for line in table if gw.node_id in line)
    assert row.split()[3:] == ["0", "-", "gateway"]
    me = api_json(gw, "/node")
    assert (me["role"], me["store"], me["recovery"]) == ("gateway", None, None)

    # the guest's disk through the gateway: qemu-io writes across objects, FUA and FLUSH
    run("qemu-io", "-f", "raw", "-c", "write -P 0xa1 0 1M", "-c", "write -P 0xb2 -f 7M 2M",
        "-c", "flush", uri(gw, "vm1"))
    wait_unlocked(n0, "vm1")
    # the same bytes through a storage node, and through the gateway again
    for node in (n0, gw):
        run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0xa1 0 1M", "-c", "read -P 0xb2 7M 2M",
            "-c", "read -P 0 1M 6M", uri(node, "vm1"))
    # every copy is on the storage nodes (copies 3: data objects 0, 1, 2 on each)
    assert [objects_on(n) for n in c.sheep[:3]] == [before + 3] * 3
    # and the gateway's directory holds only its identity
    assert [p.name for p in gw.dir.iterdir()] == ["sheep.json"]

    # its join and its leave made no epoch: nothing moved, nothing recovered
    assert epochs(n0) == [1]
    gw.stop()
    poll(lambda: len(api_json(n0, "/nodes")["nodes"]) == 3, 30, "the gateway to leave")
    assert epochs(n0) == [1]
    assert [node_epoch(n) for n in c.sheep[:3]] == [1, 1, 1]
    run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0xb2 7M 2M", uri(c.sheep[1], "vm1"))


def test_a_gateway_started_before_the_format_serves_once_formatted(cluster_factory):
    c = cluster_factory(2, copies=None)
    gw = c.add_node(gateway=True)
    gw.start()
    gw.wait_ready()
    collie(gw, "cluster", "format", "--copies", "2")
    poll(lambda: node_epoch(gw) == 1, 30, "epoch 1 at the gateway")
    assert [len(e["members"]) for e in api_json(gw, "/cluster")["epochs"]] == [2]
    collie(gw, "vdi", "create", "vm2", "16M")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5c 4M 4K", uri(gw, "vm2"))
    wait_unlocked(gw, "vm2")
    run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5c 4M 4K", uri(c.sheep[0], "vm2"))
