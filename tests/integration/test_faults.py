"""Fault tests with real processes, a real ZooKeeper and data verified through NBD.

Each test is a narrative: start a cluster, write, break something, check that every
acknowledged write reads back and that redundancy comes back.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.integration.fixtures_cluster import (api_json, collie, poll, wait_epoch,
                                                wait_recovered)

MiB = 1 << 20
DEBIAN_PY = "/usr/bin/python3"

# A continuous writer/verifier over NBD (libnbd is built for Debian's python only).
# It writes sequence-numbered 64 KiB blocks round-robin, one at a time, records the
# last acknowledged sequence of every block, and on stop flushes and verifies them all.
WRITER = r'''
import json, os, struct, sys, time
import nbd
uri, stop_file, out_file, nblocks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
BS = 64 * 1024
def block(seq, idx):
    return struct.pack("<QQ", seq, idx) * (BS // 16)
h = nbd.NBD()
h.connect_uri(uri)
acked, errors, seq = {}, [], 0
progress = out_file + ".progress"
while not os.path.exists(stop_file):
    seq += 1
    idx = seq % nblocks
    try:
        h.pwrite(block(seq, idx), idx * BS)
        acked[idx] = seq
    except nbd.Error as e:
        errors.append(f"seq {seq}: {e}")
    if seq % 16 == 0:
        with open(progress + ".tmp", "w") as f:
            f.write(str(seq))
        os.replace(progress + ".tmp", progress)
h.flush()
bad = [idx for idx, s in acked.items() if h.pread(BS, idx * BS) != block(s, idx)]
h.shutdown()
json.dump({"writes": seq, "errors": errors, "mismatches": bad,
           "acked": {str(k): v for k, v in acked.items()}}, open(out_file, "w"))
'''

VERIFY = r'''
import json, struct, sys
import nbd
uri, acked = sys.argv[1], json.load(open(sys.argv[2]))["acked"]
BS = 64 * 1024
h = nbd.NBD()
h.connect_uri(uri)
bad = [i for i, s in acked.items()
       if h.pread(BS, int(i) * BS) != struct.pack("<QQ", s, int(i)) * (BS // 16)]
h.shutdown()
print(json.dumps(bad))
'''


class NbdWriter:
    def __init__(self, tmp_path, node, name: str, nblocks: int):
        self.dir = tmp_path
        (tmp_path / "writer.py").write_text(WRITER)
        self.stop_file = tmp_path / "stop"
        self.out = tmp_path / "writer.json"
        self.uri = f"nbd://127.0.0.1:{node.nbd_port}/{name}"
        self.proc = subprocess.Popen([DEBIAN_PY, str(tmp_path / "writer.py"), self.uri,
                                      str(self.stop_file), str(self.out), str(nblocks)],
                                     stderr=subprocess.PIPE)

    def writes(self) -> int:
        try:
            return int((self.dir / "writer.json.progress").read_text())
        except (OSError, ValueError):
            return 0

    def wait_writes(self, n: int, timeout: float = 60) -> None:
        poll(lambda: self.writes() >= n or self.proc.poll() is not None, timeout,
             f"{n} acknowledged writes")
        assert self.proc.poll() is None, self.proc.stderr.read().decode()

    def finish(self) -> dict:
        self.stop_file.touch()
        _, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err.decode()
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def verify_via(self, node, name: str) -> list:
        (self.dir / "verify.py").write_text(VERIFY)
        uri = f"nbd://127.0.0.1:{node.nbd_port}/{name}"
        out = subprocess.run([DEBIAN_PY, str(self.dir / "verify.py"), uri, str(self.out)],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()
        return json.loads(out.stdout)


def format_small(c, copies: int) -> None:
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": copies, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)


def check_clean(node, expect_objects: int | None = None) -> dict:
    """`collie cluster check -e`: every placed replica present and identical."""
    report = json.loads(collie(node, "cluster", "check", "-e", "--json", check=False).stdout)
    assert report["problems"] == 0, report["details"]
    if expect_objects is not None:
        assert report["objects"] == expect_objects
    return report


needs_libnbd = pytest.mark.skipif(not os.path.exists(DEBIAN_PY) or subprocess.run(
    [DEBIAN_PY, "-c", "import nbd"], capture_output=True).returncode != 0,
    reason="python3-libnbd for /usr/bin/python3 is not installed")


@needs_libnbd
def test_sigkill_replica_during_continuous_nbd_writes(cluster_factory, tmp_path):
    c = cluster_factory(3, copies=None)
    format_small(c, copies=2)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vol", "8M")
    writer = NbdWriter(tmp_path, n0, "vol", nblocks=128)
    try:
        # let the client write and verify continuously, then SIGKILL a replica
        writer.wait_writes(200)
        n2.kill()
        # the writer keeps going through the new epoch without an error
        wait_epoch([n0, n1], 2)
        done = writer.writes()
        writer.wait_writes(done + 200)
        result = writer.finish()
    finally:
        writer.kill()
    assert result["errors"] == [] and result["mismatches"] == []
    # every acknowledged write reads back through the other gateway too
    wait_recovered([n0, n1])
    assert writer.verify_via(n1, "vol") == []
    # full redundancy on the two survivors: 8 data objects + the inode, 2 copies each
    check_clean(n1, expect_objects=9)
    assert {api_json(n, "/node")["store"]["objects"] for n in (n0, n1)} == {9}


def test_stopped_node_catches_up_on_overwritten_objects(cluster_factory):
    c = cluster_factory(3, copies=None)
    format_small(c, copies=3)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vol", "4M")
    old = os.urandom(4 * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(old)), input=old)

    # stop node 2, overwrite every object of the VDI, restart node 2
    n2.stop()
    wait_epoch([n0, n1], 2)
    new = os.urandom(4 * MiB)
    collie(n1, "vdi", "write", "vol", "0", str(len(new)), input=new)
    n2.start()
    n2.wait_ready()
    # at once, before its recovery is done, and after: every gateway reads the new data
    assert collie(n2, "vdi", "read", "vol", "0", str(len(new))).stdout == new
    wait_epoch(c.sheep, 3)
    wait_recovered(c.sheep)
    for node in c.sheep:
        assert collie(node, "vdi", "read", "vol", "0", str(len(new))).stdout == new
    check_clean(n2, expect_objects=5)


def test_rotate_every_replica_in_waves(cluster_factory):
    c = cluster_factory(3, copies=None)
    format_small(c, copies=2)
    collie(c.sheep[0], "vdi", "create", "vol", "6M")
    data = os.urandom(6 * MiB)
    collie(c.sheep[0], "vdi", "write", "vol", "0", str(len(data)), input=data)
    live = list(c.sheep)
    for wave in range(3):
        # add one node and kill one of the original ones at the same time
        new = c.add_node()
        new.start()
        victim = live.pop(0)
        victim.kill()
        live.append(new)
        new.wait_ready()
        poll(lambda: all({m for m in api_json(n, "/cluster")["epochs"][-1]["members"]}
                         == {x.node_id for x in live} for n in live), 30,
             f"wave {wave}: an epoch of the live nodes")
        wait_recovered(live)
        # checksums: every placed replica present and identical, and the data reads back
        check_clean(live[0], expect_objects=7)
        assert collie(live[-1], "vdi", "read", "vol", "0", str(len(data))).stdout == data
    # none of the original nodes is left
    assert not {s.node_id for s in c.sheep[:3]} & {s.node_id for s in live}


def test_kill_two_of_five_with_three_copies(cluster_factory):
    c = cluster_factory(5, copies=None)
    format_small(c, copies=3)
    collie(c.sheep[0], "vdi", "create", "vol", "8M")
    data = os.urandom(8 * MiB)
    collie(c.sheep[0], "vdi", "write", "vol", "0", str(len(data)), input=data)
    # kill two nodes at once
    c.sheep[3].kill()
    c.sheep[4].kill()
    live = c.sheep[:3]
    poll(lambda: len(api_json(live[0], "/cluster")["epochs"][-1]["members"]) == 3, 30,
         "an epoch of the three survivors")
    wait_recovered(live)
    for node in live:
        assert collie(node, "vdi", "read", "vol", "0", str(len(data))).stdout == data
    # full redundancy again: 3 copies of 9 objects on 3 nodes = every node holds all
    check_clean(live[1], expect_objects=9)
    assert {api_json(n, "/node")["store"]["objects"] for n in live} == {9}


def test_sigstopped_node_is_fenced_and_converges(cluster_factory):
    c = cluster_factory(3, copies=None)
    format_small(c, copies=3)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vol", "4M")
    first = os.urandom(4 * MiB)
    collie(n0, "vdi", "write", "vol", "0", str(len(first)), input=first)

    # SIGSTOP node 2 for longer than its session timeout; writes go on without it
    n2.signal(signal.SIGSTOP)
    try:
        wait_epoch([n0, n1], 2, timeout=30)
        second = os.urandom(4 * MiB)
        collie(n0, "vdi", "write", "vol", "0", str(len(second)), input=second)
    finally:
        n2.signal(signal.SIGCONT)
    # it notices the lost session (fenced), rejoins in a new epoch and converges
    poll(lambda: "FENCED" in n2.log_path.read_text(), 30, "node 2 fenced")
    wait_epoch(c.sheep, 3, timeout=40)
    wait_recovered(c.sheep)
    # no write of the old epoch survives on it: every copy is the newest one
    check_clean(n2, expect_objects=5)
    for node in c.sheep:
        assert collie(node, "vdi", "read", "vol", "0", str(len(second))).stdout == second
    assert api_json(n2, "/node")["fenced"] is False


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
