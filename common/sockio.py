"""Buffered socket I/O shared by the peer protocol and the NBD server.

`SocketReader` reads as much as the socket has into one buffer and hands out
pieces of it, so a burst of small messages costs one ``recv_into`` rather than
several per message; a large payload is received straight into its own buffer.
The buffer starts small (a hundred idle peer connections must not hold 256 KiB
each) and grows, up to its limit, when a piece needs more or a ``recv_into``
fills it: a busy connection soon reads in large gulps.  A connection that then waits
idle (``SHRINK_AFTER_IDLE_S``) with nothing buffered goes back to the small buffer:
after a burst of I/O through a gateway, a hundred grown buffers were 25 MiB kept for
nothing.  The wait is gevent's own (the socket's read watcher), so only a connection
that was about to block anyway pays the clock reads.

`BufferWriter` queues whole messages (lists of buffers, never copied or
concatenated) and writes everything queued during one turn of the event loop
with a single ``sendmsg``.  At queue depth 1 that is one syscall per message; at
depth 16 it is one for many.
"""
from __future__ import annotations

import socket
import time

import gevent

READ_BUFFER_BYTES = 256 << 10      # the most one reader's buffer grows to
INITIAL_READ_BUFFER_BYTES = 16 << 10
SHRINK_AFTER_IDLE_S = 1.0
MAX_IOV = 512


class SocketReader:
    def __init__(self, sock: socket.socket, buffer_bytes: int = READ_BUFFER_BYTES,
                 initial_bytes: int = INITIAL_READ_BUFFER_BYTES) -> None:
        self._sock = sock
        self._limit = buffer_bytes
        self._initial = min(initial_bytes, buffer_bytes)
        self._buf = bytearray(self._initial)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def _fill(self, need: int) -> None:
        """Until at least ``need`` bytes are buffered (need <= ``buffer_bytes``)."""
        if need > len(self._buf):
            self._resize(need)
        elif self._start + need > len(self._buf):   # compact: move the tail to the front
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start:self._end]
            self._start, self._end = 0, n
        while self._end - self._start < need:
            r, room = self._receive(need)
            if r == 0:
                raise ConnectionError("connection closed by peer")
            self._end += r
            if r == room and len(self._buf) < self._limit:   # busy: read more at a time
                self._resize(len(self._buf) * 2)

    def _receive(self, need: int) -> tuple[int, int]:
        """One ``recv_into`` the free space: (bytes received, room there was).

        On a gevent socket without a timeout, the wait for data is done here: a drained
        buffer that waited ``SHRINK_AFTER_IDLE_S`` or more is replaced by a small one
        before the bytes land (never while a receive into it is pending)."""
        sock = self._sock
        raw, event = getattr(sock, "_sock", None), getattr(sock, "_read_event", None)
        if raw is None or event is None or sock.timeout is not None:
            return sock.recv_into(self._view[self._end:]), len(self._buf) - self._end
        while True:
            try:
                return raw.recv_into(self._view[self._end:]), len(self._buf) - self._end
            except (BlockingIOError, InterruptedError):
                pass
            waited = time.monotonic()
            sock._wait(event)
            if (self._start == self._end and len(self._buf) > self._initial >= need
                    and time.monotonic() - waited >= SHRINK_AFTER_IDLE_S):
                self._buf = bytearray(self._initial)
                self._view = memoryview(self._buf)
                self._start = self._end = 0

    def _resize(self, at_least: int) -> None:
        """A bigger buffer (at least ``at_least``, at most the limit), the buffered bytes
        moved to its front."""
        size = min(self._limit, max(at_least, 2 * len(self._buf)))
        buf = bytearray(size)
        n = self._end - self._start
        buf[:n] = self._view[self._start:self._end]
        self._buf, self._view = buf, memoryview(buf)
        self._start, self._end = 0, n

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes (n <= the buffer size), a view valid until the next call."""
        self._fill(n)
        piece = self._view[self._start:self._start + n]
        self._start += n
        return piece

    def take_into_new(self, n: int) -> bytearray:
        """The next ``n`` bytes in a buffer of their own (what is buffered, then straight
        from the socket: no copy through the read buffer)."""
        payload = bytearray(n)
        have = min(self._end - self._start, n)
        payload[:have] = self._view[self._start:self._start + have]
        self._start += have
        view = memoryview(payload)
        got = have
        while got < n:
            r = self._sock.recv_into(view[got:], n - got)
            if r == 0:
                raise ConnectionError("connection closed by peer")
            got += r
        return payload

    @property
    def buffer_bytes(self) -> int:
        """The most one piece may take (the buffer's limit)."""
        return self._limit

    @property
    def allocated_bytes(self) -> int:
        return len(self._buf)


class BufferWriter:
    """Coalescing writer for one socket: `send` queues whole messages (lists of buffers,
    never copied) and never blocks; everything queued during one turn of the event
    loop goes out with a single ``sendmsg``.

    That ``sendmsg`` runs in a loop callback at the end of the turn, straight on the
    non-blocking socket (a greenlet per flush would cost more than the syscall); only
    what the socket does not take at once is left to a greenlet that waits for room.

    A failed write closes the socket and calls ``on_error`` (if given); the
    connection's reader then fails too, and whoever waits for replies learns it there.

    ``queued_bytes`` is what was queued and not yet taken by the kernel and
    ``queued_buffers`` how many buffers wait (a bound on user-space memory held for
    replies); ``on_sent`` (if set) is called after every ``sendmsg`` that moved bytes,
    e.g. to wake a reader waiting for that memory to be freed.
    """

    def __init__(self, sock: socket.socket, on_error=None) -> None:
        self._sock = sock
        self._raw = getattr(sock, "_sock", None)    # gevent's socket wraps a non-blocking one
        self._loop = gevent.get_hub().loop
        self._queue: list = []
        self._scheduled = False
        self._on_error = on_error
        self.on_sent = None
        self.queued_bytes = 0
        self.error: BaseException | None = None

    @property
    def queued_buffers(self) -> int:
        return len(self._queue)

    def send(self, *buffers) -> None:
        if self.error is not None:
            raise ConnectionError(f"connection failed: {self.error}")
        for b in buffers:
            n = memoryview(b).nbytes
            if n:
                self._queue.append(b)
                self.queued_bytes += n
        if not self._scheduled:
            self._scheduled = True
            if self._raw is not None:
                self._loop.run_callback(self._flush_now)
            else:
                gevent.spawn(self._flush)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Until everything queued is written (or the write failed, or time is up)."""
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._scheduled) and self.error is None \
                and time.monotonic() < deadline:
            gevent.sleep(0.001)

    def _flush_now(self) -> None:
        """In the hub: what the socket takes without blocking; a greenlet sends the rest."""
        try:
            while self._queue:
                views = [memoryview(b).cast("B") for b in self._queue[:MAX_IOV]]
                try:
                    sent = self._raw.sendmsg(views)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if sent:
                    self._moved(sent)
                rest = _after(views, sent)
                if rest:
                    self._queue[:len(views)] = rest
                    gevent.spawn(self._flush)
                    return
                del self._queue[:len(views)]
            self._scheduled = False
        except OSError as exc:
            self._failed(exc)
        except BaseException as exc:  # noqa: B036 - nothing may escape into the hub
            self._failed(exc)

    def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_IOV], self._queue[MAX_IOV:]
                views = [memoryview(b).cast("B") for b in batch]
                while views:
                    sent = self._sock.sendmsg(views)
                    self._moved(sent)
                    views = _after(views, sent)
        except OSError as exc:
            self._failed(exc)
        finally:
            self._scheduled = False

    def _moved(self, sent: int) -> None:
        self.queued_bytes -= sent
        if self.on_sent is not None:
            self.on_sent()

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self._queue = []
        self.queued_bytes = 0
        self._scheduled = False
        try:
            self._sock.close()
        except OSError:
            pass
        if self._on_error is not None:
            self._on_error(exc)


def _after(views: list, sent: int) -> list:
    """What is left of ``views`` once ``sent`` bytes of them went out."""
    i = 0
    while i < len(views) and sent >= views[i].nbytes:
        sent -= views[i].nbytes
        i += 1
    rest = views[i:]
    if rest and sent:
        rest[0] = rest[0][sent:]
    return rest
