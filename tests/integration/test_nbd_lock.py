"""The single-attacher VDI lock, seen by real NBD clients on a real 3-node cluster.

Attaching export ``NAME`` takes the VDI's lock (an ephemeral znode of the
attaching sheep's ZooKeeper session).  A second attacher, through any node, is
refused during the handshake with a message naming the holder; the lock goes
when the client disconnects, when an operator breaks it (the holder's client is
dropped), or when the holder node dies and its session expires (4 s here).
"""
from __future__ import annotations

import shutil
import time

import pytest

from tests.integration.fixtures_cluster import collie, entry_json, poll
from tests.integration.fixtures_nbd import (MiB, NbdSession, create_vdi, locks, module_cluster,
                                            run, uri, wait_unlocked)

SESSION_TIMEOUT_S = 4  # the cluster fixture's --session-timeout

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils not installed")


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    yield from module_cluster(request, tmp_path_factory, nodes=3, copies=3)


def qemu_io(node, name, *cmds, check=True):
    args = [a for c in cmds for a in ("-c", c)]
    return run("qemu-io", "-f", "raw", uri(node, name), *args, check=check)


def assert_refused(res, holder, name: str | None = None) -> None:
    """qemu-io could not attach and shows the server's message naming the holder (and VDI)."""
    err = res.stderr.decode(errors="replace")
    assert res.returncode != 0, res.stdout
    assert "server reported" in err and "is locked by node " + holder.node_id in err, err
    if name is not None:
        assert f"VDI '{name}' is attached elsewhere" in err, err


def test_second_attacher_refused_then_admitted_and_unlock_drops_the_holder(cluster):
    a, b, c = cluster.sheep
    create_vdi(a, "shared", 8 * MiB)
    t0 = time.time()

    with NbdSession(a, "shared") as first:
        # the first client attaches through node 0 and writes
        first.must("connect")
        first.must("pwrite", offset=0, length=4096, byte=0x61)

        # `collie vdi lock list` (asked of node 2) names the VDI, the holder node, the client
        table = collie(c, "vdi", "lock", "list").stdout.decode()
        header, row = table.splitlines()
        assert header.split() == ["VDI", "Owner", "Client", "Since"]
        assert row.split()[:2] == ["shared", a.node_id] and " 127.0.0.1:" in row
        lk = entry_json(collie(c, "vdi", "lock", "list", "--json"))["locks"][0]
        assert lk["name"] == "shared" and lk["node_id"] == a.node_id
        assert lk["client"].startswith("127.0.0.1:") and lk["client"] in row
        assert t0 - 1 <= lk["since"] <= time.time() + 1

        # a second attacher is refused in the handshake, through another node or the same one
        assert_refused(qemu_io(b, "shared", "read 0 512", check=False), a, "shared")
        assert_refused(qemu_io(a, "shared", "read 0 512", check=False), a)
        assert first.must("pread", offset=0, length=4096)["bytes"] == [0x61]

    # the first client disconnected: the lock goes and node 1 may attach
    wait_unlocked(c, "shared")
    qemu_io(b, "shared", "read -P 0x61 0 4096")

    with NbdSession(b, "shared") as second:
        # a new holder attaches through node 1
        wait_unlocked(c, "shared")
        second.must("connect")
        second.must("pwrite", offset=MiB, length=4096, byte=0x62)
        assert locks(a)["shared"]["node_id"] == b.node_id

        # the operator breaks the lock through node 2
        collie(c, "vdi", "lock", "unlock", "shared")

        # the old client's next request fails: node 1 drops it once it sees the lock go
        poll(lambda: not second.call("pread", offset=0, length=512)["ok"], 10,
             "the old client's request to fail after the unlock")

        # and a new attacher through node 2 works and sees what the old one wrote
        qemu_io(c, "shared", "read -P 0x61 0 4096", f"read -P 0x62 {MiB} 4096",
                "write -P 0x63 0 512")
    wait_unlocked(a, "shared")


def test_killing_the_holder_node_releases_its_lock_when_its_session_ends(cluster):
    a, b, c = cluster.sheep
    create_vdi(a, "orphan", 8 * MiB)

    with NbdSession(c, "orphan") as holder:
        # a client attaches through node 2 and makes its write durable
        holder.must("connect")
        holder.must("pwrite", offset=0, length=4096, byte=0x71)
        holder.must("flush")

        # node 2 dies (SIGKILL): its client loses the connection
        killed_at = time.monotonic()
        c.kill()
        assert not holder.call("pread", offset=0, length=512)["ok"]

    # until node 2's ZooKeeper session expires its lock still refuses other attachers
    # (the session outlives the process by about 4 s; on a loaded machine these checks
    # may come later than that, and then the lock must not have gone any sooner)
    held = locks(a).get("orphan")
    if held is not None:
        assert held["node_id"] == c.node_id
        refused = qemu_io(a, "orphan", "read 0 512", check=False)
        if locks(a).get("orphan") is not None:
            assert_refused(refused, c)
    else:
        assert time.monotonic() - killed_at >= SESSION_TIMEOUT_S - 1

    # after the session ends (4 s) the VDI attaches through node 0 with the data intact
    poll(lambda: qemu_io(a, "orphan", "read -P 0x71 0 4096", check=False).returncode == 0,
         30, "the dead node's lock to go")
    assert "orphan" not in locks(b)
