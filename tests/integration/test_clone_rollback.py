"""Clones share a snapshot's objects copy-on-write; rollback brings a snapshot back."""
from __future__ import annotations

import hashlib
import os

from tests.integration.fixtures_cluster import collie
from tests.integration.fixtures_volumes import (qemu_io, snapshot_bytes, vdi_of, vdis,
                                                object_counts, wait_counts)

MiB = 1 << 20
OBJ = 4 * MiB


def read_vdi(node, name: str) -> bytes:
    return collie(node, "vdi", "read", name).stdout


def test_clone_writes_its_own_objects_and_shares_the_rest(cluster_factory):
    c = cluster_factory(3, copies=2)
    n0, n1, n2 = c.sheep
    # a 32 MiB VDI full of random data, then a snapshot of it
    collie(n0, "vdi", "create", "base", "32M")
    data = bytearray(os.urandom(32 * MiB))
    collie(n0, "vdi", "write", "base", input=bytes(data))
    collie(n1, "vdi", "snapshot", "-s", "gold", "base")
    digest = hashlib.sha256(snapshot_bytes(n2, "base", "gold", 0, 32 * MiB)).hexdigest()
    assert digest == hashlib.sha256(data).hexdigest()

    # clone it and write into two of the clone's eight objects, partly
    out = collie(n2, "vdi", "clone", "-s", "gold", "base", "copy").stdout.decode().strip()
    assert out == "vdi 'copy' cloned from 'base' snapshot 'gold'"
    qemu_io(n0, "copy", "write -P 0xc1 100k 64k", "write -P 0xc2 20M 1M")
    expected = bytearray(data)
    expected[100 * 1024:164 * 1024] = b"\xc1" * 64 * 1024
    expected[20 * MiB:21 * MiB] = b"\xc2" * MiB

    # the clone reads its writes and the shared rest; the snapshot is unchanged
    assert read_vdi(n1, "copy") == expected
    assert hashlib.sha256(snapshot_bytes(n0, "base", "gold", 0, 32 * MiB)).hexdigest() == digest
    assert read_vdi(n2, "base") == data

    # Used/Shared: the clone owns the two objects it wrote and shares six
    clone = vdi_of(n0, "copy")
    gold = vdi_of(n0, "base", "gold")
    assert clone["parent"] == gold["vid"] and clone["snap_id"] == 1
    assert (clone["used_bytes"], clone["shared_bytes"]) == (2 * OBJ, 6 * OBJ)
    assert (gold["used_bytes"], gold["shared_bytes"]) == (8 * OBJ, 0)
    assert (vdi_of(n0, "base")["used_bytes"], vdi_of(n0, "base")["shared_bytes"]) == (0, 8 * OBJ)
    rows = {(ln.split()[0], ln.split()[1]) if ln[0] != " " else ("", ln.split()[0]): ln
            for ln in collie(n0, "vdi", "list").stdout.decode().splitlines()[1:]}
    assert rows[("c", "copy")].split()[3:7] == ["32", "MB", "8.0", "MB"]
    assert rows[("c", "copy")].split()[7:9] == ["24", "MB"]
    assert rows[("s", "base")].split()[-1] == "gold"
    # copies 2 over 3 nodes: 8 + 2 data objects, twice
    assert sum(object_counts(c)) == 2 * 10

    # the tree shows the clone under the snapshot, beside the working VDI
    assert collie(n1, "vdi", "tree").stdout.decode().splitlines()[-3:] == [
        tree_head(gold), "|-- base (you are here)", "`-- copy (clone)"]


def tree_head(snap: dict) -> str:
    from collie.render import format_time
    return f"base [gold] {format_time(snap['created'])}"


def test_rollback_restores_a_snapshot_and_branches_the_tree(cluster_factory):
    c = cluster_factory(2, copies=2)
    n0, n1 = c.sheep
    collie(n0, "vdi", "create", "vm", "12M")
    qemu_io(n0, "vm", "write -P 1 0 12M")
    collie(n0, "vdi", "snapshot", "-s", "one", "vm")
    qemu_io(n1, "vm", "write -P 2 4M 4M")
    collie(n1, "vdi", "snapshot", "-s", "two", "vm")
    qemu_io(n0, "vm", "write -P 3 0 12M")
    wait_counts(c, [3 + 1 + 3] * 2, "three versions written")

    # roll back to the first snapshot: its content is back, the changes since are gone
    out = collie(n1, "vdi", "rollback", "-f", "-s", "one", "vm").stdout.decode().strip()
    assert out == "vdi 'vm' rolled back to snapshot 'one'"
    qemu_io(n0, "vm", "read -P 1 0 12M")
    qemu_io(n1, "vm@two", "read -P 1 0 4M", "read -P 2 4M 4M", "read -P 1 8M 4M", readonly=True)
    # the discarded working VDI's three objects were reclaimed at once
    wait_counts(c, [3 + 1] * 2, "rolled-back writes reclaimed")

    # a second branch: snapshot one has two children, snapshot two and the new working VDI
    names = {v["vid"]: v for v in vdis(n0)}
    one, two, vm = vdi_of(n0, "vm", "one"), vdi_of(n0, "vm", "two"), vdi_of(n0, "vm")
    assert two["parent"] == one["vid"] and vm["parent"] == one["vid"] and len(names) == 3
    assert vm["snap_id"] == 3
    tree = collie(n0, "vdi", "tree").stdout.decode().splitlines()
    assert [ln.split(" [")[0] if "[" in ln else ln for ln in tree] == [
        "vm", "|-- vm", "`-- vm (you are here)"]

    # writing after the rollback copies on write again; snapshot one stays as it was
    qemu_io(n1, "vm", "write -P 4 0 4k")
    qemu_io(n0, "vm@one", "read -P 1 0 12M", readonly=True)
    qemu_io(n0, "vm", "read -P 4 0 4k", "read -P 1 4k 12284k")
