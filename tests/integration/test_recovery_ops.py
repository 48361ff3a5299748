"""Recovery operations with real processes: a full disk, the run-time throttle,
``cluster recover disable/enable`` and the cleanup of the ZooKeeper recovery markers.

Every scenario starts nodes holding all the data (copies 3 on two nodes) and adds a fresh
node, which must then pull every object: the number of objects to recover is known.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from coordinator.layout import Layout, epoch_name
from tests.integration.fixtures_cluster import api_json, collie, poll, wait_epoch, wait_recovered

MiB = 1 << 20


def format_small(c, copies: int) -> None:
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": copies, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)


def write_vol(node, mib: int) -> bytes:
    """A VDI 'vol' of ``mib`` 1 MiB objects, all written (``mib`` + 1 objects with the inode)."""
    collie(node, "vdi", "create", "vol", f"{mib}M")
    data = os.urandom(mib * MiB)
    collie(node, "vdi", "write", "vol", "0", str(len(data)), input=data)
    return data


def progress(node) -> dict:
    return api_json(node, "/node")["recovery"]


def node_entry(answer: dict, node) -> dict:
    return next(n for n in answer["nodes"] if n["node_id"] == node.node_id)


def check_clean(node, expect_objects: int) -> None:
    report = json.loads(collie(node, "cluster", "check", "-e", "--json", check=False).stdout)
    assert report["problems"] == 0, report["details"]
    assert report["objects"] == expect_objects


@pytest.fixture
def small_fs(tmp_path):
    """``mount(path, size)`` mounts a tmpfs; ``own(sheep)`` marks a sheep that lives on it.
    Teardown (even after a failure) stops those sheep first, then unmounts."""
    mounts, owners = [], []

    def mount(path, size_mib: int):
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                               str(path)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
        mounts.append(path)
        probe = path / ".xattr-probe"
        probe.touch()
        try:
            os.setxattr(probe, "user.sheep.epoch", b"1")
        except OSError as exc:
            pytest.skip(f"tmpfs without user xattrs here: {exc}")
        finally:
            probe.unlink()
        return path

    yield mount, owners.append
    for s in owners:
        s.stop()
    for path in reversed(mounts):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_recovery_stops_before_filling_a_small_disk(cluster_factory, small_fs, tmp_path):
    mount, own = small_fs
    c = cluster_factory(2, copies=None)
    format_small(c, copies=3)
    data = write_vol(c.sheep[0], 32)                    # 33 objects, 32 MiB of data

    # a new node whose store is a 40 MiB filesystem with a 16 MiB reserve: 24 MiB usable
    reserve = 16 * MiB
    fs = mount(tmp_path / "smallfs", 40)
    small = c.add_node()
    small.dir, small.log_dir = fs / "store", c.base / "sheep2"
    small.extra_args = [*small.extra_args, "--reserve", str(reserve)]
    own(small)
    small.start()
    small.wait_ready()
    wait_epoch(c.sheep, 2)

    # its pass stops before the reserve with a message that says why
    p = poll(lambda: (lambda p: p["state"] == "stopped" and p)(progress(small)), 30,
             "recovery stopped on the small node")
    assert p["epoch"] == 2 and "RECOVERY STOPPED" in p["error"] and "reserve" in p["error"]
    out = collie(c.sheep[0], "node", "recovery").stdout.decode()
    assert "stopped" in out and "RECOVERY STOPPED" in out and small.node_id in out, out
    answer = json.loads(collie(c.sheep[0], "node", "recovery", "--json").stdout)
    assert answer["recovering"] and node_entry(answer, small)["state"] == "stopped"
    assert "RECOVERY STOPPED" in small.log_path.read_text()
    st = os.statvfs(fs)
    assert st.f_bavail * st.f_frsize >= reserve, "the store wrote into its reserve"

    # it keeps serving; no acknowledged data is lost, through any gateway
    node = api_json(small, "/node")
    assert node["epoch"] == 2 and 0 < node["store"]["objects"] < 33
    for gw in c.sheep:
        assert collie(gw, "vdi", "read", "vol", "0", str(len(data))).stdout == data
    st = os.statvfs(fs)
    assert st.f_bavail * st.f_frsize >= reserve, "reads through it wrote into its reserve"

    # more space, then 'cluster recover enable' resumes the stopped pass to the end
    subprocess.run(["mount", "-o", "remount,size=80m", str(fs)], check=True)
    assert collie(c.sheep[1], "cluster", "recover", "enable").returncode == 0
    wait_recovered(c.sheep, timeout=30)
    assert api_json(small, "/node")["store"]["objects"] == 33
    check_clean(small, expect_objects=33)


def test_throttle_is_set_at_run_time(cluster_factory):
    c = cluster_factory(2, copies=None)
    format_small(c, copies=3)
    data = write_vol(c.sheep[0], 16)                    # 17 objects
    n0 = c.sheep[0]

    out = collie(n0, "node", "recovery", "set-throttle", "--objects", "1", "--bytes", "4M")
    assert "1 objects/s" in out.stdout.decode()
    assert api_json(n0, "/recovery")["throttle"] == {"objects_per_s": 1.0,
                                                     "bytes_per_s": 4.0 * MiB}
    new = c.add_node()
    new.start()
    new.wait_ready()
    wait_epoch(c.sheep, 2)

    # 1 object/s: 17 objects take 16 s or more; watch it crawl for a few of them
    def crawling():
        answer = json.loads(collie(n0, "node", "recovery", "--json").stdout)
        e = node_entry(answer, new)
        return e["epoch"] == 2 and e["state"] == "recovering" and e["done"] >= 4 and (answer, e)
    answer, e = poll(crawling, 30, "4 objects recovered under the throttle")
    # 17 objects; the pass reads the inode maps first, and reading the inode pulls it
    # on demand, so the pass itself may count 16
    total = e["total"]
    assert total in (16, 17) and e["done"] < total
    assert time.time() - e["started"] >= 2.5, "4 objects at 1/s took less than 3 s"
    assert 0 < e["objects_per_s"] <= 2.5 and e["bytes_per_s"] > 0, e
    assert answer["throttle"]["objects_per_s"] == 1.0
    assert "Recovery throttle: 1 objects/s" in collie(n0, "node", "recovery").stdout.decode()

    # unlimited: the rest (>= 10 objects, >= 10 s at the old rate) finishes at once
    remaining = total - progress(new)["done"]
    assert remaining >= 10
    raised = time.monotonic()
    out = collie(new, "node", "recovery", "set-throttle", "--objects", "0", "--bytes", "0")
    assert "unlimited" in out.stdout.decode()
    poll(lambda: progress(new)["state"] == "complete", 30, "recovery complete once unthrottled")
    assert time.monotonic() - raised < 5.0, "raising the throttle did not speed recovery up"
    wait_recovered(c.sheep)
    assert api_json(new, "/node")["store"]["objects"] == 17
    assert collie(new, "vdi", "read", "vol", "0", str(len(data))).stdout == data


def test_recover_disable_keeps_a_new_node_empty_until_enable(cluster_factory):
    c = cluster_factory(2, copies=None)
    format_small(c, copies=3)
    data = write_vol(c.sheep[0], 8)                     # 9 objects
    n0, n1 = c.sheep

    off = collie(n0, "cluster", "recover", "disable")
    assert off.returncode == 0 and b"recovery disabled" in off.stdout
    assert api_json(n1, "/recovery")["enabled"] is False
    new = c.add_node()
    new.start()
    new.wait_ready()
    wait_epoch(c.sheep, 2)

    # the join makes an epoch, but the new node pulls nothing
    poll(lambda: progress(new)["epoch"] == 2 and progress(new)["state"] == "disabled", 30,
         "the new node's pass held back")
    p = progress(new)
    assert p["pulled"] == 0 and api_json(new, "/node")["store"]["objects"] == 0
    answer = json.loads(collie(n1, "node", "recovery", "--json").stdout)
    assert answer["state"] == "disabled" and answer["recovering"] and not answer["enabled"]
    text = collie(n1, "node", "recovery").stdout.decode()
    assert "Recovery: disabled" in text and "cluster recover enable" in text, text
    # clients are still served through it (objects recovered one by one on demand)
    assert collie(new, "vdi", "read", "vol", "0", str(MiB)).stdout == data[:MiB]
    assert progress(new)["state"] == "disabled"

    # bad usage and an action that does not apply exit non-zero and change nothing
    assert collie(n0, "cluster", "recover", "bogus", check=False).returncode == 64
    assert collie(n0, "cluster", "recover", "force", check=False).returncode == 1
    assert api_json(n0, "/recovery")["enabled"] is False

    on = collie(n1, "cluster", "recover", "enable")
    assert on.returncode == 0 and b"recovery enabled" in on.stdout
    wait_recovered(c.sheep, timeout=30)
    assert api_json(new, "/node")["store"]["objects"] == 9
    answer = json.loads(collie(n0, "node", "recovery", "--json").stdout)
    assert answer["state"] == "complete" and answer["enabled"]
    check_clean(new, expect_objects=9)
    assert collie(new, "vdi", "read", "vol", "0", str(len(data))).stdout == data


def test_old_recovery_markers_are_deleted(cluster_factory):
    from kazoo.client import KazooClient

    c = cluster_factory(2, copies=None)
    format_small(c, copies=2)
    write_vol(c.sheep[0], 4)
    live = list(c.sheep)
    # three more epochs: two joins and a clean leave, one after the other (a burst of
    # them would make one epoch)
    for n in range(2):
        node = c.add_node()
        node.start()
        node.wait_ready()
        live.append(node)
        wait_epoch(live, 2 + n)
    c.sheep[0].stop()
    live.remove(c.sheep[0])
    poll(lambda: set(api_json(live[0], "/cluster")["epochs"][-1]["members"])
         == {n.node_id for n in live}, 30, "an epoch of the live nodes")
    wait_recovered(live)
    epoch = api_json(live[0], "/node")["epoch"]
    assert epoch >= 4

    zk = KazooClient(hosts=c.zk.hosts)
    zk.start(timeout=15)
    try:
        root = Layout(c.cluster).recovery
        # only the newest complete epoch keeps its markers, one per member
        poll(lambda: zk.get_children(root) == [epoch_name(epoch)], 30,
             f"only the markers of epoch {epoch} left")
        assert set(zk.get_children(f"{root}/{epoch_name(epoch)}")) == {n.node_id for n in live}
    finally:
        zk.stop()
        zk.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
