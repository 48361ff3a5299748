"""Snapshots through real NBD clients on a real cluster: nine rounds, NAME@TAG and NAME@ID
exports, the list and tree, and every error's exit code and message."""
from __future__ import annotations

import subprocess

from tests.integration.fixtures_cluster import api_json, collie, poll
from tests.integration.fixtures_nbd import attached
from tests.integration.fixtures_volumes import (libnbd, nbd_uri, qemu_io, stderr_line, vdi_of,
                                                vdis)

MiB = 1 << 20


def test_nine_rounds_of_write_and_snapshot_through_nbd(cluster_factory):
    c = cluster_factory(3, copies=2)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vol", "16M")
    home = vdi_of(n0, "vol")["vid"]

    # nine rounds: write pattern i over the first MiB through NBD, then snapshot tag i
    for i in range(1, 10):
        qemu_io(c.sheep[i % 3], "vol", f"write -P {i} 0 1M")
        out = collie(c.sheep[(i + 1) % 3], "vdi", "snapshot", "-s", str(i), "vol")
        assert out.stdout.decode().strip() == f"vdi 'vol' snapshot '{i}' created"

    # the working VDI reads pattern 9; each snapshot export (by tag and by id) its own
    qemu_io(n0, "vol", "read -P 9 0 1M", "read -P 0 1M 15M")
    for i in range(1, 10):
        qemu_io(c.sheep[i % 3], f"vol@{i}", f"read -P {i} 0 1M", readonly=True)
    assert api_json(n1, "/vdis/vol/snapshots/4")["snap_id"] == 4

    # snapshot ids run 1..9 on vids home..home+8 (a snapshot keeps its vid); the working VDI
    # moved to the next vid of the run and will give id 10
    listed = [v for v in vdis(n2) if v["name"] == "vol"]
    snaps = [v for v in listed if v["snapshot"]]
    assert [(v["snap_id"], v["tag"], v["vid"]) for v in snaps] == [
        (i, str(i), home + i - 1) for i in range(1, 10)]
    working = vdi_of(n2, "vol")
    assert (working["vid"], working["snap_id"], working["parent"]) == (home + 9, 10, home + 8)
    # each snapshot owns the one object it wrote; the working VDI shares it
    assert all(v["used_bytes"] == 4 * MiB and v["shared_bytes"] == 0 for v in snaps[1:])
    assert (working["used_bytes"], working["shared_bytes"]) == (0, 4 * MiB)

    text = collie(n0, "vdi", "list").stdout.decode().splitlines()
    assert text[0].split() == ["Name", "Id", "Size", "Used", "Shared", "Creation", "time",
                               "VDI", "id", "Copies", "Tag"]
    assert [ln.split()[0] for ln in text[1:]] == ["s"] * 9 + ["vol"]
    assert text[-1].split()[:4] == ["vol", "10", "16", "MB"]

    tree = collie(n0, "vdi", "tree").stdout.decode().splitlines()
    assert tree[0].startswith("vol [1] ") and tree[-1].endswith("`-- vol (you are here)")
    assert len(tree) == 10


def test_snapshot_exports_are_read_only_and_shared_by_readers(cluster_factory):
    c = cluster_factory(2, copies=2)
    n0, n1 = c.sheep
    collie(n0, "vdi", "create", "ro", "8M")
    qemu_io(n0, "ro", "write -P 0x5a 0 64k")
    collie(n0, "vdi", "snapshot", "-s", "base", "ro")

    # a write to the snapshot export gets EPERM; two readers hold it at once
    out = libnbd("""
import json, sys, nbd
a, b = nbd.NBD(), nbd.NBD()
a.set_strict_mode(0)
a.connect_uri(sys.argv[1]); b.connect_uri(sys.argv[2])
out = {"ro": a.is_read_only(), "a": a.pread(4, 0).hex(), "b": b.pread(4, 0).hex()}
try:
    a.pwrite(b"x" * 512, 0)
    out["write"] = "ok"
except nbd.Error as e:
    out["write"] = e.errno if isinstance(e.errno, str) else str(e.errno)
print(json.dumps(out))
""", nbd_uri(n0, "ro@base"), nbd_uri(n1, "ro@1"))
    assert out == {"ro": 1, "a": "5a5a5a5a", "b": "5a5a5a5a", "write": out["write"]}
    assert out["write"] in ("EPERM", "1"), out
    qemu_io(n1, "ro@base", "read -P 0x5a 0 64k", readonly=True)


def test_errors_have_exit_codes_and_one_line(cluster_factory):
    c = cluster_factory(2, copies=2)
    n0, n1 = c.sheep
    collie(n0, "vdi", "create", "e", "8M")
    collie(n0, "vdi", "snapshot", "-s", "t1", "e")

    # duplicate tag: already exists
    p = collie(n1, "vdi", "snapshot", "-s", "t1", "e", check=False)
    assert p.returncode == 3 and "already has a snapshot tagged 't1'" in stderr_line(p)
    # clone of a working VDI: only snapshots
    p = collie(n0, "vdi", "clone", "e", "e2", check=False)
    assert p.returncode == 1 and "only snapshots can be cloned" in stderr_line(p)
    # unknown tag, unknown VDI: not found
    for args in (("clone", "-s", "nope", "e", "e2"), ("rollback", "-f", "-s", "nope", "e"),
                 ("delete", "-s", "nope", "e"), ("snapshot", "-s", "x", "nosuch")):
        p = collie(n0, "vdi", *args, check=False)
        assert p.returncode == 5, (args, p.stderr)
        assert "not found" in stderr_line(p)
    # clone onto an existing name
    p = collie(n0, "vdi", "clone", "-s", "t1", "e", "e", check=False)
    assert p.returncode == 3 and "already exists" in stderr_line(p)
    # usage: no tag for snapshot
    p = collie(n0, "vdi", "snapshot", "e", check=False)
    assert p.returncode == 64 and stderr_line(p)
    # rollback without -f on a non-terminal: not confirmed
    p = collie(n0, "vdi", "rollback", "-s", "t1", "e", check=False)
    assert p.returncode == 1 and "not confirmed" in stderr_line(p)

    # rollback and delete of an attached VDI are refused; the client keeps working
    holder = subprocess.Popen(["qemu-io", "-f", "raw", nbd_uri(n1, "e")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        poll(lambda: "e" in attached(n0), what="e attached")
        for args in (("rollback", "-f", "-s", "t1", "e"), ("delete", "e")):
            p = collie(n0, "vdi", *args, check=False)
            assert p.returncode == 1, (args, p.stderr)
            assert "attached" in stderr_line(p)
    finally:
        holder.communicate(b"write -P 7 0 4k\nquit\n", timeout=30)
    qemu_io(n0, "e", "read -P 7 0 4k", "read -P 0 4k 4k")
    qemu_io(n0, "e@t1", "read -P 0 0 4k", readonly=True)
