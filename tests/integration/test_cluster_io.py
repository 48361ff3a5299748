"""A 3-node cluster of real sheep processes: replicated I/O through collie, failures, rejoin."""
from __future__ import annotations

import os

from tests.integration.fixtures_cluster import (api_json, collie, poll, wait_epoch,
                                                wait_recovered)

MiB = 1 << 20


def read_back(node, name: str, offset: int, length: int) -> bytes:
    return collie(node, "vdi", "read", name, str(offset), str(length)).stdout


def epoch_history(node) -> list:
    return [(e["epoch"], e["members"]) for e in api_json(node, "/cluster")["epochs"]]


def test_replicated_writes_survive_a_killed_node_and_a_rejoin(cluster_factory):
    c = cluster_factory(3, copies=3)
    n0, n1, n2 = c.sheep

    # create a VDI and write 20 MiB of random data at an odd offset through node 0
    collie(n0, "vdi", "create", "vol", "64M")
    data = os.urandom(20 * MiB)
    offset = 4 * MiB - 12345  # starts inside object 0, crosses several object boundaries
    collie(n0, "vdi", "write", "vol", str(offset), str(len(data)), input=data)

    # every node, as gateway, reads back the same bytes; unwritten ranges are zeros
    for node in c.sheep:
        assert read_back(node, "vol", offset, len(data)) == data
        assert read_back(node, "vol", 0, 4096) == bytes(4096)
        assert read_back(node, "vol", 40 * MiB, MiB) == bytes(MiB)

    # copies 3 on 3 nodes: each node holds the inode and the 6 data objects
    for node in c.sheep:
        assert api_json(node, "/node")["store"]["objects"] == 7

    # kill one node: the others move to epoch 2 and keep serving reads and writes
    n2.kill()
    wait_epoch([n0, n1], 2)
    assert read_back(n1, "vol", offset, len(data)) == data
    patch = os.urandom(3 * MiB)
    collie(n1, "vdi", "write", "vol", str(MiB - 7), str(len(patch)), input=patch)
    expected = bytearray(64 * MiB)
    expected[offset:offset + len(data)] = data
    expected[MiB - 7:MiB - 7 + len(patch)] = patch
    for node in (n0, n1):
        assert read_back(node, "vol", 0, 32 * MiB) == expected[:32 * MiB]
    assert epoch_history(n0) == epoch_history(n1)
    assert [len(m) for _, m in epoch_history(n0)] == [3, 2]

    # restart the killed node with its old store: it rejoins and catches up
    n2.start()
    n2.wait_ready()
    wait_epoch(c.sheep, 3)
    wait_recovered(c.sheep)
    assert read_back(n2, "vol", 0, 32 * MiB) == expected[:32 * MiB]
    histories = [epoch_history(n) for n in c.sheep]
    assert histories[0] == histories[1] == histories[2]
    assert [len(m) for _, m in histories[0]] == [3, 2, 3]
    # its outdated copies were replaced: every node holds the same objects again
    poll(lambda: len({api_json(n, "/node")["store"]["objects"] for n in c.sheep}) == 1,
         what="same object count on every node")


def test_write_in_flight_completes_when_a_replica_dies(cluster_factory):
    c = cluster_factory(3, copies=3)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "big", "256M")
    data = os.urandom(96 * MiB)
    # stop node 2 (it can no longer answer), then write through node 0: the write
    # waits for the epoch without node 2 and completes instead of failing
    n2.signal(19)  # SIGSTOP
    try:
        collie(n0, "vdi", "write", "big", "0", str(len(data)), input=data)
    finally:
        n2.kill()
    wait_epoch([n0, n1], 2)
    assert read_back(n1, "big", 0, len(data)) == data
