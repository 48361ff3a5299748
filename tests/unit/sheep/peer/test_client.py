"""PeerPool against a real PeerServer on loopback (authenticated with a test key): fan-outs
gathered, timeouts, failures."""
from __future__ import annotations

import sys

import gevent
import pytest
from gevent.event import Event

from common.errors import NoObject, Unavailable
from sheep.peer.client import PeerPool
from sheep.peer.server import PeerServer

KEY = b"test peer key".ljust(32, b".")

class Peer:
    """A peer server whose handler echoes, fails or hangs, by op."""

    def __init__(self) -> None:
        self.release = Event()
        self.server = PeerServer(self.handle, "127.0.0.1", 0, key=KEY)
        self.server.start()

    def handle(self, header, payload):
        op = header["op"]
        if op == "hang":
            self.release.wait()
        if op == "missing":
            raise NoObject("no such object", oid=header.get("oid", 0))
        if op == "slow":
            gevent.sleep(0.05)
        return {"echo": header.get("n")}, bytes(payload)

    def stop(self) -> None:
        self.release.set()
        self.server.stop()


@pytest.fixture
def peers():
    made, pool = [], PeerPool(connect_timeout_s=2, key=KEY)

    def make():
        made.append(Peer())
        return made[-1]
    yield make, pool
    pool.close()
    for p in made:
        p.stop()


def test_a_fan_out_is_gathered_with_every_reply(peers):
    make, pool = peers
    a, b = make(), make()
    calls = [pool.start("127.0.0.1", a.server.port, {"op": "slow", "n": 1}, b"x" * 4096),
             pool.start("127.0.0.1", b.server.port, {"op": "echo", "n": 2}, b"y")]
    pool.gather(calls, 5)
    assert all(c.done for c in calls)
    first, second = (c.result(5) for c in calls)
    assert (first.header["echo"], bytes(first.payload)) == (1, b"x" * 4096)
    assert (second.header["echo"], bytes(second.payload)) == (2, b"y")


def test_a_peer_that_does_not_answer_times_out_and_the_others_still_count(peers):
    make, pool = peers
    a, b = make(), make()
    hung = pool.start("127.0.0.1", a.server.port, {"op": "hang"})
    fine = pool.start("127.0.0.1", b.server.port, {"op": "echo", "n": 3})
    with gevent.Timeout(5):
        pool.gather([hung, fine], 0.2)
    assert fine.result(0.2).header["echo"] == 3
    with pytest.raises(Unavailable, match="no reply in 0.2s"):
        hung.result(0.2)


def test_an_error_reply_is_raised_as_its_class(peers):
    make, pool = peers
    a = make()
    with pytest.raises(NoObject):
        pool.call("127.0.0.1", a.server.port, {"op": "missing", "oid": 7}, timeout_s=5)


def test_a_lost_connection_fails_what_is_in_flight_and_the_next_call_dials_again(peers):
    make, pool = peers
    a = make()
    hung = pool.start("127.0.0.1", a.server.port, {"op": "hang"})
    pool.drop("127.0.0.1", a.server.port, "left the epoch")
    with pytest.raises(Unavailable, match="left the epoch"):
        hung.get(5)
    assert pool.call("127.0.0.1", a.server.port, {"op": "echo", "n": 4},
                     timeout_s=5).header["echo"] == 4


def test_an_unreachable_peer_is_unavailable_at_once(peers):
    _make, pool = peers
    with pytest.raises(Unavailable):
        pool.start("127.0.0.1", 1, {"op": "echo"})


def test_neither_side_keeps_a_large_payload_alive_after_its_request(peers):
    make, pool = peers
    a = make()
    kept = []
    served = a.handle
    a.server._handler = lambda header, payload: (kept.append(payload), served(header, payload))[1]
    frame = pool.start("127.0.0.1", a.server.port, {"op": "echo", "n": 1},
                       b"z" * (1 << 20)).get(5)
    payload = frame.payload
    del frame
    assert bytes(payload[:1]) == b"z" and len(payload) == 1 << 20
    # the client's reader dropped the reply, the server's reader and its parked worker the request
    assert sys.getrefcount(payload) == 2
    request = kept.pop()
    assert sys.getrefcount(request) == 2
