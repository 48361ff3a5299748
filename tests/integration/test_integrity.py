"""Data integrity end to end: real ZooKeeper, real sheep processes, real NBD clients.

Each test is a defect the integrity review reproduced on the old code: trimmed or
deleted data that came back after a node returned, a store of another cluster that
joined before it was refused, an old lock holder's write landing after a new holder
took the VDI.
"""
from __future__ import annotations

from tests.integration.fixtures_cluster import (api_json, collie, poll, wait_epoch,
                                                wait_recovered)
from tests.integration.fixtures_nbd import NbdSession, run, uri, wait_unlocked

MiB = 1 << 20
OBJ = 4 * MiB


def holders(c, oid: int) -> list:
    return [n for n in c.sheep if (n.dir / "obj" / f"{oid:016x}").exists()]


def qemu_io(node, name: str, *cmds: str, check: bool = True):
    """One qemu-io attach; returns once its lock is released (the next may attach anywhere)."""
    args = ["qemu-io", "-f", "raw", uri(node, name)]
    for cmd in cmds:
        args += ["-c", cmd]
    res = run(*args, check=False)
    if b"Denied by server" not in res.stdout + res.stderr:
        wait_unlocked(node, name)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {res.returncode}: {res.stdout!r} {res.stderr!r}")
    return res


def test_a_trimmed_object_never_comes_back_with_its_node(cluster_factory):
    c = cluster_factory(4, copies=3)
    n0 = c.sheep[0]
    api_json(n0, "/vdis", "POST", json={"name": "vol", "size": 16 * MiB})
    vid = api_json(n0, "/vdis/vol")["vid"]
    oid = vid << 32
    qemu_io(n0, "vol", f"write -P 0xaa 0 {OBJ}")

    # a node holding a replica of object 0 dies; the object is trimmed meanwhile
    victim = next(n for n in holders(c, oid) if n is not n0)
    victim.kill()
    wait_epoch([n for n in c.sheep if n is not victim], 2)
    qemu_io(n0, "vol", f"discard 0 {OBJ}")

    # it comes back holding its old copy; recovery must not spread it, and the next
    # allocating write must start from zeros, not from the leftover file
    victim.start()
    victim.wait_ready()
    wait_epoch(c.sheep, 3)
    wait_recovered(c.sheep)
    qemu_io(n0, "vol", "write -P 0xbb 0 4k")
    for node in c.sheep:
        qemu_io(node, "vol", "read -P 0xbb 0 4k", f"read -P 0 4k {OBJ - 4096}",
                f"read -P 0 {MiB} 4k")
    assert collie(n0, "vdi", "read", "vol", "0", str(OBJ)).stdout == \
        b"\xbb" * 4096 + bytes(OBJ - 4096)
    check = api_json(n0, "/cluster/check", "POST", json={"repair": False})
    assert check["problems"] == 0, check["details"]


def test_a_deleted_vdis_bytes_never_show_through_a_new_one_of_the_same_name(cluster_factory):
    c = cluster_factory(4, copies=3)
    n0 = c.sheep[0]
    api_json(n0, "/vdis", "POST", json={"name": "vol", "size": 8 * MiB})
    vid = api_json(n0, "/vdis/vol")["vid"]
    qemu_io(n0, "vol", f"write -P 0xaa 0 {2 * OBJ}")

    # a node holding copies is down while the VDI is deleted and a new one of the same
    # name (the same vid) is made
    victim = next(n for n in holders(c, vid << 32) if n is not n0)
    victim.kill()
    wait_epoch([n for n in c.sheep if n is not victim], 2)
    collie(n0, "vdi", "delete", "vol")
    poll(lambda: not api_json(n0, "/vdis")["vdis"], 10, "the delete")
    api_json(n0, "/vdis", "POST", json={"name": "vol", "size": 8 * MiB})
    assert api_json(n0, "/vdis/vol")["vid"] == vid

    victim.start()
    victim.wait_ready()
    wait_epoch(c.sheep, 3)
    wait_recovered(c.sheep)
    # the new VDI is all zeros, through every node, before and after a small write
    for node in c.sheep:
        qemu_io(node, "vol", f"read -P 0 0 {2 * OBJ}")
    qemu_io(n0, "vol", "write -P 0xbb 4096 512")
    for node in c.sheep:
        qemu_io(node, "vol", "read -P 0 0 4096", "read -P 0xbb 4096 512",
                f"read -P 0 4608 {OBJ - 4608}", f"read -P 0 {OBJ} {OBJ}")


def test_a_store_of_another_cluster_is_refused_before_it_joins(cluster_factory):
    a = cluster_factory(1, copies=1)
    b = cluster_factory(3, copies=3)
    stranger = a.sheep[0]
    stranger.stop()
    before = api_json(b.sheep[0], "/cluster")["epochs"]
    # cluster A's store, started against cluster B (formatted and running), with B's secret
    # (else ZooKeeper refuses it even earlier: test_zk_acl)
    stranger.zk_hosts, stranger.cluster = b.sheep[0].zk_hosts, b.sheep[0].cluster
    stranger.keys_dir = b.keys_dir
    stranger.start()
    assert stranger._proc.wait(timeout=30) == 1
    assert "belongs to cluster" in stranger.log_tail()
    # B never saw it: no epoch with it, no recovery against its foreign objects
    assert api_json(b.sheep[0], "/cluster")["epochs"] == before
    assert [m["node_id"] for m in api_json(b.sheep[0], "/nodes")["nodes"]] == \
        sorted(n.node_id for n in b.sheep)


def test_after_a_broken_lock_the_old_holder_never_writes_again(cluster_factory):
    c = cluster_factory(3, copies=3)
    n0, n1, n2 = c.sheep
    api_json(n0, "/vdis", "POST", json={"name": "vol", "size": 8 * MiB})
    with NbdSession(n0, "vol") as old:
        old.must("connect")
        old.must("pwrite", offset=0, byte=0x61, length=4096)
        # an operator breaks the lock while the holder's session is alive; a new holder
        # attaches through another node (its generation fences the old one out) and writes
        collie(n2, "vdi", "lock", "unlock", "vol")
        with NbdSession(n1, "vol") as new:
            new.must("connect")
            new.must("pwrite", offset=0, byte=0x6e, length=4096)
            new.must("flush")
            # whatever the old client still sends is refused, and changes nothing
            late = old.call("pwrite", offset=0, byte=0x6c, length=4096)
            assert not late["ok"], late
            assert new.must("pread", offset=0, length=4096)["bytes"] == [0x6e]
    for node in c.sheep:
        assert collie(node, "vdi", "read", "vol", "0", "4096").stdout == b"n" * 4096
    check = api_json(n0, "/cluster/check", "POST", json={"repair": False})
    assert check["problems"] == 0, check["details"]


def test_writes_below_min_copies_are_refused_with_a_clear_error(cluster_factory):
    c = cluster_factory(2, copies=None)
    n0, n1 = c.sheep
    api_json(n0, "/cluster/format", "POST", json={"copies": 2, "min_copies": 2})
    wait_epoch(c.sheep, 1)
    api_json(n0, "/vdis", "POST", json={"name": "vol", "size": 8 * MiB})
    collie(n0, "vdi", "write", "vol", "0", "5", input=b"hello")
    n1.kill()
    wait_epoch([n0], 2)
    # one replica left, two required: the write is refused, not held by a single copy
    proc = collie(n0, "vdi", "write", "vol", "0", "5", input=b"HELLO", check=False)
    assert proc.returncode == 2 and b"min_copies" in proc.stderr, proc.stderr
    failed = qemu_io(n0, "vol", "write -P 0x55 0 4k", check=False)
    assert b"write failed" in failed.stdout + failed.stderr
    assert collie(n0, "vdi", "read", "vol", "0", "5").stdout == b"hello"
