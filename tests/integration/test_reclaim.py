"""Delete reclaims exactly what no live VDI references any more, in any order.

Copies 3 on 3 nodes: every node holds every object, so each node's count of data
objects is the number of distinct (vid, index) objects still referenced.
"""
from __future__ import annotations

from tests.integration.fixtures_cluster import api_json, collie
from tests.integration.fixtures_volumes import qemu_io, vdis, wait_counts

MiB = 1 << 20


def all_gone(c) -> None:
    wait_counts(c, [0, 0, 0], "everything deleted")
    assert vdis(c.sheep[0]) == []
    # the inodes went too, and the catalog forgot every vid
    assert [api_json(n, "/node")["store"]["objects"] for n in c.sheep] == [0, 0, 0]


def test_reclaim_in_several_orders(cluster_factory):
    c = cluster_factory(3, copies=3)
    n0, n1, n2 = c.sheep

    # -- order 1: snapshot first, then the clone, then the working VDI ------------------
    # write base: 4 objects
    collie(n0, "vdi", "create", "base", "16M")
    qemu_io(n0, "base", "write -P 1 0 16M")
    wait_counts(c, [4] * 3, "base written")
    # snapshot and clone share them
    collie(n1, "vdi", "snapshot", "-s", "s1", "base")
    collie(n2, "vdi", "clone", "-s", "s1", "base", "c1")
    wait_counts(c, [4] * 3, "snapshot and clone share")
    # write two objects of the clone, one of the working VDI: copies on write
    qemu_io(n1, "c1", "write -P 2 0 5M")
    qemu_io(n2, "base", "write -P 3 12M 4k")
    wait_counts(c, [7] * 3, "copies on write")
    # delete the snapshot: everything it owns is still referenced
    collie(n0, "vdi", "delete", "-s", "s1", "base")
    wait_counts(c, [7] * 3, "snapshot deleted, objects referenced")
    assert [v["name"] for v in vdis(n0)] == ["base", "c1"]
    # delete the clone: its two objects go, and the snapshot's last object nobody points at
    collie(n1, "vdi", "delete", "c1")
    wait_counts(c, [4] * 3, "clone deleted")
    # copy-on-write from the deleted snapshot frees its object in the background
    qemu_io(n2, "base", "write -P 4 0 4k")
    wait_counts(c, [4] * 3, "copy-on-write from a deleted snapshot")
    qemu_io(n0, "base", "read -P 4 0 4k", "read -P 1 4k 12284k", "read -P 3 12M 4k")
    collie(n2, "vdi", "delete", "base")
    all_gone(c)

    # -- order 2: working VDI first, then the oldest snapshot, the clone, the rest ---------
    collie(n0, "vdi", "create", "v", "8M")
    qemu_io(n0, "v", "write -P 1 0 8M")
    collie(n0, "vdi", "snapshot", "-s", "a", "v")
    qemu_io(n1, "v", "write -P 2 0 4k")
    collie(n0, "vdi", "snapshot", "-s", "b", "v")
    collie(n0, "vdi", "clone", "-s", "b", "v", "k")
    qemu_io(n2, "k", "write -P 3 4M 4k")
    wait_counts(c, [4] * 3, "a: 2 objects, b: 1, k: 1")
    collie(n1, "vdi", "delete", "v")                 # owned nothing yet
    wait_counts(c, [4] * 3, "working deleted")
    collie(n2, "vdi", "delete", "-s", "a", "v")      # a:0 was overwritten in b: freed
    wait_counts(c, [3] * 3, "snapshot a deleted")
    qemu_io(n0, "v@b", "read -P 2 0 4k", "read -P 1 4k 8188k", readonly=True)
    collie(n0, "vdi", "delete", "k")
    wait_counts(c, [2] * 3, "clone deleted")
    collie(n0, "vdi", "delete", "-s", "2", "v")      # by snapshot id
    all_gone(c)
    assert "0.0 MB" in collie(n0, "node", "info").stdout.decode().splitlines()[-1]
