"""`collie vdi check` / `collie cluster check` find and repair corrupt or missing replica files."""
from __future__ import annotations

import json
import os
import re

from sheep.store.objfile import DATA_OFFSET
from tests.integration.fixtures_cluster import api, api_json, collie, poll, wait_epoch

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

    # corrupt one replica file in place (its data: bit rot) and delete another on disk
    with open(obj_path(n1, oid1), "r+b") as f:
        f.seek(DATA_OFFSET)
        f.write(b"\xde\xad\xbe\xef" * 1024)
    os.unlink(obj_path(n2, oid2))

    # -e only reports (exit 1: problems remain), naming both copies
    report = collie(n2, "vdi", "check", "vol", "-e", check=False)
    assert report.returncode == 1
    text = report.stdout.decode()
    assert f"{oid1:016x} on {n1.node_id}: corrupt" in text, text
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
        f.seek(DATA_OFFSET)
        assert f.read() == data[MiB:2 * MiB]


def corrupt(node, oid: int, offset: int, garbage: bytes) -> None:
    with open(obj_path(node, oid), "r+b") as f:
        f.seek(DATA_OFFSET + offset)
        f.write(garbage)


def file_bytes(node, oid: int) -> bytes:
    return obj_path(node, oid).read_bytes()


def test_block_checksums_tell_the_good_copy_and_no_majority_changes_nothing(cluster_factory):
    c = cluster_factory(3, copies=None)
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": 3, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vol", "2M")
    data = os.urandom(2 * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(data)), input=data)
    vid = api_json(n0, "/vdis/vol")["vid"]
    oid0, oid1 = vid << 32, vid << 32 | 1

    # two of three replicas corrupted, differently: a majority vote would pick garbage;
    # the block sums say which copy is right
    corrupt(n1, oid0, 8192, b"\x11" * 100)
    corrupt(n2, oid0, 8192, b"\x22" * 100)
    report = json.loads(collie(n0, "vdi", "check", "vol", "--json").stdout)
    assert report["repaired"] == 2 and report["no_majority"] == 0, report
    for node in c.sheep:
        assert file_bytes(node, oid0)[DATA_OFFSET:] == data[:MiB]

    # every replica corrupt in the same block: nobody holds its right bytes
    for node, junk in zip(c.sheep, (b"\x33", b"\x44", b"\x55")):
        corrupt(node, oid1, 4096 * 7 + 5, junk * 50)
    before = [file_bytes(node, oid1) for node in c.sheep]
    proc = collie(n1, "vdi", "check", "vol", check=False)
    assert proc.returncode == 1
    assert "no majority" in proc.stdout.decode(), proc.stdout
    assert [file_bytes(node, oid1) for node in c.sheep] == before   # nothing changed
    # and a read of that block fails instead of returning one of the wrong versions
    read = collie(n0, "vdi", "read", "vol", str(MiB + 4096 * 7), "4096", check=False)
    assert read.returncode != 0 and read.stdout == b""


def test_a_corrupt_copy_is_read_elsewhere_repaired_and_counted(cluster_factory):
    c = cluster_factory(3, copies=None)
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": 3, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)
    n0 = c.sheep[0]
    collie(n0, "vdi", "create", "vol", "1M")
    data = os.urandom(MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(data)), input=data)
    oid = api_json(n0, "/vdis/vol")["vid"] << 32
    corrupt(n0, oid, 0, b"\x99" * 64)

    # node 0 reads its own copy first: the bad block is caught, the bytes come from another
    # replica, and node 0's copy is repaired in the background
    assert collie(n0, "vdi", "read", "vol", "0", str(MiB)).stdout == data
    poll(lambda: file_bytes(n0, oid)[DATA_OFFSET:] == data, 10, "the corrupt copy repaired")
    metrics = api(n0, "/metrics").text
    assert re.search(r"^sheep_store_checksum_errors_total\{[^}]*\} 1\.0$", metrics, re.M), metrics
    assert re.search(r"^sheep_repaired_blocks_total\{[^}]*\} 1\.0$", metrics, re.M), metrics


def test_the_scrub_finds_and_repairs_corruption_nobody_reads(cluster_factory):
    c = cluster_factory(3, copies=None, sheep_args=["--scrub-rate", str(64 * MiB),
                                                    "--scrub-interval", "0.2"])
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": 3, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)
    n0, n1 = c.sheep[0], c.sheep[1]
    collie(n0, "vdi", "create", "vol", "1M")
    data = os.urandom(MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(data)), input=data)
    oid = api_json(n0, "/vdis/vol")["vid"] << 32
    corrupt(n1, oid, 12345, b"\x77" * 10)
    poll(lambda: file_bytes(n1, oid)[DATA_OFFSET:] == data, 30, "the scrub to repair node 1")
    scrub = api_json(n1, "/node")["scrub"]
    assert scrub["corrupt_objects"] >= 1 and scrub["repaired_blocks"] >= 1, scrub
