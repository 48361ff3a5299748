"""Multiplexed connections to other sheep (gevent shell over ``sheep.wire``).

One TCP connection per peer carries any number of requests at once.  A sender
writes its frame (prefix + header, then the payload buffer as it is) under the
connection's send lock; one reader greenlet per connection reads replies with
``recv_into`` and hands each to the waiting caller by request id, in whatever
order they come.  When a connection breaks, every caller waiting on it gets
`Unavailable` and the next call dials again.
"""
from __future__ import annotations

import itertools
import logging
import socket

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore

from sheep import wire
from sheep.errors import SheepError, Unavailable

log = logging.getLogger(__name__)


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    """Read exactly ``n`` bytes; ConnectionError if the peer closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            raise ConnectionError("connection closed by peer")
        got += r
    return buf


def read_frame(sock: socket.socket) -> wire.Frame:
    header_len, payload_len = wire.parse_prefix(recv_exact(sock, wire.PREFIX.size))
    header = wire.parse_header(recv_exact(sock, header_len))
    payload = recv_exact(sock, payload_len) if payload_len else b""
    return wire.Frame(header, payload)


def send_frame(sock: socket.socket, lock: Semaphore, header: dict, payload=b"") -> None:
    nbytes = memoryview(payload).nbytes
    head = wire.encode_prefix_and_header(header, nbytes)
    with lock:
        if nbytes and nbytes < 65536:
            sock.sendall(head + bytes(payload))
        else:
            sock.sendall(head)
            if payload:
                sock.sendall(payload)


class PeerConnection:
    """One multiplexed connection to one peer address."""

    def __init__(self, addr: str, port: int, connect_timeout_s: float = 5.0) -> None:
        self.addr, self.port = addr, port
        self._connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None
        self._send_lock = Semaphore()
        self._dial_lock = Semaphore()
        self._pending: dict[int, AsyncResult] = {}
        self._ids = itertools.count(1)
        self._reader: gevent.Greenlet | None = None

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        with self._dial_lock:
            if self._sock is None:
                sock = socket.create_connection((self.addr, self.port), self._connect_timeout_s)
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sock = sock
                self._reader = gevent.spawn(self._read_loop, sock)
        return self._sock

    def call(self, header: dict, payload=b"", timeout_s: float = 30.0) -> wire.Frame:
        """Send one request and wait for its reply.

        Raises the reply's error as its `SheepError` class, or `Unavailable` when
        the peer cannot be reached or does not answer within ``timeout_s``.
        """
        rid = next(self._ids)
        result = AsyncResult()
        self._pending[rid] = result
        try:
            try:
                sock = self._connected()
                send_frame(sock, self._send_lock, {**header, "id": rid}, payload)
            except OSError as exc:
                self._broken(exc)
                raise Unavailable(f"peer {self.addr}:{self.port}: {exc}") from None
            try:
                frame = result.get(timeout=timeout_s)
            except gevent.Timeout:
                raise Unavailable(f"peer {self.addr}:{self.port}: no reply in {timeout_s}s") from None
        finally:
            self._pending.pop(rid, None)
        if frame.header.get("code", 0):
            raise SheepError.from_wire(frame.header)
        return frame

    def _read_loop(self, sock: socket.socket) -> None:
        try:
            while True:
                frame = read_frame(sock)
                waiter = self._pending.get(frame.header.get("id"))
                if waiter is not None:
                    waiter.set(frame)
        except (OSError, SheepError) as exc:
            self._broken(exc, sock)

    def _broken(self, exc: Exception, sock: socket.socket | None = None) -> None:
        sock = sock or self._sock
        if sock is None or sock is not self._sock:
            return  # an old socket's reader noticing what we already handled
        self._sock = None
        try:
            sock.close()
        except OSError:
            pass
        log.debug("peer=%s:%d connection lost: %s", self.addr, self.port, exc)
        for waiter in list(self._pending.values()):
            if not waiter.ready():
                waiter.set_exception(Unavailable(f"peer {self.addr}:{self.port}: {exc}"))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._reader is not None:
            self._reader.kill(block=False)


class PeerPool:
    """Connections to every peer, by address, created on first use."""

    def __init__(self, connect_timeout_s: float = 5.0) -> None:
        self._conns: dict[tuple[str, int], PeerConnection] = {}
        self._connect_timeout_s = connect_timeout_s

    def get(self, addr: str, port: int) -> PeerConnection:
        key = (addr, port)
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = PeerConnection(addr, port, self._connect_timeout_s)
        return conn

    def call(self, addr: str, port: int, header: dict, payload=b"",
             timeout_s: float = 30.0) -> wire.Frame:
        return self.get(addr, port).call(header, payload, timeout_s)

    def drop(self, addr: str, port: int, why: str) -> None:
        """Fail every request in flight to that peer now (it left the epoch)."""
        conn = self._conns.pop((addr, port), None)
        if conn is not None:
            conn._broken(ConnectionError(why))

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
