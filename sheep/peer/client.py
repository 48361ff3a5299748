"""Multiplexed connections to other sheep (gevent shell over ``sheep.peer.wire``).

One TCP connection per peer carries any number of requests at once.  Senders
queue whole frames on the connection's `FrameWriter` (payload buffers as they
are, written with scatter/gather ``sendmsg``); one reader greenlet per
connection reads replies through a `FrameReader` and hands each to the waiting
caller by request id, in whatever order they come.  When a connection breaks, every
caller waiting on it gets `Unavailable` and the next call dials again.

With a ``key``, every new connection first runs the mutual handshake of
`sheep.peer.auth` (within the connect timeout) and sends no request before the peer
proved the cluster key; a failed handshake is `Unavailable` like an unreachable peer,
its message naming the likely cause (another ``--secret-file``).

A fan-out sends to several peers and waits for all the replies at once (`gather`): one
wake-up when the last one is in, one timer for all of them.
"""
from __future__ import annotations

import itertools
import logging
import socket
import time

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore

from common.errors import NoObject, SheepError, Unavailable
from common.stages import NULL
from sheep.peer import handshake, wire
from sheep.peer.auth import AuthError
from sheep.peer.framing import FrameReader, FrameWriter

log = logging.getLogger(__name__)


class PeerConnection:
    """One multiplexed connection to one peer address."""

    def __init__(self, addr: str, port: int, connect_timeout_s: float = 5.0,
                 timing=NULL, *, key: bytes | None) -> None:
        self.addr, self.port = addr, port
        self._key = key                       # the cluster's peer key (None: no authentication)
        self._timing = timing                 # labels(op).observe(s): request sent to reply
        self._timers: dict = {}
        self._connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None
        self._writer: FrameWriter | None = None
        self._dial_lock = Semaphore()
        self._pending: dict[int, PendingCall] = {}
        self._ids = itertools.count(1)
        self._reader: gevent.Greenlet | None = None

    def _connected(self) -> FrameWriter:
        if self._sock is not None:
            return self._writer
        with self._dial_lock:
            if self._sock is None:
                sock = self._dial()
                self._writer = FrameWriter(sock)
                self._sock = sock
                self._reader = gevent.spawn(self._read_loop, sock)
        return self._writer

    def _dial(self) -> socket.socket:
        """A new connection, authenticated when we have a key (the connect and the
        handshake each within the connect timeout)."""
        sock = gsocket.create_connection((self.addr, self.port), self._connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._key is not None:
                handshake.connect(sock, self._key, self._connect_timeout_s)
            sock.settimeout(None)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, AuthError):
                log.warning("peer=%s:%d authentication failed: %s", self.addr, self.port, exc)
            raise
        return sock

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
        op = header.get("op")
        timer = self._timers.get(op)
        if timer is None:
            timer = self._timers[op] = self._timing.labels(op)
        call = self._pending[rid] = PendingCall(self, rid, timer)
        try:
            self._connected().send({**header, "id": rid}, payload)
        except OSError as exc:
            self._pending.pop(rid, None)
            timer.unanswered()
            self._broken(exc)
            raise Unavailable(f"peer {self.addr}:{self.port}: {exc}") from None
        return call

    def _read_loop(self, sock: socket.socket) -> None:
        reader = FrameReader(sock)
        pending = self._pending
        try:
            while True:
                frame = reader.read_frame()
                call = pending.pop(frame.header.get("id"), None)
                if call is not None:
                    call.complete(frame)
                frame = call = None     # not kept alive (a payload) while waiting for the next
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
        calls, self._pending = list(self._pending.values()), {}
        for call in calls:
            call.complete(error=Unavailable(f"peer {self.addr}:{self.port}: {exc}"))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._reader is not None:
            self._reader.kill(block=False)


class PendingCall:
    """A request in flight on a `PeerConnection`: its reply (or failure) once complete."""

    __slots__ = ("conn", "rid", "timer", "sent", "done", "frame", "error", "arrived",
                 "_gathered")

    def __init__(self, conn: PeerConnection, rid: int, timer=NULL) -> None:
        self.conn, self.rid, self.timer = conn, rid, timer
        self.sent = self.arrived = time.monotonic()
        self.done = False
        self.frame: wire.Frame | None = None
        self.error: Exception | None = None
        self._gathered: _Gathered | None = None

    def complete(self, frame: wire.Frame | None = None, error: Exception | None = None) -> None:
        """The reader's part: the reply came (``frame``) or the connection failed."""
        if self.done:
            return
        self.done, self.frame, self.error = True, frame, error
        self.arrived = time.monotonic()
        gathered = self._gathered
        if gathered is not None:
            gathered.left -= 1
            if gathered.left <= 0:
                gathered.event.set()

    def get(self, timeout_s: float = 30.0) -> wire.Frame:
        """The reply; its error raised as its `SheepError` class, `Unavailable` when the peer
        does not answer within ``timeout_s``."""
        if not self.done:
            gather([self], timeout_s)
        return self.result(timeout_s)

    def result(self, timeout_s: float) -> wire.Frame:
        """What `get` returns or raises, without waiting (after `gather`)."""
        if not self.done:
            self.conn._pending.pop(self.rid, None)
            self.timer.unanswered()
            raise Unavailable(f"peer {self.conn.addr}:{self.conn.port}: no reply in "
                              f"{timeout_s}s")
        if self.error is not None:
            self.timer.unanswered()
            raise self.error
        self.timer.observe(self.arrived - self.sent)
        code = self.frame.header.get("code", 0)
        if code:
            if code != NoObject.code:       # "no copy here" is an answer, not a failure
                self.timer.error()
            raise SheepError.from_wire(self.frame.header)
        return self.frame


class _Gathered:
    __slots__ = ("left", "event")

    def __init__(self, left: int) -> None:
        self.left, self.event = left, Event()


def gather(calls, timeout_s: float) -> None:
    """Until every call in ``calls`` is complete, or ``timeout_s`` passed: one wake-up when
    the last reply arrives.  Then each call's `PendingCall.result` says what it got."""
    waiting = [c for c in calls if not c.done]
    if not waiting:
        return
    gathered = _Gathered(len(waiting))
    for call in waiting:
        call._gathered = gathered
    gathered.event.wait(timeout_s)


class _PeerTiming:
    """The pool's histogram with the peer label already given."""

    def __init__(self, timing, peer: str) -> None:
        self._timing, self._peer = timing, peer

    def labels(self, op):
        return self._timing.labels(self._peer, op)


class PeerPool:
    """Connections to every peer, by address, created on first use."""

    def __init__(self, connect_timeout_s: float = 5.0, timing=NULL, *,
                 key: bytes | None) -> None:
        self._key = key                       # the cluster's peer key (None: no authentication)
        self._conns: dict[tuple[str, int], PeerConnection] = {}
        self._connect_timeout_s = connect_timeout_s
        self._timing = timing                 # labels(peer, op): the round trip of a request

    def get(self, addr: str, port: int) -> PeerConnection:
        key = (addr, port)
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = PeerConnection(
                addr, port, self._connect_timeout_s,
                _PeerTiming(self._timing, f"{addr}:{port}"), key=self._key)
        return conn

    def call(self, addr: str, port: int, header: dict, payload=b"",
             timeout_s: float = 30.0) -> wire.Frame:
        return self.get(addr, port).call(header, payload, timeout_s)

    def start(self, addr: str, port: int, header: dict, payload=b"") -> PendingCall:
        return self.get(addr, port).start(header, payload)

    @staticmethod
    def gather(calls, timeout_s: float) -> None:
        gather(calls, timeout_s)

    def drop(self, addr: str, port: int, why: str) -> None:
        """Fail every request in flight to that peer now (it left the epoch)."""
        conn = self._conns.pop((addr, port), None)
        if conn is not None:
            conn._broken(ConnectionError(why))

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
