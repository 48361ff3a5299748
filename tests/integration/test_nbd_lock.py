"""Attaching is not the write right: real NBD clients on a real 3-node cluster.

Any number of connections attach a working VDI and read.  The first write, trim or
zeroes of a connection takes the VDI's lock (the write right, with a new generation).
A connection that writes while another holds it waits: the holder hands over only once
it is quiescent and clean (every write flushed, idle 0.2 s here), never while dirty
(the asker fails after 3 s here).  The old holder then reads and flushes, but its writes
fail with EPERM.  `collie vdi lock unlock` breaks the lock and drops the holder's client;
a dead holder node's lock goes with its ZooKeeper session (4 s here).
"""
from __future__ import annotations

import shutil
import time

import pytest

from tests.integration.fixtures_cluster import collie, entry_json, poll
from tests.integration.fixtures_nbd import (MiB, NbdSession, attached, create_vdi, locks,
                                            module_cluster, run, uri, wait_detached,
                                            wait_unlocked)

SESSION_TIMEOUT_S = 4     # the cluster fixture's --session-timeout
HANDOFF_TIMEOUT_S = 3
HANDOFF_IDLE_S = 0.2

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils not installed")


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    yield from module_cluster(request, tmp_path_factory, nodes=3, copies=3, sheep_args=[
        "--handoff-timeout", str(HANDOFF_TIMEOUT_S), "--handoff-idle", str(HANDOFF_IDLE_S)])


def qemu_io(node, name, *cmds, check=True):
    args = [a for c in cmds for a in ("-c", c)]
    return run("qemu-io", "-f", "raw", uri(node, name), *args, check=check)


def lock_table(node) -> list[list[str]]:
    return [line.split() for line in collie(node, "vdi", "lock", "list").stdout.decode()
            .splitlines()]


def test_many_attach_and_read_one_writes_and_the_right_moves_only_when_clean(cluster):
    a, b, c = cluster.sheep
    create_vdi(a, "shared", 8 * MiB)

    with NbdSession(a, "shared") as first, NbdSession(b, "shared") as second:
        # two clients attach, through two nodes; neither holds the write right yet
        first.must("connect")
        second.must("connect")
        poll(lambda: "shared" in attached(c), 10, "the attachments to show")
        assert "shared" not in locks(c)

        # the first write takes it: collie shows holder, generation and one standby
        first.must("pwrite", offset=0, length=4096, byte=0x61)
        lk = entry_json(collie(c, "vdi", "lock", "list", "--json"))["locks"][0]
        assert (lk["name"], lk["node_id"]) == ("shared", a.node_id)
        assert [s["node_id"] for s in lk["standbys"]] == [b.node_id]
        header, row = lock_table(c)
        assert header == ["VDI", "Owner", "Client", "Since", "Gen", "Standbys"]
        assert row[:3] == ["shared", a.node_id, lk["client"]] and row[-2:] == [
            str(lk["generation"]), "1"]

        # the standby reads what the holder wrote
        assert second.must("pread", offset=0, length=4096)["bytes"] == [0x61]

        # while the holder is dirty (no FLUSH since its write) the standby's write waits
        # and then fails; the holder was never pre-empted and goes on writing
        started = time.monotonic()
        refused = second.call("pwrite", offset=MiB, length=4096, byte=0x62)
        assert not refused["ok"] and refused["errno"] == "EIO", refused
        assert time.monotonic() - started >= HANDOFF_TIMEOUT_S - 0.5
        first.must("pwrite", offset=4096, length=4096, byte=0x63)
        assert locks(c)["shared"]["generation"] == lk["generation"]

        # the holder flushes: now clean, it hands over to the next writer
        second.send("pwrite", offset=MiB, length=4096, byte=0x62)
        assert not second.replied(HANDOFF_IDLE_S / 2)   # waits for the holder
        first.must("flush")
        assert second.reply()["ok"]
        moved = locks(c)["shared"]
        assert moved["node_id"] == b.node_id and moved["generation"] > lk["generation"]

        # the old holder: its writes fail with EPERM, its reads and FLUSH still work
        late = first.call("pwrite", offset=0, length=4096, byte=0x66)
        assert not late["ok"] and late["errno"] == "EPERM", late
        assert first.must("pread", offset=MiB, length=4096)["bytes"] == [0x62]
        first.must("flush")
        assert second.must("pread", offset=0, length=8192)["bytes"] == [0x61, 0x63]

        # the operator breaks the lock: the holder's client is dropped, the other is not
        collie(c, "vdi", "lock", "unlock", "shared")
        poll(lambda: not second.call("pread", offset=0, length=512)["ok"], 10,
             "the holder's request to fail after the unlock")
        assert first.must("pread", offset=MiB, length=4096)["bytes"] == [0x62]
    wait_detached(c, "shared")

    # and a new client through node 2 sees every acknowledged write
    qemu_io(c, "shared", "read -P 0x61 0 4096", "read -P 0x63 4096 4096",
            f"read -P 0x62 {MiB} 4096", "write -P 0x64 0 512")
    wait_unlocked(a, "shared")


def test_a_standby_follows_the_vdi_through_a_live_snapshot(cluster):
    a, b, c = cluster.sheep
    create_vdi(a, "snapped", 16 * MiB)
    with NbdSession(a, "snapped") as holder, NbdSession(b, "snapped") as standby:
        holder.must("connect")
        standby.must("connect")
        holder.must("pwrite", offset=0, length=4096, byte=0x21)
        collie(c, "vdi", "snapshot", "-s", "before", "snapped")     # live: the holder moves
        holder.must("pwrite", offset=4096, length=4096, byte=0x22)
        holder.must("pwrite", offset=8 * MiB, length=4096, byte=0x23)
        # the standby reads the working VDI (its new vid), not the snapshot it was on
        poll(lambda: standby.must("pread", offset=8 * MiB, length=4096)["bytes"] == [0x23],
             10, "the standby to follow the new working vid")
        assert standby.must("pread", offset=0, length=8192)["bytes"] == [0x21, 0x22]
        working = entry_json(collie(c, "vdi", "lock", "list", "--json"))["locks"]
        assert [(lk["name"], len(lk["attachments"])) for lk in working] == [("snapped", 2)]
        # and its write asks the holder of the new vid: handed over once that one flushed
        holder.must("flush")
        standby.must("pwrite", offset=12 * MiB, length=4096, byte=0x24)
        assert locks(c)["snapped"]["node_id"] == b.node_id
    wait_detached(c, "snapped")
    run("qemu-io", "-r", "-f", "raw", uri(c, "snapped@before"), "-c", "read -P 0x21 0 4096",
        "-c", "read -P 0 4096 4096")
    qemu_io(c, "snapped", "read -P 0x22 4096 4096", f"read -P 0x24 {12 * MiB} 4096")


def test_a_reader_never_takes_the_write_right(cluster):
    a, b, _ = cluster.sheep
    create_vdi(a, "readers", 8 * MiB)
    qemu_io(a, "readers", "write -P 0x11 0 64k")
    wait_unlocked(a, "readers")
    with NbdSession(b, "readers") as writer:
        writer.must("connect")
        writer.must("pwrite", offset=0, length=4096, byte=0x12)
        # readers through any node attach and read while it writes, and take nothing
        for node in cluster.sheep:
            qemu_io(node, "readers", "read -P 0x12 0 4096", "read -P 0x11 4096 4096")
        assert locks(a)["readers"]["node_id"] == b.node_id
        writer.must("pwrite", offset=8192, length=4096, byte=0x13)


def test_killing_the_holder_node_releases_its_lock_when_its_session_ends(cluster):
    a, b, c = cluster.sheep
    create_vdi(a, "orphan", 8 * MiB)

    with NbdSession(c, "orphan") as holder:
        # a client attaches through node 2 and makes its write durable
        holder.must("connect")
        holder.must("pwrite", offset=0, length=4096, byte=0x71)
        holder.must("flush")

        # node 2 dies (SIGKILL): its client loses the connection
        c.kill()
        assert not holder.call("pread", offset=0, length=512)["ok"]

    # another client attaches and reads at once; its write gets the right once node 2's
    # session has ended (it waits for it, or fails and is retried: 4 s vs 3 s here)
    qemu_io(a, "orphan", "read -P 0x71 0 4096")
    poll(lambda: qemu_io(a, "orphan", "write -P 0x72 4096 4096", check=False).returncode == 0,
         30, "the dead node's lock to go")
    qemu_io(b, "orphan", "read -P 0x71 0 4096", "read -P 0x72 4096 4096")
