"""Peer request server: reads frames, runs each request in a greenlet of its own
(recycled, `common.workers.Workers`).

Replies go back in completion order, matched by the request id, so one slow
request never holds up the others on the same connection.  A malformed frame
ends that connection only.

With a ``key``, a connection is served only once the client proved the cluster key
(`sheep.peer.handshake.accept`, within ``auth_timeout_s``); otherwise it is closed
before its first frame is read, with one log line.  Connections beyond
``max_connections`` (those still authenticating included) are closed at accept.
"""
from __future__ import annotations

import logging
import socket
from typing import Callable

from gevent.server import StreamServer

from common.errors import SheepError
from common.workers import Workers
from sheep.peer import handshake
from sheep.peer.framing import FrameReader, FrameWriter

log = logging.getLogger(__name__)

# handler(header, payload) -> (reply header fields, reply payload)
Handler = Callable[[dict, bytes], tuple[dict, bytes]]

AUTH_TIMEOUT_S = 5.0


class PeerServer:
    def __init__(self, handler: Handler, host: str, port: int, *,
                 key: bytes | None, per_connection: int = 256,
                 max_connections: int = 1024, auth_timeout_s: float = AUTH_TIMEOUT_S) -> None:
        self._handler = handler
        self._key = key                       # the cluster's peer key (None: no authentication)
        self._auth_timeout_s = auth_timeout_s
        self._max_connections = max_connections
        self._per_connection = per_connection
        self._server = StreamServer((host, port), self._serve)
        self._conns: set = set()

    def start(self) -> None:
        self._server.start()

    @property
    def port(self) -> int:
        return self._server.server_port

    def stop(self) -> None:
        self._server.stop(timeout=1)
        for sock in list(self._conns):
            try:
                sock.close()
            except OSError:
                pass

    def _serve(self, sock, address) -> None:
        if len(self._conns) >= self._max_connections:
            log.warning("peer=%s:%d refused: already %d peer connections "
                        "(peer_max_connections)", address[0], address[1], len(self._conns))
            sock.close()
            return
        self._conns.add(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._key is not None:
                handshake.accept(sock, self._key, self._auth_timeout_s)
        except OSError as exc:
            log.warning("peer=%s:%d refused before its first frame: %s", address[0],
                        address[1], exc)
            self._conns.discard(sock)
            sock.close()
            return
        writer = FrameWriter(sock)
        reader = FrameReader(sock)
        pool = Workers(self._per_connection)
        try:
            while True:
                frame = reader.read_frame()
                pool.spawn(self._run, writer, frame.header, frame.payload)
                frame = None            # not kept alive (a payload) while waiting for the next
        except ConnectionError:
            pass
        except (OSError, SheepError) as exc:
            log.info("peer=%s:%d connection closed: %s", address[0], address[1], exc)
        finally:
            self._conns.discard(sock)
            pool.join(timeout=5)
            pool.close()
            sock.close()

    def _run(self, writer: FrameWriter, header: dict, payload) -> None:
        rid = header.get("id")
        try:
            reply, data = self._handler(header, payload)
            reply = {"id": rid, "code": 0, **reply}
        except SheepError as exc:
            reply, data = {**exc.to_wire(), "id": rid}, b""
        except Exception as exc:  # the one catch-all: log it, answer EIO-ish
            log.exception("op=%s failed", header.get("op"))
            reply, data = {"id": rid, "code": 1, "error": f"internal error: {exc}"}, b""
        try:
            writer.send(reply, data)
        except OSError:
            pass  # the connection is gone; its reader loop ends it
