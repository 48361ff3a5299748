"""Multiplexed connections to other sheep (gevent shell over ``sheep.peer.wire``).

One TCP connection per peer carries any number of requests at once.  Senders
queue whole frames on the connection's `FrameWriter` (payload buffers as they
are, written with scatter/gather ``sendmsg``); one reader greenlet per
connection reads replies through a `FrameReader` and hands each to the waiting
caller by request id, in whatever order they come.  When a connection breaks, every caller waiting on it gets
`Unavailable` and the next call dials again.
"""
from __future__ import annotations

import itertools
import logging
import socket
import time

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore

from common.errors import SheepError, Unavailable
from common.stages import NULL
from sheep.peer.framing import FrameReader, FrameWriter
from sheep.peer import wire

log = logging.getLogger(__name__)


class PeerConnection:
    """One multiplexed connection to one peer address."""

    def __init__(self, addr: str, port: int, connect_timeout_s: float = 5.0,
                 timing=NULL) -> None:
        self.addr, self.port = addr, port
        self._timing = timing                 # labels(op).observe(s): request sent to reply
        self._timers: dict = {}
        self._connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None
        self._writer: FrameWriter | None = None
        self._dial_lock = Semaphore()
        self._pending: dict[int, AsyncResult] = {}
        self._ids = itertools.count(1)
        self._reader: gevent.Greenlet | None = None

    def _connected(self) -> FrameWriter:
        if self._sock is not None:
            return self._writer
        with self._dial_lock:
            if self._sock is None:
                sock = socket.create_connection((self.addr, self.port), self._connect_timeout_s)
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._writer = FrameWriter(sock)
                self._sock = sock
                self._reader = gevent.spawn(self._read_loop, sock)
        return self._writer

    def call(self, header: dict, payload=b"", timeout_s: float = 30.0) -> wire.Frame:
        """Send one request and wait for its reply.

        Raises the reply's error as its `SheepError` class, or `Unavailable` when
        the peer cannot be reached or does not answer within ``timeout_s``.
        """
        return self.start(header, payload).get(timeout_s)

    def start(self, header: dict, payload=b"") -> "PendingCall":
        """Send one request now; the reply is waited for with ``.get(timeout_s)``.  Many
        requests to many peers can be in flight from one greenlet this way (a fan-out
        needs no greenlet per replica).  Unavailable at once when the peer is unreachable."""
        rid = next(self._ids)
        result = AsyncResult()
        self._pending[rid] = result
        try:
            self._connected().send({**header, "id": rid}, payload)
        except OSError as exc:
            self._pending.pop(rid, None)
            self._broken(exc)
            raise Unavailable(f"peer {self.addr}:{self.port}: {exc}") from None
        op = header.get("op")
        timer = self._timers.get(op)
        if timer is None:
            timer = self._timers[op] = self._timing.labels(op)
        return PendingCall(self, rid, result, timer)

    def _read_loop(self, sock: socket.socket) -> None:
        reader = FrameReader(sock)
        try:
            while True:
                frame = reader.read_frame()
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


class PendingCall:
    """A request in flight on a `PeerConnection`."""

    __slots__ = ("conn", "rid", "result", "timer", "sent")

    def __init__(self, conn: PeerConnection, rid: int, result: AsyncResult, timer=NULL) -> None:
        self.conn, self.rid, self.result = conn, rid, result
        self.timer, self.sent = timer, time.monotonic()

    def get(self, timeout_s: float = 30.0) -> wire.Frame:
        """The reply; its error raised as its `SheepError` class, `Unavailable` when the peer
        does not answer within ``timeout_s``."""
        try:
            frame = self.result.get(timeout=timeout_s)
        except gevent.Timeout:
            raise Unavailable(f"peer {self.conn.addr}:{self.conn.port}: no reply in "
                              f"{timeout_s}s") from None
        finally:
            self.conn._pending.pop(self.rid, None)
        self.timer.observe(time.monotonic() - self.sent)
        if frame.header.get("code", 0):
            raise SheepError.from_wire(frame.header)
        return frame


class _PeerTiming:
    """The pool's histogram with the peer label already given."""

    def __init__(self, timing, peer: str) -> None:
        self._timing, self._peer = timing, peer

    def labels(self, op):
        return self._timing.labels(self._peer, op)


class PeerPool:
    """Connections to every peer, by address, created on first use."""

    def __init__(self, connect_timeout_s: float = 5.0, timing=NULL) -> None:
        self._conns: dict[tuple[str, int], PeerConnection] = {}
        self._connect_timeout_s = connect_timeout_s
        self._timing = timing                 # labels(peer, op): the round trip of a request

    def get(self, addr: str, port: int) -> PeerConnection:
        key = (addr, port)
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = PeerConnection(
                addr, port, self._connect_timeout_s,
                _PeerTiming(self._timing, f"{addr}:{port}"))
        return conn

    def call(self, addr: str, port: int, header: dict, payload=b"",
             timeout_s: float = 30.0) -> wire.Frame:
        return self.get(addr, port).call(header, payload, timeout_s)

    def start(self, addr: str, port: int, header: dict, payload=b"") -> PendingCall:
        return self.get(addr, port).start(header, payload)

    def drop(self, addr: str, port: int, why: str) -> None:
        """Fail every request in flight to that peer now (it left the epoch)."""
        conn = self._conns.pop((addr, port), None)
        if conn is not None:
            conn._broken(ConnectionError(why))

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
