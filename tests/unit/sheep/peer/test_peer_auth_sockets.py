"""Peer authentication on real loopback sockets: PeerServer and PeerPool with keys, raw
clients that skip or botch the handshake, and the connection cap."""
from __future__ import annotations

import gevent
import pytest
from gevent import socket

from common.errors import Unavailable
from sheep.peer import wire
from sheep.peer.auth import ANSWER, HELLO, VERDICT, ClientHandshake
from sheep.peer.client import PeerPool
from sheep.peer.framing import FrameReader
from sheep.peer.server import PeerServer
from tests.rawpeer import greeting_or_nothing, read_until_closed, recv_exact

KEY, OTHER = b"k" * 32, b"o" * 32
INSTALL = wire.encode_frame({"op": "install", "id": 1, "oid": 7, "epoch": 1 << 30},
                            b"forged" * 100)


@pytest.fixture
def server():
    served = []

    def handle(header, payload):
        served.append(header["op"])
        return {"ok": True}, b""
    made = []

    def make(**kw):
        srv = PeerServer(handle, "127.0.0.1", 0, key=KEY, **kw)
        srv.start()
        made.append(srv)
        return srv
    yield make, served
    for srv in made:
        srv.stop()


@pytest.fixture
def raw():
    socks = []

    def dial(port):
        sock = socket.create_connection(("127.0.0.1", port), 5)
        sock.settimeout(5)
        socks.append(sock)
        return sock
    yield dial
    for sock in socks:
        sock.close()


def test_a_pool_with_the_same_key_is_served(server):
    make, served = server
    srv = make()
    pool = PeerPool(connect_timeout_s=2, key=KEY)
    try:
        assert pool.call("127.0.0.1", srv.port, {"op": "read"}, timeout_s=5).header["ok"]
    finally:
        pool.close()
    assert served == ["read"]


def test_a_pool_with_another_key_is_unavailable_naming_the_secret_file(server):
    make, served = server
    srv = make()
    pool = PeerPool(connect_timeout_s=2, key=OTHER)
    try:
        with gevent.Timeout(5):
            with pytest.raises(Unavailable, match="refused our cluster secret: do both sheep "
                                                  "have the same --secret-file"):
                pool.call("127.0.0.1", srv.port, {"op": "read"}, timeout_s=5)
    finally:
        pool.close()
    assert served == []


def test_a_pool_refuses_a_server_that_cannot_prove_the_key():
    """A server with another key: the client stops at its verdict and sends no request."""
    seen = []
    impostor = PeerServer(lambda h, p: (seen.append(h), ({}, b""))[1], "127.0.0.1", 0,
                          key=OTHER)
    impostor.start()
    pool = PeerPool(connect_timeout_s=2, key=KEY)
    try:
        with pytest.raises(Unavailable, match="cluster secret"):
            pool.call("127.0.0.1", impostor.port, {"op": "write"}, b"data", timeout_s=5)
    finally:
        pool.close()
        impostor.stop()
    assert seen == []


def test_a_raw_frame_without_handshake_is_closed_unread_and_unanswered(server, raw):
    make, served = server
    sock = raw(make().port)
    assert recv_exact(sock, HELLO.size)[:4] == b"PAUT"
    sock.sendall(INSTALL)
    assert read_until_closed(sock) == b""
    assert served == []


def test_a_silent_client_is_closed_at_the_auth_deadline(server, raw):
    make, served = server
    sock = raw(make(auth_timeout_s=0.3).port)
    recv_exact(sock, HELLO.size)
    with gevent.Timeout(5):
        assert read_until_closed(sock) == b""
    assert served == []


def test_bytes_after_the_answer_are_left_for_the_frame_reader(server, raw):
    """A client that pipelines its first frame behind its answer still gets it served: the
    handshake reads exact lengths."""
    make, served = server
    sock = raw(make().port)
    client = ClientHandshake(KEY)
    sock.sendall(client.answer(recv_exact(sock, HELLO.size)) +
                 wire.encode_frame({"op": "read", "id": 9}))
    client.check(recv_exact(sock, VERDICT.size))
    reply = FrameReader(sock).read_frame()
    assert (reply.header["id"], reply.header["ok"]) == (9, True)
    assert served == ["read"]


def test_a_wrong_answer_gets_a_refusal_then_close(server, raw):
    make, served = server
    sock = raw(make().port)
    answer = ClientHandshake(OTHER).answer(recv_exact(sock, HELLO.size))
    assert len(answer) == ANSWER.size
    sock.sendall(answer + INSTALL)
    assert read_until_closed(sock)[:1] == b"\x01"       # REFUSED, then nothing
    assert served == []


def test_connections_beyond_the_cap_are_closed_at_accept(server, raw):
    make, served = server
    srv = make(max_connections=2)
    first, second = raw(srv.port), raw(srv.port)
    for sock in (first, second):
        recv_exact(sock, HELLO.size)
    third = raw(srv.port)
    assert greeting_or_nothing(third) == b""            # not even a greeting
    first.close()
    pool = PeerPool(connect_timeout_s=2, key=KEY)
    try:                                                # a freed slot serves again
        ok = None
        for _ in range(50):
            try:
                ok = pool.call("127.0.0.1", srv.port, {"op": "read"}, timeout_s=5)
                break
            except Unavailable:
                gevent.sleep(0.05)
        assert ok is not None and ok.header["ok"]
    finally:
        pool.close()
