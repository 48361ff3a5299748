"""`collie vdi check` / `collie cluster check` find and repair corrupt or missing replica files."""
from __future__ import annotations

import json
import os

from tests.integration.fixtures_cluster import api_json, collie, wait_epoch

MiB = 1 << 20


def obj_path(node, oid: int):
    return node.dir / "obj" / f"{oid:016x}"


def test_check_finds_and_repairs_corrupt_and_deleted_replicas(cluster_factory):
    c = cluster_factory(3, copies=None)
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": 3, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vol", "4M")
    data = os.urandom(4 * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(data)), input=data)
    vid = api_json(n0, "/vdis/vol")["vid"]
    oid1, oid2 = vid << 32 | 1, vid << 32 | 2

    # a healthy VDI checks clean
    clean = json.loads(collie(n0, "vdi", "check", "vol", "-e", "--json").stdout)
    assert (clean["objects"], clean["problems"]) == (5, 0)

    # corrupt one replica file in place and delete another on disk
    with open(obj_path(n1, oid1), "r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 1024)
    os.unlink(obj_path(n2, oid2))

    # -e only reports (exit 1: problems remain), naming both copies
    report = collie(n2, "vdi", "check", "vol", "-e", check=False)
    assert report.returncode == 1
    text = report.stdout.decode()
    assert f"{oid1:016x} on {n1.node_id}: divergent" in text, text
    assert f"{oid2:016x} on {n2.node_id}: missing" in text, text
    assert obj_path(n2, oid2).exists() is False

    # without -e it repairs them from the good copies
    fixed = json.loads(collie(n0, "vdi", "check", "vol", "--json").stdout)
    assert (fixed["problems"], fixed["repaired"], fixed["lost"]) == (2, 2, 0)
    after = json.loads(collie(n1, "cluster", "check", "-e", "--json").stdout)
    assert (after["objects"], after["problems"]) == (5, 0)

    # every node, reading its own copy first, serves the original bytes
    for node in c.sheep:
        assert collie(node, "vdi", "read", "vol", "0", str(len(data))).stdout == data
    with open(obj_path(n1, oid1), "rb") as f:
        assert f.read() == data[MiB:2 * MiB]
