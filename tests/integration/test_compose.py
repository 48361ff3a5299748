"""The docker-compose deployment on a real Docker engine (compose/, docs/deployment.md).

Every test gets a fresh cluster (ZooKeeper + 3 sheep in zones zone1..3, copies 3) under its
own compose project, built from the images `compose/cluster.sh build` makes; the host talks
to it only through ports published on 127.0.0.1, with the host's `collie`, `qemu-io` and
`qemu-img`, as an operator would.  Faults are injected with the Docker SDK: kill/start,
pause/unpause, network disconnect/connect, restart of the ZooKeeper container.

All of them run in one xdist group (`--dist loadgroup`): they share the engine and the CPU.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from tests.integration.fixtures_docker import (  # noqa: F401  (fixtures)
    ComposeCluster, build_images, compose_cluster, compose_images, poll, qemu_io_failed)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]

MiB = 1 << 20
OBJ = 4 * MiB                         # default object size (block_size_shift 22)
IDS = {s: f"{s}:7100" for s in ("sheep1", "sheep2", "sheep3")}


# GET /node from inside a container, with the admin token its sheep keeps in the keys volume
IN_CONTAINER_NODE = (
    "import glob, urllib.request as u; t = open(glob.glob('/etc/sheepdog/*/admin.token')[0])"
    ".read().strip(); r = u.Request('http://127.0.0.1:7000/node', headers={'Authorization': "
    "'Bearer ' + t}); print(u.urlopen(r, timeout=3).read().decode())")


def objects_for(size: int) -> int:
    """Data objects of a fully written VDI of ``size`` bytes, plus its inode."""
    return size // OBJ + 1


def create_vdi(c: ComposeCluster, name: str, size: int, service: str = "sheep1") -> None:
    out = c.collie(service, "vdi", "create", name, str(size)).stdout.decode()
    assert name in out


def start_writer(c: ComposeCluster, service: str, vdi: str, writes: list[tuple[int, int, int]],
                 pause_ms: int) -> subprocess.Popen:
    """A host qemu-io attached through ``service`` doing ``(pattern, offset, length)`` writes,
    ``pause_ms`` apart (a client paced like a VM, so faults land between its writes)."""
    cmd = ["qemu-io", "-f", "raw", c.nbd_uri(service, vdi)]
    for pattern, offset, length in writes:
        cmd += ["-c", f"write -P {pattern} {offset} {length}", "-c", f"sleep {pause_ms}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def verify(c: ComposeCluster, service: str, vdi: str, writes: list[tuple[int, int, int]]) -> None:
    c.qemu_io(service, vdi, *[f"read -P {p} {o} {n}" for p, o, n in writes])


def store_files(c: ComposeCluster, service: str) -> list[dict]:
    """Every object file in a sheep's store volume: name and mtime."""
    script = ("import os,json\n"
              "d='/var/lib/sheepdog/obj'\n"
              "print(json.dumps([{'oid':n,'mtime':os.stat(os.path.join(d,n)).st_mtime}\n"
              "                  for n in sorted(os.listdir(d))]))\n")
    rc, out = c.in_container(service, "python3", "-c", script)
    assert rc == 0, out
    return json.loads(out)


def assert_no_write_while_out(c: ComposeCluster, service: str, left_at: float,
                              out_epoch: int) -> None:
    """No object file of ``service`` changed after it left and before its rejoin epoch."""
    rejoin, rejoined_at = _rejoin_epoch(c, service, out_epoch)
    touched = [f for f in store_files(c, service) if left_at < f["mtime"] < rejoined_at]
    assert not touched, (f"{service} stored writes while out of the cluster "
                         f"(left {left_at:.3f}, rejoined at epoch {rejoin} {rejoined_at:.3f}): "
                         f"{touched}")


def _rejoin_epoch(c: ComposeCluster, service: str, out_epoch: int) -> tuple[int, float]:
    detail = c.api("sheep1", "/cluster")
    for e in detail["epochs"]:
        if e["epoch"] > out_epoch and IDS[service] in e["members"]:
            return e["epoch"], e["created"]
    raise AssertionError(f"{service} never rejoined after epoch {out_epoch}: {detail['epochs']}")


def logs_since(c: ComposeCluster, service: str, since: float) -> str:
    return c.container(service).logs(since=int(since)).decode(errors="replace")


# -- tests ---------------------------------------------------------------------------------

def test_io_from_the_host_through_every_sheep_and_the_gateway(compose_cluster: ComposeCluster, tmp_path):
    c = compose_cluster
    listing = c.collie("sheep1", "node", "list").stdout.decode()
    for node_id in IDS.values():
        assert node_id in listing
    # the gateway is a member with no vnodes, in no epoch
    row = next(line for line in listing.splitlines() if "gateway1:7100" in line)
    assert row.split()[3:] == ["0", "-", "gateway"]
    assert c.members("sheep1") == sorted(IDS.values())
    info = c.api("sheep2", "/cluster")
    assert info["format"]["copies"] == 3 and info["state"] == "running"

    size = 64 * MiB
    create_vdi(c, "vm1", size)
    assert "vm1" in c.collie("sheep3", "vdi", "list").stdout.decode()
    src = tmp_path / "data.raw"
    src.write_bytes(os.urandom(size))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
                    c.nbd_uri("sheep1", "vm1")], check=True, capture_output=True, timeout=180)
    c.wait_unlocked("sheep1", "vm1")
    # one attacher at a time: each qemu-img exits, and its sheep unlocks a moment later,
    # before the next one attaches
    for service in (*IDS, "gateway1"):
        proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src),
                               c.nbd_uri(service, "vm1")], capture_output=True, timeout=180)
        c.wait_unlocked(service, "vm1")
        assert proc.returncode == 0, f"via {service}: {proc.stdout!r} {proc.stderr!r}"
    c.wait_full_redundancy(objects_for(size))

    # `down` without -v keeps the volumes: the same nodes come back with their data
    c.compose("down", "-t", "10")
    assert c.client.volumes.list(filters={"label": f"com.docker.compose.project={c.project}"})
    c.up()
    assert sorted(IDS.values()) == c.members("sheep1")
    c.wait_full_redundancy(objects_for(size))
    proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src),
                           c.nbd_uri("sheep3", "vm1")], capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kill_a_sheep_during_writes(compose_cluster: ComposeCluster):
    c = compose_cluster
    size = 64 * MiB
    create_vdi(c, "killme", size)
    writes = [(i + 1, i * 2 * MiB, 2 * MiB) for i in range(32)]
    base = c.node("sheep1")["store"]["objects"]
    writer = start_writer(c, "sheep1", "killme", writes, pause_ms=150)
    try:
        poll(lambda: c.node("sheep1")["store"]["objects"] >= base + 2, 30, "the first writes")
        assert writer.poll() is None, "the writer finished before the fault"
        c.container("sheep3").kill()
        c.wait_members("sheep1", [IDS["sheep1"], IDS["sheep2"]], timeout=30)
        rc, out = finish(writer)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert rc == 0 and not qemu_io_failed(out), out[-3000:]
    assert out.count("wrote ") == len(writes)
    verify(c, "sheep2", "killme", writes)

    c.container("sheep3").start()
    c.wait_healthy("sheep3")
    c.wait_full_redundancy(objects_for(size))
    verify(c, "sheep3", "killme", writes)


def test_pause_past_the_session_timeout(compose_cluster: ComposeCluster):
    c = compose_cluster
    size = 32 * MiB
    create_vdi(c, "paused", size)
    c.qemu_io("sheep1", "paused", f"write -P 0x11 0 {size}")
    c.wait_full_redundancy(objects_for(size))

    left_at = time.time()
    c.pause("sheep3")
    try:
        c.wait_members("sheep1", [IDS["sheep1"], IDS["sheep2"]], timeout=30)
        out_epoch = c.node("sheep1")["epoch"]
        # the others keep serving, and these writes must not land on the paused node
        c.qemu_io("sheep2", "paused", f"write -P 0x22 0 {16 * MiB}")
    finally:
        c.container("sheep3").unpause()
    unpaused_at = time.time()
    first = poll(lambda: c.node("sheep3"), 30, "sheep3 answering after unpause")
    assert first["fenced"] or first["epoch"] > out_epoch, first
    c.wait_full_redundancy(objects_for(size))
    assert "FENCED" in logs_since(c, "sheep3", unpaused_at - 1)
    assert_no_write_while_out(c, "sheep3", left_at, out_epoch)
    c.qemu_io("sheep3", "paused", f"read -P 0x22 0 {16 * MiB}", f"read -P 0x11 {16 * MiB} {16 * MiB}")


def test_network_partition(compose_cluster: ComposeCluster):
    c = compose_cluster
    size = 32 * MiB
    create_vdi(c, "split", size)
    c.qemu_io("sheep1", "split", f"write -P 0x31 0 {size}")
    c.wait_full_redundancy(objects_for(size))

    left_at = time.time()
    c.disconnect("sheep3")
    try:
        c.wait_members("sheep1", [IDS["sheep1"], IDS["sheep2"]], timeout=30)
        out_epoch = c.node("sheep1")["epoch"]
        c.qemu_io("sheep2", "split", f"write -P 0x32 0 {8 * MiB}")
        c.qemu_io("sheep1", "split", f"read -P 0x32 0 {8 * MiB}")

        def cut_off_state():
            rc, out = c.in_container("sheep3", "python3", "-c", IN_CONTAINER_NODE)
            return rc == 0 and json.loads(out)
        poll(lambda: cut_off_state()["fenced"], 30, "sheep3 fenced while cut off")
        # a write through the cut-off node itself is refused
        rc, out = c.in_container(
            "sheep3", "bash", "-c",
            f"head -c {MiB} /dev/zero | tr '\\0' '\\167' | "
            f"timeout 60 collie -p 7000 vdi write split {8 * MiB} {MiB}")
        assert rc != 0, f"a write through the cut-off sheep3 succeeded: {out}"
    finally:
        c.connect("sheep3")
    c.wait_full_redundancy(objects_for(size))
    assert_no_write_while_out(c, "sheep3", left_at, out_epoch)
    c.qemu_io("sheep3", "split", f"read -P 0x32 0 {8 * MiB}",
              f"read -P 0x31 {8 * MiB} {24 * MiB}")


def test_zookeeper_restart(compose_cluster: ComposeCluster):
    """ZooKeeper restarts under an attached writer.  Whether the sheep keep their sessions
    (ZooKeeper back within the session timeout) or lose them (then the writer's lock goes with
    its node's session, and qemu's NBD client may reconnect and take the free lock again under
    the new one), nothing acknowledged is lost, nothing else is written, and the cluster's
    history and catalog are intact."""
    c = compose_cluster
    size = 32 * MiB
    old = 0x41
    create_vdi(c, "zkr", size)
    c.qemu_io("sheep1", "zkr", f"write -P {old:#x} 0 {size}")
    c.wait_full_redundancy(objects_for(size))
    before = c.api("sheep2", "/cluster")["epochs"]
    vdis_before = sorted((v["name"], v["vid"]) for v in c.api("sheep2", "/vdis")["vdis"])

    # 40 writes of 512 KiB that do not overlap (the first 20 MiB), each with its own pattern
    writes = [(0x50 + i, i * MiB // 2, MiB // 2) for i in range(40)]
    writer = start_writer(c, "sheep1", "zkr", writes, pause_ms=100)
    try:
        poll(lambda: any(lk.get("name") == "zkr" for lk in c.api("sheep2", "/locks")["locks"]),
             30, "the writer's lock")
        assert writer.poll() is None, "the writer finished before the fault"
        restarted_at = time.time()
        c.container("zookeeper").restart(timeout=10)
        print(f"zookeeper restarted in {time.time() - restarted_at:.1f}s")
        c.wait_healthy("zookeeper", timeout=60)
        print(f"zookeeper healthy after {time.time() - restarted_at:.1f}s")
        rc, out = finish(writer)
        print(f"writer done after {time.time() - restarted_at:.1f}s")
    finally:
        if writer.poll() is None:
            writer.kill()

    c.wait_converged()
    print(f"converged after {time.time() - restarted_at:.1f}s")
    logs = {s: logs_since(c, s, restarted_at - 1) for s in IDS}
    lost = [s for s, text in logs.items() if "new session" in text or "state=LOST" in text]
    results = re.findall(r"^(wrote|write failed)", out, flags=re.M)
    assert len(results) == len(writes), out[-3000:]
    ok = [w for w, r in zip(writes, results) if r == "wrote"]
    failed = [w for w, r in zip(writes, results) if r != "wrote"]
    errors = sorted(set(re.findall(r"^write failed: (.*)$", out, flags=re.M)))
    print(f"sessions lost on {lost or 'no node'}; {len(ok)} writes acknowledged, "
          f"{len(failed)} failed ({'; '.join(errors) or 'no error'})")

    # the history before the restart and the catalog are unchanged (a lost session may add
    # epochs after them)
    after = c.api("sheep2", "/cluster")["epochs"]
    assert after[:len(before)] == before, "epochs changed across the ZooKeeper restart"
    vdis_after = sorted((v["name"], v["vid"]) for v in c.api("sheep2", "/vdis")["vdis"])
    assert vdis_after == vdis_before
    # no stale lock: the writer is gone, so is its lock, and a new attacher gets the VDI
    poll(lambda: not any(lk.get("name") == "zkr" for lk in c.api("sheep3", "/locks")["locks"]),
         30, "the writer's lock released")
    c.wait_full_redundancy(objects_for(size))

    # every acknowledged write reads back, through NBD and through the admin API of another
    # node; a failed write left its range holding the old pattern or its own, nothing else;
    # the rest of the VDI was never written
    if ok:
        verify(c, "sheep2", "zkr", ok)
    data = c.collie("sheep3", "vdi", "read", "zkr", timeout=180).stdout
    assert len(data) == size
    for pattern, offset, length in writes:
        got = set(data[offset:offset + length])
        allowed = {pattern} if (pattern, offset, length) in ok else {old, pattern}
        assert got <= allowed, (f"write {pattern:#x} at {offset} "
                                f"({'acknowledged' if allowed == {pattern} else 'failed'}) "
                                f"reads back bytes {sorted(map(hex, got - allowed))}")
    written = writes[-1][1] + writes[-1][2]
    assert set(data[written:]) == {old}, "the unwritten tail changed"

    if not lost:
        # the sessions survived the restart: writes waited while they were in doubt and went
        # on when they were confirmed, so the attached client never saw an error
        assert not failed, f"{len(failed)} of {len(writes)} writes failed: {'; '.join(errors)}"
        assert rc == 0 and not qemu_io_failed(out), out[-3000:]


def test_warm_build_reuses_the_cache(compose_images):
    """A second build changes nothing the first one made: every heavy layer comes from cache."""
    seconds, out = build_images()
    steps = re.split(r"^Step \d+/\d+ : ", out, flags=re.M)
    heavy = [s for s in steps
             if s.startswith("RUN apt-get") or "requirements.txt" in s.split("\n")[0]]
    assert len(heavy) >= 2, out[-3000:]
    for step in heavy:
        assert "Using cache" in step.split("\n", 2)[1], f"rebuilt: {step[:300]}"
    assert seconds < 120, f"warm build took {seconds:.0f}s"
