"""sheep.peer.framing over a gevent socketpair: buffered reads, coalesced gather writes."""
from __future__ import annotations

import os

import gevent
import pytest

from common.errors import ProtocolError
from sheep.peer.framing import INLINE_PAYLOAD_BYTES, FrameReader, FrameWriter
from sheep.peer import wire


def test_frames_of_every_size_arrive_intact_and_in_order(pair):
    a, b = pair
    writer, reader = FrameWriter(a), FrameReader(b, buffer_bytes=64 << 10)
    payloads = [b"", b"x", os.urandom(4096), os.urandom(INLINE_PAYLOAD_BYTES),
                os.urandom(INLINE_PAYLOAD_BYTES + 1), memoryview(os.urandom(3 << 20))]
    for i, p in enumerate(payloads):
        writer.send({"id": i}, p)
    for i, p in enumerate(payloads):
        frame = reader.read_frame()
        assert frame.header == {"id": i}
        assert bytes(frame.payload) == bytes(p)


class CountingSocket:
    def __init__(self, sock):
        self.sock, self.calls = sock, []

    def sendmsg(self, buffers, *args):
        self.calls.append(len(buffers))
        return self.sock.sendmsg(buffers, *args)

    def close(self):
        self.sock.close()


def test_frames_queued_in_one_loop_turn_go_out_in_one_sendmsg(pair):
    a, b = pair
    counting = CountingSocket(a)
    calls = counting.calls
    writer, reader = FrameWriter(counting), FrameReader(b)
    for i in range(16):
        writer.send({"id": i}, b"p" * 4096)
    got = [reader.read_frame().header["id"] for _ in range(16)]
    assert got == list(range(16))
    assert calls == [32]       # 16 headers + 16 payloads, one syscall


def test_bytes_trickling_in_one_at_a_time(pair):
    a, b = pair
    reader = FrameReader(b, buffer_bytes=128)
    data = wire.encode_frame({"id": 7, "op": "read"}, b"abc") * 20

    def trickle():
        for i in range(len(data)):
            a.sendall(data[i:i + 1])
    g = gevent.spawn(trickle)
    for _ in range(20):
        frame = reader.read_frame()
        assert frame.header["id"] == 7 and frame.payload == b"abc"
    g.join()


def test_garbage_and_closed_connections(pair):
    a, b = pair
    reader = FrameReader(b)
    a.sendall(b"\x00" * 16)
    with pytest.raises(ProtocolError):
        reader.read_frame()
    a.close()
    with pytest.raises(ConnectionError):
        FrameReader(b).read_frame()


def test_a_failed_write_is_remembered(pair):
    a, b = pair
    writer = FrameWriter(a)
    b.close()
    a.close()
    writer.send({"id": 1}, b"x")
    for _ in range(100):  # yield until the scheduled flush has run and failed
        if writer.error is not None:
            break
        gevent.sleep(0)
    assert isinstance(writer.error, OSError)
    with pytest.raises(ConnectionError):
        writer.send({"id": 2}, b"y")
