"""common.sockio over a gevent socketpair: one read buffer cut into pieces, coalesced writes."""
from __future__ import annotations

import os

import gevent
import pytest

from common.sockio import BufferWriter, SocketReader


def test_pieces_come_out_in_order_across_buffer_compactions(pair):
    a, b = pair
    reader = SocketReader(b, buffer_bytes=64)
    data = os.urandom(1000)
    a.sendall(data)
    got, pos = [], 0
    for n in (10, 50, 64, 7, 64, 1):
        got.append(bytes(reader.take(n)))
        pos += n
    assert b"".join(got) == data[:pos]
    # the rest in a buffer of its own, part of it already buffered, part still on the wire
    assert bytes(reader.take_into_new(1000 - pos)) == data[pos:]


def test_a_closed_peer_is_a_connection_error(pair):
    a, b = pair
    reader = SocketReader(b, buffer_bytes=64)
    a.sendall(b"abc")
    a.close()
    with pytest.raises(ConnectionError):
        reader.take(4)


def test_messages_queued_in_one_turn_leave_in_one_sendmsg(pair):
    a, b = pair
    calls = []
    real = a.sendmsg

    class Counting:
        def sendmsg(self, buffers, *args):
            calls.append(len(buffers))
            return real(buffers, *args)

        def close(self):
            a.close()
    writer = BufferWriter(Counting())
    for i in range(10):
        writer.send(b"h%d" % i, memoryview(b"payload"))
    writer.drain()
    assert calls == [20]
    assert b.recv(1000) == b"".join(b"h%dpayload" % i for i in range(10))


def test_a_failed_write_closes_and_reports(pair):
    a, b = pair
    failures = []
    writer = BufferWriter(a, on_error=failures.append)
    b.close()
    for _ in range(50):                 # until the kernel says the peer is gone
        try:
            writer.send(os.urandom(1 << 16))
        except ConnectionError:
            break
        gevent.sleep(0.001)
    assert failures and writer.error is not None
    with pytest.raises(ConnectionError):
        writer.send(b"more")


def test_what_the_socket_cannot_take_at_once_follows_in_order(pair):
    a, b = pair
    writer = BufferWriter(a)
    big = os.urandom(8 << 20)            # far more than the socket buffers hold
    writer.send(b"first", memoryview(big))
    gevent.sleep(0)                      # the loop turn's non-blocking send: partial
    writer.send(b"last")
    got = bytearray()
    while len(got) < len(big) + 9:
        got += b.recv(1 << 20)
    writer.drain()
    assert bytes(got) == b"first" + big + b"last"
    assert not writer._queue and writer.error is None


def test_after_cuts_sent_bytes_off_the_front():
    from common.sockio import _after
    views = [memoryview(b"abc"), memoryview(b"defg"), memoryview(b"h")]
    assert [bytes(v) for v in _after(views, 0)] == [b"abc", b"defg", b"h"]
    assert [bytes(v) for v in _after(views, 3)] == [b"defg", b"h"]
    assert [bytes(v) for v in _after(views, 5)] == [b"fg", b"h"]
    assert _after(views, 8) == []


def test_the_buffer_starts_small_and_grows_to_its_limit_when_needed(pair):
    a, b = pair
    reader = SocketReader(b, buffer_bytes=4096, initial_bytes=256)
    assert reader.allocated_bytes == 256
    data = os.urandom(6000)
    a.sendall(data)
    assert bytes(reader.take(100)) == data[:100]
    assert bytes(reader.take(1000)) == data[100:1100]     # more than the buffer: it grows
    assert 1000 <= reader.allocated_bytes <= 4096
    assert bytes(reader.take(4096)) == data[1100:5196]    # up to the limit, never past it
    assert reader.allocated_bytes == 4096
    assert bytes(reader.take_into_new(804)) == data[5196:]


def test_a_busy_connection_reads_in_bigger_gulps(pair):
    a, b = pair
    reader = SocketReader(b, buffer_bytes=1 << 16, initial_bytes=512)
    data = os.urandom(1 << 16)
    a.sendall(data)
    got = b"".join(bytes(reader.take(64)) for _ in range(len(data) // 64))
    assert got == data
    assert reader.allocated_bytes > 512       # full recvs doubled it


def test_a_grown_buffer_shrinks_once_the_connection_waited_idle(pair, monkeypatch):
    import common.sockio as sockio
    monkeypatch.setattr(sockio, "SHRINK_AFTER_IDLE_S", 0.05)
    a, b = pair
    reader = SocketReader(b, buffer_bytes=256 << 10, initial_bytes=16 << 10)
    burst = os.urandom(200 << 10)
    a.sendall(burst)
    assert bytes(reader.take(200 << 10)) == burst        # a piece that needed a big buffer
    assert reader.allocated_bytes >= 200 << 10
    gevent.spawn_later(0.01, a.sendall, b"quick")         # waited less than the idle time
    assert bytes(reader.take(5)) == b"quick"
    assert reader.allocated_bytes >= 200 << 10
    gevent.spawn_later(0.2, a.sendall, b"after a rest")
    assert bytes(reader.take(12)) == b"after a rest"
    assert reader.allocated_bytes == 16 << 10
    big = os.urandom(100 << 10)                           # and it grows again when needed
    gevent.spawn_later(0.2, a.sendall, big)
    assert bytes(reader.take(100 << 10)) == big


def test_a_piece_larger_than_the_small_buffer_is_never_cut_by_a_shrink(pair, monkeypatch):
    import common.sockio as sockio
    monkeypatch.setattr(sockio, "SHRINK_AFTER_IDLE_S", 0.0)
    a, b = pair
    reader = SocketReader(b, buffer_bytes=256 << 10, initial_bytes=16 << 10)
    a.sendall(b"x" * (64 << 10))
    assert len(reader.take(64 << 10)) == 64 << 10
    piece = os.urandom(40 << 10)
    gevent.spawn_later(0.05, a.sendall, piece)
    assert bytes(reader.take(40 << 10)) == piece
