"""An attached client whose node loses its ZooKeeper session never writes again.

The VDI lock is an ephemeral znode of the serving node's session: once that session
has expired, another client may hold the lock, so nothing the old client sends may
land, even after its node wakes up and registers a new session.
"""
from __future__ import annotations

import signal

from tests.integration.fixtures_cluster import api_json, collie, poll, wait_epoch
from tests.integration.fixtures_nbd import MiB, NbdSession, attached, create_vdi, locks


def test_client_of_a_node_whose_session_expired_cannot_write(cluster_factory):
    c = cluster_factory(3, copies=3)
    a, b, holder_node = c.sheep
    create_vdi(a, "vol", 8 * MiB)

    with NbdSession(holder_node, "vol") as old:
        # a client attaches through node 2 and writes
        old.must("connect")
        old.must("pwrite", offset=0, length=4096, byte=0x11)
        old.must("flush")

        # node 2 freezes past its session timeout: the others drop it and its lock goes
        holder_node.signal(signal.SIGSTOP)
        try:
            wait_epoch([a, b], 2)
            poll(lambda: "vol" not in locks(a), 30, "the frozen node's lock to expire")

            # a new client takes the VDI through node 0 and writes
            with NbdSession(a, "vol") as new:
                new.must("connect")
                new.must("pwrite", offset=0, length=4096, byte=0x22)
                new.must("flush")
                new.must("close")
        finally:
            holder_node.signal(signal.SIGCONT)

        # node 2 wakes up: whatever its old client sends now is refused
        assert not old.call("pwrite", offset=0, length=4096, byte=0x33)["ok"]
        assert not old.call("pwrite", offset=4096, length=4096, byte=0x33)["ok"]

    # node 2 comes back with a new session, and the data is the new client's
    poll(lambda: api_json(holder_node, "/node")["fenced"] is False, 30, "node 2 back")
    wait_epoch(c.sheep, 3)
    for node in c.sheep:
        with NbdSession(node, "vol") as reader:
            reader.must("connect")
            assert reader.must("pread", offset=0, length=4096)["bytes"] == [0x22]
            assert reader.must("pread", offset=4096, length=4096)["bytes"] == [0]
            reader.must("close")


def test_a_standbys_attachment_comes_back_with_its_nodes_new_session(cluster_factory):
    c = cluster_factory(3, copies=3)
    a, b, node = c.sheep
    create_vdi(a, "seen", 8 * MiB)
    with NbdSession(node, "seen") as reader:
        reader.must("connect")              # attached, never writes
        poll(lambda: "seen" in attached(a), 10, "the attachment")

        # its node freezes past the session timeout: the attachment goes with the session
        node.signal(signal.SIGSTOP)
        try:
            wait_epoch([a, b], 2)
            poll(lambda: "seen" not in attached(a), 30, "the expired attachment to go")
        finally:
            node.signal(signal.SIGCONT)

        # back with a new session, the node registers the connection again: delete refuses
        poll(lambda: "seen" in attached(a), 30, "the attachment re-created")
        refused = collie(a, "vdi", "delete", "seen", check=False)
        assert refused.returncode == 1 and b"attached" in refused.stderr
        assert reader.must("pread", offset=0, length=4096)["bytes"] == [0]
