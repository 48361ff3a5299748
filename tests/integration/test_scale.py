"""Twenty sheep, calm under churn (issue 15, the small version of tests/bench/scale_bench.py).

Behaviour, not timings: 20 sheep in 4 zones (node i in zone ``z{i % 4}``, 5 nodes each),
copies 3.  While idle and while a client writes through NBD there is no epoch and no
ZooKeeper session is lost; two sheep of different zones SIGKILLed at once make one or two
epochs (not one per node and a few more), after which every survivor completes its recovery,
``collie cluster check -e`` is clean and the data reads back through another node; the two
restarted on their own directories and ports, the same again.
"""
from __future__ import annotations

import shutil
import time

import pytest

from tests.integration.fixtures_cluster import api, api_json, collie, poll
from tests.integration.fixtures_nbd import run, uri, wait_unlocked

pytestmark = [pytest.mark.xdist_group("scale"),
              pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils not installed")]

MiB = 1 << 20
NODES, ZONES = 20, 4
# (offset MiB, length MiB, pattern): six 4 MiB objects and a partial seventh
PATTERN = [(4 * i, 4, 0x11 * (i + 1)) for i in range(6)] + [(24, 1, 0x77)]


def newest_epoch(node) -> dict:
    return api_json(node, "/cluster")["epochs"][-1]


def session_losses(nodes) -> dict:
    """node id -> sheep_zk_session_losses_total of that node's running process."""
    out = {}
    for n in nodes:
        for line in api(n, "/metrics").text.splitlines():
            if line.startswith("sheep_zk_session_losses_total"):
                out[n.node_id] = float(line.split()[-1])
    return out


def settled(nodes) -> dict | None:
    """The newest epoch once its members are exactly ``nodes`` and every one of them has
    applied it and completed its recovery pass for it."""
    epoch = newest_epoch(nodes[0])
    if set(epoch["members"]) != {n.node_id for n in nodes}:
        return None
    for n in nodes:
        state = api_json(n, "/node")
        rec = state["recovery"]
        if state["epoch"] != epoch["epoch"] or rec["state"] != "complete" \
                or rec["epoch"] != epoch["epoch"]:
            return None
    return epoch


def check_clean(node) -> bool:
    return collie(node, "cluster", "check", "-e", check=False).returncode == 0


def read_back(node) -> None:
    """Every region of PATTERN through ``node``, verified by qemu-io (read -P)."""
    res = run("qemu-io", "-r", "-f", "raw",
              *[a for off, length, pat in PATTERN
                for a in ("-c", f"read -P {pat:#x} {off}M {length}M")], uri(node, "vol"))
    assert b"verification failed" not in res.stdout, res.stdout.decode()


def test_twenty_nodes_calm_under_kill_and_rejoin(cluster_factory):
    c = cluster_factory(NODES, copies=3, zones=[f"z{i % ZONES}" for i in range(NODES)])
    nodes = list(c.sheep)
    writer, reader = nodes[0], nodes[7]
    start = poll(lambda: settled(nodes), 60, "epoch 1 of all 20 nodes, recovered")
    assert start["epoch"] == 1
    losses = session_losses(nodes)
    assert len(losses) == NODES and not any(losses.values()), losses

    # write patterned data through node 0 (NBD)
    collie(writer, "vdi", "create", "vol", "32M")
    run("qemu-io", "-f", "raw",
        *[a for off, length, pat in PATTERN for a in ("-c", f"write -P {pat:#x} {off}M {length}M")],
        uri(writer, "vol"))
    wait_unlocked(writer, "vol")

    # idle: a window in which nothing may happen (a measurement, not a wait)
    time.sleep(3)
    assert newest_epoch(reader)["epoch"] == 1, "an epoch while idle or writing"
    assert session_losses(nodes) == losses, "a ZooKeeper session lost while idle or writing"

    # kill two nodes of different zones at once (not the clients' nodes, not the leader)
    leader = api_json(reader, "/cluster")["leader"]
    candidates = [n for n in reversed(nodes) if n not in (writer, reader) and n.node_id != leader]
    victims = [candidates[0], next(n for n in candidates if n.zone != candidates[0].zone)]
    survivors = [n for n in nodes if n not in victims]
    for v in victims:
        v.signal(9)
    for v in victims:
        v.kill()                                    # reap
    after_kill = poll(lambda: settled(survivors), 60,
                      "recovery complete on the 18 survivors at an epoch without the killed")
    assert after_kill["epoch"] - 1 in (1, 2), \
        f"the kill of 2 nodes made {after_kill['epoch'] - 1} epochs"
    poll(lambda: check_clean(reader), 60, "'collie cluster check -e' clean after the kill",
         interval=1)
    assert newest_epoch(reader)["epoch"] == after_kill["epoch"], "an epoch after recovery"
    read_back(reader)
    wait_unlocked(reader, "vol")

    # restart them on their own directories and ports
    for v in victims:
        v.start()
    for v in victims:
        v.wait_ready()
    after_rejoin = poll(lambda: settled(nodes), 60,
                        "recovery complete on all 20 nodes after the rejoin")
    assert after_rejoin["epoch"] - after_kill["epoch"] in (1, 2), \
        f"the rejoin of 2 nodes made {after_rejoin['epoch'] - after_kill['epoch']} epochs"
    poll(lambda: check_clean(reader), 60, "'collie cluster check -e' clean after the rejoin",
         interval=1)
    read_back(victims[0])                           # through a node that was away
    assert newest_epoch(reader)["epoch"] == after_rejoin["epoch"], "an epoch after recovery"

    # an orderly shutdown: every sheep exits, no cascade of epochs on the way
    collie(reader, "cluster", "shutdown")
    poll(lambda: not any(n.running() for n in nodes), 60, "every sheep exited")
