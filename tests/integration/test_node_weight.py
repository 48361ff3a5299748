"""`collie node weight NODE W`: a run-time weight change is a new epoch that moves objects to
or from that node only, about as many as the ring's arithmetic says, and loses nothing."""
from __future__ import annotations

import hashlib
import json
import os

from coordinator.ring import Member, Ring
from tests.integration.fixtures_cluster import (api, api_json, collie, node_epoch, poll,
                                                wait_epoch, wait_recovered)

MiB = 1 << 20
OBJECTS = 128


def held(node) -> set[int]:
    """The oids of the copies in ``node``'s store (placed copies; stale ones are elsewhere)."""
    return {int(p.name, 16) for p in (node.dir / "obj").iterdir() if len(p.name) == 16}


def placement(nodes: list[dict], oids, copies: int) -> dict[str, set[int]]:
    """node id -> the oids the ring of these member values places on it."""
    ring = Ring([Member.from_dict({k: v for k, v in n.items() if k in Member.__dataclass_fields__})
                 for n in nodes if int(n.get("weight", 1)) > 0])
    out: dict[str, set[int]] = {n["node_id"]: set() for n in nodes}
    for oid in oids:
        for m in ring.replicas(oid, copies):
            out[m.node_id].add(oid)
    return out


def share_in_top(weights: dict[str, int], node_id: str, copies: int) -> float:
    """Probability that ``node_id`` is among ``copies`` members drawn without replacement,
    each draw proportional to weight: the ring's expectation for one object."""
    def p(pool: dict[str, int], k: int) -> float:
        if k == 0 or node_id not in pool:
            return 0.0
        total = sum(pool.values())
        hit = pool[node_id] / total
        rest = sum(w / total * p({n: x for n, x in pool.items() if n != o}, k - 1)
                   for o, w in pool.items() if o != node_id)
        return hit + rest
    return p(weights, copies)


def test_weight_change_moves_the_expected_share_only_to_that_node(cluster_factory):
    c = cluster_factory(4, copies=None)
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": 2, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)
    n0 = c.sheep[0]
    collie(n0, "vdi", "create", "vol", f"{OBJECTS}M")
    data = os.urandom(OBJECTS * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(data)), input=data)
    md5 = hashlib.md5(data).hexdigest()
    wait_recovered(c.sheep)
    before = {n.node_id: held(n) for n in c.sheep}
    oids = set().union(*before.values())
    assert len(oids) == OBJECTS + 1                     # the data objects and the inode
    epoch = node_epoch(n0)

    # bad input: weight 0 (gateway-only) and an unknown node are refused, nothing changes
    zero = collie(n0, "node", "weight", c.sheep[1].node_id, "0", check=False)
    assert zero.returncode == 64 and b"gateway" in zero.stderr, zero.stderr
    assert len(zero.stderr.decode().strip().splitlines()) == 1
    r = api(c.sheep[1], "/node/weight", "POST", json={"weight": 0})
    assert r.status_code == 400 and "gateway" in r.json()["error"], r.text
    r = api(c.sheep[1], "/node/weight", "POST", json={"weight": "heavy"})
    assert r.status_code == 400, r.text
    missing = collie(n0, "node", "weight", "no-such-node", "2", check=False)
    assert missing.returncode == 5, missing.stderr
    assert node_epoch(n0) == epoch

    # raise node 1's weight from 1 to 3, asked through node 0 (collie goes to node 1 itself)
    target = c.sheep[1]
    out = collie(n0, "node", "weight", target.node_id, "3")
    assert b"weight 1 -> 3" in out.stdout, out.stdout
    wait_epoch(c.sheep, epoch + 1)
    nodes = api_json(n0, "/nodes")["nodes"]
    assert {n["node_id"]: n["weight"] for n in nodes}[target.node_id] == 3
    listed = collie(n0, "node", "list").stdout.decode()
    assert "384" in listed, listed                      # 3 x 128 virtual nodes
    wait_recovered(c.sheep)
    expected = placement(nodes, oids, 2)
    poll(lambda: {n.node_id: held(n) for n in c.sheep} == expected, 60,
         "stores holding exactly the new ring's placement")
    after = {n.node_id: held(n) for n in c.sheep}

    # only to that node: the others only lost copies, and it gained exactly those
    gained = after[target.node_id] - before[target.node_id]
    assert before[target.node_id] <= after[target.node_id]
    lost_elsewhere = 0
    for node_id in before:
        if node_id != target.node_id:
            assert after[node_id] <= before[node_id], node_id
            lost_elsewhere += len(before[node_id] - after[node_id])
    assert lost_elsewhere == len(gained)

    # about the expected share: P(in the top 2) goes from 1/2 to share_in_top(3,1,1,1)
    weights = {n["node_id"]: 1 for n in nodes}
    weights[target.node_id] = 3
    expect = (share_in_top(weights, target.node_id, 2) - 0.5) * len(oids)   # about 39
    assert 0.6 * expect <= len(gained) <= 1.4 * expect, (len(gained), expect)
    print(f"weight 1->3 of 4 nodes, copies 2: {len(gained)} of {len(oids)} objects moved "
          f"(expected {expect:.1f})")

    # nothing lost: the replicas check clean and the bytes are the same from every node
    report = json.loads(collie(n0, "cluster", "check", "-e", "--json").stdout)
    assert report["problems"] == 0, report
    for node in c.sheep:
        read = collie(node, "vdi", "read", "vol", "0", str(len(data))).stdout
        assert hashlib.md5(read).hexdigest() == md5

    # the daemon that refused bad requests still serves, and the weight survives a lower change
    collie(n0, "node", "weight", "1", "2")
    wait_epoch(c.sheep, epoch + 2)
    wait_recovered(c.sheep)
    assert json.loads(collie(n0, "cluster", "check", "-e", "--json").stdout)["problems"] == 0
