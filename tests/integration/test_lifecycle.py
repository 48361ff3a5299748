"""Cluster lifecycle with real processes: orderly shutdown, restart, waiting for a member, force."""
from __future__ import annotations

import os

from tests.integration.fixtures_cluster import (api_json, collie, poll, wait_epoch,
                                                wait_recovered)

MiB = 1 << 20


def format_small(c, copies: int) -> None:
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": copies, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)


def cluster_state(node) -> dict:
    return api_json(node, "/cluster")


def shutdown_and_wait(c, via) -> None:
    collie(via, "cluster", "shutdown")
    poll(lambda: not any(s.running() for s in c.sheep), 30, "every sheep exited")
    for s in c.sheep:
        s.stop()            # reap; they exited by themselves


def test_shutdown_restart_and_waiting_for_a_missing_member(cluster_factory):
    c = cluster_factory(3, copies=None)
    format_small(c, copies=2)
    n0, n1, n2 = c.sheep

    # write 6 MiB of data (6 objects + inode, two copies each)
    collie(n0, "vdi", "create", "vol", "8M")
    data = os.urandom(6 * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(data)), input=data)
    wait_recovered(c.sheep)
    before = cluster_state(n0)
    assert before["state"] == "running"

    # an orderly shutdown stops every sheep
    shutdown_and_wait(c, via=n1)

    # restart them all: the same epoch, no recovery, the same data
    for s in c.sheep:
        s.start()
    for s in c.sheep:
        s.wait_ready()
    poll(lambda: cluster_state(n0)["state"] == "running", 30, "cluster running again")
    after = cluster_state(n2)
    assert after["epoch"] == before["epoch"]
    assert after["epochs"] == before["epochs"]
    wait_recovered(c.sheep)
    rec = api_json(n0, "/recovery")
    assert rec["state"] == "complete"
    assert all(n.get("pulled", 0) == 0 for n in rec["nodes"]), rec
    for s in c.sheep:
        assert collie(s, "vdi", "read", "vol", "0", str(len(data))).stdout == data

    # shut down again and bring back only two: the cluster waits for the third
    shutdown_and_wait(c, via=n0)
    for s in (n0, n1):
        s.start()
    for s in (n0, n1):
        s.wait_ready()
    state = poll(lambda: (lambda v: v if v["state"] == "waiting" else None)(
        cluster_state(n0)["format"]), 30, "cluster waiting")
    assert state["waiting_for"] == [n2.node_id]
    info = collie(n0, "cluster", "info").stdout.decode()
    assert "wait" in info.lower(), info
    # it serves reads but no writes
    assert collie(n1, "vdi", "read", "vol", "0", str(MiB)).stdout == data[:MiB]
    refused = collie(n0, "vdi", "write", "vol", "0", "4096", input=bytes(4096), check=False)
    assert refused.returncode == 2 and b"waiting for" in refused.stderr, refused.stderr

    # force: the present nodes become the next epoch and recover to full redundancy
    collie(n0, "cluster", "recover", "force")
    wait_epoch([n0, n1], before["epoch"] + 1)
    wait_recovered([n0, n1])
    assert cluster_state(n0)["state"] == "running"
    patch = os.urandom(MiB)
    collie(n1, "vdi", "write", "vol", str(2 * MiB), str(MiB), input=patch)
    expected = data[:2 * MiB] + patch + data[3 * MiB:]
    for s in (n0, n1):
        assert collie(s, "vdi", "read", "vol", "0", str(len(data))).stdout == expected
    # with copies 2 on 2 nodes, each holds every object
    assert {api_json(s, "/node")["store"]["objects"] for s in (n0, n1)} == {7}
