"""Peer authentication against real sheep: members talk, nobody else does.

One module-scoped 2-node cluster (copies=2, ``--peer-max-connections 4``) with a VDI
written through collie; raw TCP clients and `PeerConnection`s with the wrong key try its
peer ports; a sheep with another ``--secret-file`` tries to join.
"""
from __future__ import annotations

import os
import socket
import time

import gevent
import pytest

from common.errors import Unavailable
from common.secrets import ClusterSecret
from sheep.peer import wire
from sheep.peer.auth import HELLO
from sheep.peer.client import PeerConnection
from tests.integration.fixtures_cluster import api_json, collie, node_epoch, poll
from tests.integration.fixtures_nbd import module_cluster
from tests.rawpeer import greeting_or_nothing, read_until_closed, recv_exact
from vdi.objects import data_oid

MiB = 1 << 20
CAP = 4
DATA = os.urandom(MiB)


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    yield from module_cluster(request, tmp_path_factory, 2, 2,
                              sheep_args=["--peer-max-connections", str(CAP)])


@pytest.fixture(scope="module")
def vol(cluster):
    """A VDI with DATA at offset 0, written through sheep 0 (so replicated to sheep 1)."""
    n0 = cluster.sheep[0]
    collie(n0, "vdi", "create", "authvol", "4M")
    collie(n0, "vdi", "write", "authvol", "0", str(len(DATA)), input=DATA)
    return api_json(n0, "/vdis/authvol")["vid"]


def peer_key(node) -> bytes:
    return ClusterSecret.parse(node.secret_file.read_text()).peer_key


def peer_call(node, key: bytes, header: dict, payload=b""):
    conn = PeerConnection(node.addr, node.port, connect_timeout_s=5, key=key)
    try:
        return conn.call(header, payload, timeout_s=10)
    finally:
        conn.close()
        # gevent closes the descriptor in a callback of its loop, which this (not gevent)
        # test process runs only when it next waits on gevent: until then the sheep still
        # counts the connection against its cap
        gevent.sleep(0)


def raw_socket(node) -> socket.socket:
    sock = socket.create_connection((node.addr, node.port), 5)
    sock.settimeout(10)
    return sock


def logged(node, text: str) -> bool:
    return text in node.log_path.read_text(errors="replace")


def install_frame(epoch: int, oid: int, payload: bytes) -> bytes:
    """A well-formed `install` of a whole copy stamped with a far-future epoch."""
    return wire.encode_frame({"op": "install", "id": 1, "epoch": epoch, "oid": oid,
                              "version": [1 << 30, 0, 0]}, payload)


def test_members_replicate_and_read_each_others_writes(cluster, vol):
    n0, n1 = cluster.sheep
    assert collie(n1, "vdi", "read", "authvol", "0", str(len(DATA))).stdout == DATA
    assert (n1.dir / "obj" / f"{data_oid(vol, 0):016x}").exists()   # n1 holds a copy


def test_an_unauthenticated_install_is_closed_unread_and_changes_nothing(cluster, vol):
    n0, n1 = cluster.sheep
    forged = b"\xee" * (64 << 10)
    epoch = node_epoch(n1)
    sock = raw_socket(n1)
    try:
        assert recv_exact(sock, HELLO.size)[:4] == b"PAUT"
        try:
            sock.sendall(install_frame(epoch, data_oid(vol, 0), forged))
        except OSError:
            pass                                  # closed while we were still sending
        assert read_until_closed(sock) == b""     # no reply, just closed
    finally:
        sock.close()
    poll(lambda: logged(n1, "refused before its first frame: sent no peer authentication"),
         10, "the refusal logged")
    for node in (n0, n1):
        assert collie(node, "vdi", "read", "authvol", "0", str(len(DATA))).stdout == DATA
    # the same frame from a member is served (the refusal above was the handshake's doing)
    stray = data_oid(0xFFFFF0, 0)
    reply = peer_call(n1, peer_key(n1), {"op": "install", "epoch": epoch, "oid": stray,
                                         "version": [1 << 30, 0, 0]}, forged)
    assert reply.header["installed"] is True
    assert bytes(peer_call(n1, peer_key(n1), {"op": "fetch", "oid": stray}).payload) == forged


def test_a_client_with_the_wrong_key_gets_a_clear_error_at_once(cluster):
    n1 = cluster.sheep[1]
    started = time.monotonic()
    with pytest.raises(Unavailable, match=f"peer {n1.addr}:{n1.port}: refused our cluster "
                                          "secret: do both sheep have the same --secret-file"):
        peer_call(n1, os.urandom(32), {"op": "ping"})
    assert time.monotonic() - started < 5
    poll(lambda: logged(n1, "bad cluster secret?"), 10, "the bad secret logged")


def test_connections_beyond_the_cap_are_closed_at_accept(cluster, vol):
    n0, n1 = cluster.sheep
    held: list[socket.socket] = []

    def fill() -> bool:
        """Connect until one is refused; True when that took the cap (less the one slot
        the other sheep holds).  Fewer: connections of earlier tests not yet reaped."""
        close(held)
        for _ in range(CAP + 1):
            held.append(raw_socket(n1))
            if greeting_or_nothing(held[-1]) == b"":
                return len(held) - 1 >= CAP - 1
        raise AssertionError(f"{CAP + 1} connections and none refused")
    try:
        poll(fill, 15, "the cap filled by our connections")
        poll(lambda: logged(n1, "(peer_max_connections)"), 10, "the cap logged")
        # the members' own long-lived connection is unaffected: n0 still replicates to n1
        more = os.urandom(64 << 10)
        collie(n0, "vdi", "write", "authvol", str(2 * MiB), str(len(more)), input=more)
        assert collie(n1, "vdi", "read", "authvol", str(2 * MiB), str(len(more))).stdout == more
    finally:
        close(held)
    poll(lambda: peer_call(n1, peer_key(n1), {"op": "ping"}), 15, "a freed slot",
         tolerate=(Unavailable,))


def close(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    socks.clear()


def test_a_sheep_with_another_secret_cannot_serve_as_a_peer(cluster, vol, tmp_path):
    members = cluster.sheep[:2]
    outsider = cluster.add_node()
    outsider.keys_dir = tmp_path / "otherkeys"
    try:
        outsider.start()
        poll(lambda: not outsider.running() or listening(outsider), 30,
             "the outsider to exit or listen")
        theirs = peer_key(outsider)
        assert theirs != peer_key(members[0])
        for node in members:                      # members refuse its key on their peer port
            with pytest.raises(Unavailable, match="refused our cluster secret"):
                peer_call(node, theirs, {"op": "ping"})
        if listening(outsider):                   # and it cannot prove ours
            with pytest.raises(Unavailable, match="cluster secret"):
                peer_call(outsider, peer_key(members[0]), {"op": "ping"})
    finally:
        outsider.stop()
    for node in members:
        assert collie(node, "vdi", "read", "authvol", "0", str(len(DATA))).stdout == DATA


def listening(node) -> bool:
    try:
        socket.create_connection((node.addr, node.port), 1).close()
        return True
    except OSError:
        return False
