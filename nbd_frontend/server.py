"""The gevent shell around the sans-IO NBD protocol: sockets, greenlets, the export.

Theory of operation
-------------------
One greenlet per connection runs the
handshake (``nbd_frontend.handshake``) and then reads requests continuously
(``nbd_frontend.protocol.RequestParser``).  Each valid request runs in a greenlet of
the connection's `common.workers.Workers` (at most ``pool_size`` at once, recycled:
a fresh greenlet per request costs ~10 us); when all are busy the reader blocks, which is the back-pressure towards the client.  Replies go out in
completion order; each reply (header, then payload as a separate buffer) is
queued whole on the connection's `BufferWriter`.

Bounded memory (``nbd_frontend.budget``): before parsing a request the reader
reserves what it will hold (a READ's data, a WRITE's payload) until its reply is
queued; the writer counts queued replies until the kernel takes them.  When the
next request does not fit under ``queue_bytes`` the reader stops reading the
socket until requests finish or replies leave: a client that does not read its
replies is not read from.  Connections beyond ``max_connections`` are closed at
accept.

Ending a connection: DISC, EOF, a framing error, ``stop()`` or revocation stop
the reader; requests already running are waited for (their replies may fail
quietly on a dead socket); then ``export.close()`` runs exactly once.

Revocation (``drop_export_clients``): the connection is flagged and its socket
shut down at once.  Every request checks the flag right before touching the
export, so nothing that arrives or is still queued after the drop executes.

Durability: a FLUSH calls ``export.flush()``, which covers every write that
returned before it, hence every write replied to before the FLUSH arrived.  A
FUA write/trim/zero passes ``fua=True`` to the export and, unless the export
sets ``handles_fua = True`` (it makes fua writes durable itself), is followed by
``export.flush()`` before the reply.
"""
from __future__ import annotations

import logging
import socket
import ssl
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from common.errors import SheepError
from common.sockio import BufferWriter
from common.stages import NULL
from common.workers import Workers
from nbd_frontend import protocol as p
from nbd_frontend.budget import MIN_CAP, OVERHEAD, Budget, request_cost
from nbd_frontend import tls as nbd_tls
from nbd_frontend.export import Export, ExportProvider, errno_for, option_error_for
from nbd_frontend.handshake import (
    CLOSED,
    Aborted,
    ExportRequest,
    ListRequest,
    MetaContextRequest,
    Ready,
    ServerHandshake,
    StartTls,
)
from nbd_frontend.protocol import NEED_DATA, NbdProtocolError, Request, RequestParser

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024


class NbdServer:
    """NBD server for the exports of one provider.

    ``NbdServer(provider, host, port, *, pool_size=64, max_connections=256,
    handshake_timeout_s=30.0, tls_dir=None, max_options=64)``; ``start()``, ``stop()``,
    ``address``, ``drop_export_clients(name) -> int``.  Port 0 picks a free port.

    ``tls_dir``: x509 files (`nbd_frontend.tls`); clients must then STARTTLS with a
    certificate of that CA.  Unusable files raise ``InvalidRequest`` here.  The
    handshake of one connection (TLS included) must end within
    ``handshake_timeout_s`` of accept and send at most ``max_options`` options.

    Limits: a connection holds at most about ``queue_bytes`` for its requests and
    queued replies (at least ``budget.MIN_CAP``; beyond it the connection stops
    reading), and is closed when its replies have not moved for ``send_timeout_s``
    while it waits for room; connections beyond ``max_connections`` are closed at
    accept.
    """

    def __init__(self, provider: ExportProvider, host: str = "127.0.0.1", port: int = 10809, *,
                 pool_size: int = 64, max_connections: int = 256,
                 handshake_timeout_s: float = 30.0, timing=NULL, export_timing=None,
                 tls_dir=None, queue_bytes: int = 64 << 20, max_options: int = 64,
                 send_timeout_s: float = 60.0):
        self.provider = provider
        self.tls_dir = tls_dir              # x509 files: TLS required (None: plaintext)
        self.tls_context = nbd_tls.server_context(tls_dir) if tls_dir is not None else None
        self.queue_bytes = queue_bytes      # per connection: replies queued + payloads buffered
        self.max_options = max_options      # options in one handshake
        self.send_timeout_s = send_timeout_s    # replies not moving while the reader waits
        # request received (parsed) to reply queued, per command: labels(op).observe(s)
        self.timing = {name: timing.labels(name) for name in _COMMAND_NAMES.values()}
        # the same, per export: labels(export_name, op).observe(s, nbytes) (None: not kept)
        self.export_timing = export_timing
        self.pool_size = pool_size
        self.handshake_timeout_s = handshake_timeout_s
        self._listen = (host, port)
        self._max_connections = max_connections
        self._server: StreamServer | None = None
        self._connections: set[_Connection] = set()
        self.refused = 0                    # connections closed at accept (over the limit)
        self._refused_logged = float("-inf")
        self._by_export: dict[str, set[_Connection]] = {}

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return self._listen
        return self._server.address[:2]

    def start(self) -> None:
        if self.queue_bytes < MIN_CAP:
            raise ValueError(f"queue_bytes {self.queue_bytes} is below the minimum {MIN_CAP}")
        # an unbounded pool: _handle refuses what exceeds max_connections at once
        self._server = StreamServer(self._listen, self._handle, spawn=Pool())
        self._server.start()
        log.info("nbd server listening on %s:%d%s", *self.address,
                 f" (TLS required, x509 files in {self.tls_dir})" if self.tls_context else "")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every client connection; wait for them to end."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._connections):
            conn.shutdown("server stopping")
        self._server.stop(timeout=timeout_s)
        log.info("nbd server on %s:%d stopped", *self.address)

    def drop_export_clients(self, name: str) -> int:
        """Cut every connection serving export ``name`` now (e.g. its VDI lock was broken).

        Returns how many connections were cut.  No request of those connections
        that has not started executing yet will run.
        """
        conns = list(self._by_export.get(name, ()))
        for conn in conns:
            conn.revoke()
        if conns:
            log.warning("dropped %d client(s) of export %s", len(conns), name)
        return len(conns)

    def drop_export(self, export) -> int:
        """Cut the connections serving this very export object (not other connections of
        the same export name); returns how many were cut."""
        conns = [c for c in self._by_export.get(getattr(export, "name", None), ())
                 if c.export is export]
        for conn in conns:
            conn.revoke()
        if conns:
            log.warning("dropped %d client(s) of export %s", len(conns), export.name)
        return len(conns)

    @property
    def connections(self) -> int:
        """Client connections open now (handshaking or attached)."""
        return len(self._connections)

    def clients(self, name: str) -> int:
        """Number of connections currently attached to export ``name``."""
        return len(self._by_export.get(name, ()))

    # -- bookkeeping used by _Connection (no yields inside) ----------------------------
    def _attach(self, conn: "_Connection", name: str) -> None:
        self._by_export.setdefault(name, set()).add(conn)

    def _detach(self, conn: "_Connection") -> None:
        self._connections.discard(conn)
        name = conn.export_name
        if name is not None:
            conns = self._by_export.get(name)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._by_export[name]

    def _handle(self, sock: socket.socket, addr) -> None:
        if len(self._connections) >= self._max_connections:
            self._refuse(sock, f"{addr[0]}:{addr[1]}")
            return
        conn = _Connection(self, sock, f"{addr[0]}:{addr[1]}")
        self._connections.add(conn)
        try:
            conn.run()
        finally:
            self._detach(conn)


    def _refuse(self, sock: socket.socket, peer: str) -> None:
        """Close a connection over the limit before its greeting; one log line a second."""
        sock.close()
        self.refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 1.0:
            self._refused_logged = now
            log.warning("nbd client %s refused: %d connections open (max %d); %d refused so far",
                        peer, len(self._connections), self._max_connections, self.refused)


_COMMAND_NAMES = {p.CMD_READ: "read", p.CMD_WRITE: "write", p.CMD_FLUSH: "flush",
                  p.CMD_TRIM: "trim", p.CMD_WRITE_ZEROES: "write_zeroes",
                  p.CMD_BLOCK_STATUS: "block_status"}
# the commands counted per export (block status moves no data: only the server-wide histogram)
_EXPORT_IO = (p.CMD_READ, p.CMD_WRITE, p.CMD_FLUSH, p.CMD_TRIM, p.CMD_WRITE_ZEROES)


class _Connection:
    """One client: handshake, then the request loop (see module docstring)."""

    def __init__(self, server: NbdServer, sock: socket.socket, peer: str):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.export: Export | None = None
        self.export_name: str | None = None
        self.revoked = False
        self.closing = False
        self._writer = BufferWriter(sock, on_error=self._send_failed)
        self._tx: p.Transmission | None = None
        self._contexts: tuple = ()  # (id, name) of the meta contexts negotiated
        self._fua_by_export = True
        self._io: dict = {}         # command -> its export's counts (export_timing)
        self._budget = Budget(server.queue_bytes)   # bytes held for admitted requests
        self._room = Event()        # set when memory is freed while the reader waits
        self._blocked = False       # the reader waits for room

    # -- lifecycle ------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ready, leftover = self._handshake()
            if ready is not None and not self.revoked and not self.closing:
                self._transmission(ready, leftover)
        except NbdProtocolError as exc:
            log.warning("nbd client %s export=%s: protocol error: %s; closing",
                        self.peer, self.export_name, exc)
        except (OSError, gevent.Timeout) as exc:
            log.debug("nbd client %s export=%s: connection ended: %s",
                      self.peer, self.export_name, exc)
        except Exception:
            log.exception("nbd client %s export=%s: unexpected error", self.peer, self.export_name)
        finally:
            if not self.revoked:
                self._writer.drain()   # replies of the last requests (e.g. before DISC)
            self._close_socket()
            if self.export is not None:
                try:
                    self.export.close()
                except Exception:
                    log.exception("nbd client %s: closing export %s failed",
                                  self.peer, self.export_name)
            log.info("nbd client %s export=%s disconnected", self.peer, self.export_name)

    def shutdown(self, why: str) -> None:
        """Stop the reader now; running requests finish, then the export closes."""
        if self.closing:
            return
        self.closing = True
        log.info("nbd client %s export=%s: %s", self.peer, self.export_name, why)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def revoke(self) -> None:
        self.revoked = True
        self.shutdown("revoked")

    def _close_socket(self) -> None:
        self.closing = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _send(self, header: bytes, payload=None) -> None:
        """Queue one whole reply (header, then the payload buffer as it is, never copied).

        Replies finished during one turn of the event loop leave in one ``sendmsg``;
        a failed write shuts the connection down."""
        if self.closing:
            return
        try:
            if payload is None:
                self._writer.send(header)
            else:
                self._writer.send(header, payload)
        except OSError as exc:
            self._send_failed(exc)

    def _send_failed(self, exc: BaseException) -> None:
        log.debug("nbd client %s: send failed: %s", self.peer, exc)
        self.shutdown("send failed")
        self._room.set()

    def _freed(self) -> None:
        """Memory held for the client went down (a reply left, a request finished)."""
        if self._blocked:
            self._room.set()

    def _held(self) -> int:
        """Bytes the writer holds: queued replies and their buffers."""
        writer = self._writer
        return writer.queued_bytes + OVERHEAD * writer.queued_buffers

    def _wait_for_room(self, cost: int) -> None:
        """Stop reading until a request of ``cost`` fits (or the connection closes)."""
        budget = self._budget
        self._blocked = True
        try:
            while not self.closing and not budget.admits(cost, self._held()):
                self._room.clear()
                if not self._room.wait(self.server.send_timeout_s) and not budget.reserved:
                    self.shutdown(f"replies not read for {self.server.send_timeout_s:g} s "
                                  f"({self._held()} bytes queued)")
        finally:
            self._blocked = False

    # -- handshake --------------------------------------------------------------------
    def _handshake(self) -> tuple[Ready | None, bytes]:
        """Negotiate; (Ready, bytes already received for transmission), or (None, b"").

        One deadline, ``handshake_timeout_s`` after accept, covers every wait for the
        client (reads, writes, the TLS handshake): a client trickling bytes cannot
        stretch it.  The provider calls that answer options (list, describe, open) are
        the server's own time: they are not interrupted (an open cut in the middle
        could leave a lock behind) and move the deadline back by what they took, so a
        slow catalog never fails a client; ``max_options`` bounds how many there are."""
        server = self.server
        hs = ServerHandshake(tls=server.tls_context is not None, max_options=server.max_options,
                             extra_contexts=hasattr(server.provider, "meta_contexts"))
        deadline = time.monotonic() + server.handshake_timeout_s
        while True:
            event = hs.next_event()
            if event is NEED_DATA:
                with self._client_io(deadline):
                    out = hs.data_to_send()
                    if out:
                        self.sock.sendall(out)
                    data = b"" if hs.state == CLOSED else self.sock.recv(65536)
                if not data:                        # aborted, refused, or EOF
                    if hs.tls_pending:
                        log.info("nbd client %s left before STARTTLS (TLS is required)",
                                 self.peer)
                    return None, b""
                hs.receive_data(data)
            elif isinstance(event, StartTls):
                with self._client_io(deadline):
                    self.sock.sendall(hs.data_to_send())
                    self._start_tls()
                hs.tls_started()
            elif isinstance(event, (ListRequest, ExportRequest, MetaContextRequest)):
                began = time.monotonic()
                if isinstance(event, ListRequest):
                    hs.reply_list(self._list_exports())
                elif isinstance(event, MetaContextRequest):
                    hs.reply_meta_contexts(self._meta_contexts(event.export))
                else:
                    self._answer_export(hs, event)
                deadline += time.monotonic() - began
            elif isinstance(event, Aborted):
                log.debug("nbd client %s aborted the handshake", self.peer)
            elif isinstance(event, Ready):
                with self._client_io(deadline):
                    self.sock.sendall(hs.data_to_send())
                return event, hs.trailing_data()

    def _client_io(self, deadline: float) -> gevent.Timeout:
        """A timeout for waiting on the client until the handshake ``deadline``."""
        limit = self.server.handshake_timeout_s
        return gevent.Timeout(max(deadline - time.monotonic(), 0.0),
                              NbdProtocolError(f"handshake not finished within {limit:g} s"))

    def _start_tls(self) -> None:
        """TLS on this socket after the STARTTLS ACK; the connection then reads and
        writes through it, and its peer name carries the client certificate's CN."""
        try:
            tls = nbd_tls.start(self.server.tls_context, self.sock)
        except ssl.SSLError as exc:
            why = getattr(exc, "verify_message", None) or exc.reason or exc
            raise NbdProtocolError(f"TLS handshake failed: {why}") from None
        self.sock = tls
        self._writer = BufferWriter(nbd_tls.TlsSender(tls), on_error=self._send_failed)
        self.peer = f"{self.peer} cn={nbd_tls.peer_common_name(tls)}"
        log.info("nbd client %s: %s established", self.peer, tls.version())

    def _list_exports(self) -> list[str]:
        try:
            return list(self.server.provider.list_exports())
        except Exception as exc:
            option_error_for(exc, "list_exports")
            return []

    def _meta_contexts(self, name: str) -> list[str]:
        """The extra meta contexts export ``name`` offers (none when it is unknown)."""
        try:
            return list(self.server.provider.meta_contexts(name))
        except Exception as exc:
            option_error_for(exc, "meta_contexts")
            return []

    def _answer_export(self, hs: ServerHandshake, req: ExportRequest) -> None:
        provider = self.server.provider
        try:
            if req.option == p.OPT_INFO:
                size, readonly = provider.describe(req.name)
            else:
                export = provider.open_export(req.name, self.peer)
                # Register before any yield so a drop can never miss this connection.
                self.export, self.export_name = export, req.name
                self.server._attach(self, req.name)
                self._export_timers(req.name)
                self._fua_by_export = bool(getattr(export, "handles_fua", False))
                size, readonly = export.size, export.readonly
        except Exception as exc:
            code = option_error_for(exc, f"opening export {req.name!r}")
            detail = exc.message if isinstance(exc, SheepError) else "internal error"
            log.info("nbd client %s refused export %r: %s", self.peer, req.name, detail)
            hs.refuse_export(code, f"export {req.name!r}: {detail}")
            return
        hs.accept_export(size, readonly)
        if req.option != p.OPT_INFO:
            log.info("nbd client %s attached export=%s size=%d readonly=%s",
                     self.peer, req.name, size, readonly)

    def _export_timers(self, name: str) -> None:
        timing = self.server.export_timing
        if timing is not None:
            self._io = {t: timing.labels(name, _COMMAND_NAMES[t]) for t in _EXPORT_IO}

    # -- transmission -----------------------------------------------------------------
    def _transmission(self, ready: Ready, leftover: bytes) -> None:
        tx = self._tx = ready.transmission()
        self._contexts = ready.contexts
        self._writer.on_sent = self._freed
        parser = RequestParser()
        if leftover:
            parser.receive_data(leftover)
        pool = Workers(self.server.pool_size)
        buf = bytearray(RECV_BYTES)
        view = memoryview(buf)
        try:
            while not self.closing:
                if not self._dispatch_ready(parser, tx, pool):
                    return
                payload = parser.payload_buffer()
                if payload is not None:
                    n = self.sock.recv_into(payload)
                    if not n:
                        return
                    parser.payload_received(n)
                else:
                    n = self.sock.recv_into(view)
                    if not n:
                        return
                    parser.receive_data(view[:n])
        finally:
            pool.join()
            pool.close()

    def _dispatch_ready(self, parser: RequestParser, tx: p.Transmission, pool: Workers) -> bool:
        """Start every complete request; False once the connection must stop reading.

        Each request is admitted (its memory reserved) before the parser allocates
        anything for it; one that does not fit waits here, and nothing more is read."""
        budget = self._budget
        while True:
            head = parser.peek()
            if head is not None:
                cost = request_cost(*head)
                if not budget.admits(cost, self._held()):
                    self._wait_for_room(cost)
                    if self.closing:
                        return False
                budget.take(cost)
            req = parser.next_event()
            if req is NEED_DATA:
                return True
            if self.revoked or self.closing:
                return False
            if req.type == p.CMD_DISC:
                log.debug("nbd client %s export=%s: disconnect", self.peer, self.export_name)
                return False
            err, msg = p.check_request(req, tx)
            if err:
                self._send(p.error_reply(req.handle, err, tx.structured, msg))
                budget.release(request_cost(req.type, req.length))
                continue
            pool.spawn(self._execute, req, tx, time.monotonic())  # blocks while the pool is full

    def _execute(self, req: Request, tx: p.Transmission, received: float) -> None:
        """Run one admitted request; its reservation ends once its reply is queued."""
        try:
            if self.revoked:
                return                              # arrived or queued after the drop
            self._run(req, tx)
        finally:
            self._budget.release(request_cost(req.type, req.length))
            self._freed()
            elapsed = time.monotonic() - received
            timer = self.server.timing.get(_COMMAND_NAMES.get(req.type))
            if timer is not None:
                timer.observe(elapsed)
            io = self._io.get(req.type)
            if io is not None:
                io.observe(elapsed, req.length)

    def _block_status(self, export, req: Request) -> bytes:
        """One BLOCK_STATUS chunk per negotiated context (DONE on the last); every context
        is asked before anything is sent, so a failure is one error reply."""
        req_one = bool(req.flags & p.CMD_FLAG_REQ_ONE)
        contexts = self._contexts or ((p.BASE_ALLOCATION_ID, p.META_BASE_ALLOCATION),)
        chunks = []
        for i, (ctx_id, name) in enumerate(contexts):
            if name == p.META_BASE_ALLOCATION:
                extents = p.normalize_extents(export.block_status(req.offset, req.length),
                                              req.length, req_one)
            else:
                extents = p.normalize_extents(
                    export.context_status(name, req.offset, req.length), req.length,
                    req_one, mask=0xFFFFFFFF)
            chunks.append(p.block_status_reply(req.handle, ctx_id, extents,
                                               done=i == len(contexts) - 1))
        return b"".join(chunks)

    def _run(self, req: Request, tx: p.Transmission) -> None:
        export = self.export
        fua = bool(req.flags & p.CMD_FLAG_FUA)
        try:
            if req.type == p.CMD_READ:
                data = export.read(req.offset, req.length)
                if len(data) != req.length:
                    raise SheepError(f"export returned {len(data)} of {req.length} bytes")
                self._send(p.read_reply_header(req.handle, req.offset, req.length, tx.structured),
                           data)
                return
            if req.type == p.CMD_BLOCK_STATUS:
                self._send(self._block_status(export, req))
                return
            if req.type == p.CMD_WRITE:
                export.write(req.offset, req.payload, fua=fua)
            elif req.type == p.CMD_FLUSH:
                export.flush()
            elif req.type == p.CMD_TRIM:
                export.trim(req.offset, req.length, fua=fua)
            elif req.type == p.CMD_WRITE_ZEROES:
                may_trim = not req.flags & p.CMD_FLAG_NO_HOLE
                export.write_zeroes(req.offset, req.length, may_trim, fua=fua)
            if fua and not self._fua_by_export:
                export.flush()
            self._send(p.simple_reply(req.handle))
        except Exception as exc:
            err = errno_for(exc, f"export {self.export_name} command {req.type}")
            msg = exc.message if isinstance(exc, SheepError) else "internal error"
            log.debug("nbd client %s export=%s cmd=%d offset=%d length=%d: %s (errno %d)",
                      self.peer, self.export_name, req.type, req.offset, req.length, msg, err)
            self._send(p.error_reply(req.handle, err, tx.structured, msg))
