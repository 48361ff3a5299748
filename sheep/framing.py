"""Moving peer frames over a socket: buffered reads, coalesced scatter/gather writes.

`FrameReader` reads as much as the socket has into one buffer and cuts frames
out of it, so a burst of small frames costs one ``recv_into`` rather than three
per frame; a large payload is received straight into its own buffer.

`FrameWriter` queues whole frames (prefix+header bytes and the payload buffer
as given, never copied or concatenated) and writes everything queued during
one turn of the event loop with a single ``sendmsg``.  At queue depth 1 that
is one syscall per frame as before; at depth 16 it is one for many.
"""
from __future__ import annotations

import socket
import time

import gevent

from sheep import wire
from sheep.errors import ProtocolError

READ_BUFFER_BYTES = 256 << 10
INLINE_PAYLOAD_BYTES = 64 << 10   # larger payloads get a buffer of their own
MAX_IOV = 512


class FrameReader:
    def __init__(self, sock: socket.socket, buffer_bytes: int = READ_BUFFER_BYTES) -> None:
        self._sock = sock
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def _fill(self, need: int) -> None:
        """Until at least ``need`` bytes are buffered (need <= buffer size)."""
        if self._start + need > len(self._buf):   # compact: move the tail to the front
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start:self._end]
            self._start, self._end = 0, n
        while self._end - self._start < need:
            r = self._sock.recv_into(self._view[self._end:])
            if r == 0:
                raise ConnectionError("connection closed by peer")
            self._end += r

    def _take(self, n: int) -> memoryview:
        self._fill(n)
        piece = self._view[self._start:self._start + n]
        self._start += n
        return piece

    def read_frame(self) -> wire.Frame:
        header_len, payload_len = wire.parse_prefix(self._take(wire.PREFIX.size))
        if header_len > len(self._buf):
            raise ProtocolError(f"header of {header_len} bytes exceeds the read buffer")
        header = wire.parse_header(self._take(header_len))
        if payload_len == 0:
            return wire.Frame(header, b"")
        if payload_len <= INLINE_PAYLOAD_BYTES:
            return wire.Frame(header, bytes(self._take(payload_len)))
        payload = bytearray(payload_len)
        have = min(self._end - self._start, payload_len)
        payload[:have] = self._view[self._start:self._start + have]
        self._start += have
        view = memoryview(payload)
        got = have
        while got < payload_len:
            r = self._sock.recv_into(view[got:], payload_len - got)
            if r == 0:
                raise ConnectionError("connection closed by peer")
            got += r
        return wire.Frame(header, payload)


class BufferWriter:
    """Coalescing writer for one socket: `send` queues whole messages (lists of buffers,
    never copied) and never blocks; everything queued during one turn of the event
    loop goes out with a single ``sendmsg``.

    A failed write closes the socket and calls ``on_error`` (if given); the
    connection's reader then fails too, and whoever waits for replies learns it there.
    """

    def __init__(self, sock: socket.socket, on_error=None) -> None:
        self._sock = sock
        self._queue: list = []
        self._scheduled = False
        self._on_error = on_error
        self.error: BaseException | None = None

    def send(self, *buffers) -> None:
        if self.error is not None:
            raise ConnectionError(f"connection failed: {self.error}")
        self._queue.extend(b for b in buffers if memoryview(b).nbytes)
        if not self._scheduled:
            self._scheduled = True
            gevent.spawn(self._flush)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Until everything queued is written (or the write failed, or time is up)."""
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._scheduled) and self.error is None \
                and time.monotonic() < deadline:
            gevent.sleep(0.001)

    def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_IOV], self._queue[MAX_IOV:]
                _sendmsg_all(self._sock, batch)
        except OSError as exc:
            self.error = exc
            self._queue = []
            try:
                self._sock.close()
            except OSError:
                pass
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self._scheduled = False


class FrameWriter(BufferWriter):
    """`BufferWriter` of peer frames: prefix+header bytes, then the payload as given."""

    def send(self, header: dict, payload=b"") -> None:
        nbytes = memoryview(payload).nbytes
        super().send(wire.encode_prefix_and_header(header, nbytes), payload)


def _sendmsg_all(sock: socket.socket, buffers: list) -> None:
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            first = views[0]
            if sent >= first.nbytes:
                sent -= first.nbytes
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0
        while views and views[0].nbytes == 0:
            views.pop(0)
