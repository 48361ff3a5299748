"""`collie vdi alter-copy NAME -c N`: raising and lowering the copies of a VDI and its
snapshots; recovery makes or retires replicas, `cluster check -e` stays clean, data stays."""
from __future__ import annotations

import hashlib
import json
import os

from coordinator.ring import Member, Ring
from tests.integration.fixtures_cluster import api_json, collie, node_epoch, wait_recovered
from tests.integration.fixtures_nbd import run, uri

MiB = 1 << 20


def held(node) -> set[int]:
    return {int(p.name, 16) for p in (node.dir / "obj").iterdir() if len(p.name) == 16}


def ring_of(node) -> Ring:
    nodes = api_json(node, "/nodes")["nodes"]
    return Ring([Member.from_dict({k: v for k, v in n.items() if k in Member.__dataclass_fields__})
                 for n in nodes])


def copies_count(c, oids) -> dict[int, int]:
    stores = [held(n) for n in c.sheep]
    return {oid: sum(oid in s for s in stores) for oid in oids}


def check_clean(node) -> dict:
    report = json.loads(collie(node, "cluster", "check", "-e", "--json").stdout)
    assert report["problems"] == 0, report
    return report


def test_alter_copy_2_3_1_keeps_data_and_check_clean(cluster_factory, tmp_path):
    c = cluster_factory(4, copies=None)
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": 2, "block_size_shift": 20})
    n0, n1 = c.sheep[0], c.sheep[1]
    collie(n0, "vdi", "create", "vol", "16M")
    base = os.urandom(16 * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(base)), input=base)
    # a snapshot, then new data in the working VDI: the family has two vids
    collie(n0, "vdi", "snapshot", "-s", "s1", "vol")
    top = os.urandom(4 * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(top)), input=top)
    data = top + base[len(top):]
    wait_recovered(c.sheep)
    entries = [e for e in api_json(n0, "/vdis")["vdis"] if e["name"] == "vol"]
    assert len(entries) == 2
    oids = set().union(*(held(n) for n in c.sheep))
    assert set(copies_count(c, oids).values()) == {2}

    for copies in (3, 1):
        epoch = node_epoch(n0)
        # change through another node than the writer; collie waits for the recovery
        out = collie(n1, "vdi", "alter-copy", "vol", "-c", str(copies))
        assert f"-> {copies}".encode() in out.stdout, out.stdout
        assert b"done" in out.stdout
        assert out.stderr, "progress is shown on stderr"
        wait_recovered(c.sheep)
        assert node_epoch(n0) == epoch + 1                       # one new epoch, same members
        for e in api_json(n0, "/vdis")["vdis"]:
            assert e["copies"] == copies, e                      # the snapshot too
            # reported as reached only once that epoch's recovery is complete everywhere
            assert e["copies_epoch"] == epoch + 1 and not e["copies_recovering"], e
        # each object is on exactly the ring's first N nodes after the stale area is purged
        ring = ring_of(n0)
        placed = {oid: {m.node_id for m in ring.replicas(oid, copies)} for oid in oids}
        actual = {oid: {n.node_id for n in c.sheep if oid in held(n)} for oid in oids}
        assert actual == placed
        check_clean(n0)
        for node in c.sheep:
            read = collie(node, "vdi", "read", "vol", "0", str(len(data))).stdout
            assert hashlib.md5(read).hexdigest() == hashlib.md5(data).hexdigest()
        # the snapshot, over NBD: its own bytes
        out_file = tmp_path / f"s1-{copies}.raw"
        run("nbdcopy", uri(c.sheep[copies], "vol@s1"), out_file)
        assert hashlib.md5(out_file.read_bytes()).hexdigest() == hashlib.md5(base).hexdigest()

    # bad input: one line, usage exit; an unknown VDI is "not found"
    bad = collie(n0, "vdi", "alter-copy", "vol", "-c", "0", check=False)
    assert bad.returncode == 64 and len(bad.stderr.decode().strip().splitlines()) == 1
    gone = collie(n0, "vdi", "alter-copy", "nope", "-c", "2", check=False)
    assert gone.returncode == 5, gone.stderr
    same = collie(n0, "vdi", "alter-copy", "vol", "-c", "1")
    assert b"already has 1 copies" in same.stdout
