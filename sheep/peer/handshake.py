"""The socket side of `sheep.peer.auth`: the handshake's messages, sent and received
with exact lengths under one deadline, on a socket no `SocketReader` reads yet (so no
byte past the handshake is consumed here).

`accept` (server) and `connect` (client) return once the other end proved the cluster
key, or raise `sheep.peer.auth.AuthError` (a `ConnectionError`) saying why: a wrong
key, no handshake at all, or none within ``timeout_s``.  The caller closes the socket.
"""
from __future__ import annotations

import socket
import time

from sheep.peer.auth import (ANSWER, HELLO, REFUSAL, VERDICT, AuthError, BadKey,
                             ClientHandshake, ServerHandshake)


def accept(sock: socket.socket, key: bytes, timeout_s: float) -> None:
    """Authenticate the client on a freshly accepted socket."""
    deadline = time.monotonic() + timeout_s
    shake = ServerHandshake(key)
    _send(sock, shake.hello(), deadline, timeout_s)
    answer = _recv_exact(sock, ANSWER.size, deadline, timeout_s)
    try:
        verdict = shake.verdict(answer)
    except BadKey:
        _send(sock, REFUSAL, deadline, timeout_s)
        raise
    _send(sock, verdict, deadline, timeout_s)
    sock.settimeout(None)


def connect(sock: socket.socket, key: bytes, timeout_s: float) -> None:
    """Authenticate to the server (and it to us) on a freshly connected socket."""
    deadline = time.monotonic() + timeout_s
    shake = ClientHandshake(key)
    hello = _recv_exact(sock, HELLO.size, deadline, timeout_s, "greeting")
    _send(sock, shake.answer(hello), deadline, timeout_s)
    shake.check(_recv_exact(sock, VERDICT.size, deadline, timeout_s, "verdict"))
    sock.settimeout(None)


def _send(sock: socket.socket, data: bytes, deadline: float, timeout_s: float) -> None:
    sock.settimeout(_left(deadline, timeout_s))
    try:
        sock.sendall(data)
    except TimeoutError:
        raise AuthError(f"took no authentication bytes within {timeout_s}s") from None


def _recv_exact(sock: socket.socket, n: int, deadline: float, timeout_s: float,
                what: str = "authentication") -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        sock.settimeout(_left(deadline, timeout_s))
        try:
            r = sock.recv_into(view[got:], n - got)
        except TimeoutError:
            raise AuthError(f"sent no {what} within {timeout_s}s ({got} of {n} "
                            "bytes)") from None
        if r == 0:
            raise AuthError(f"closed the connection during authentication ({what}: {got} of "
                            f"{n} bytes){_why_closed(what, got)}")
        got += r
    return bytes(buf)


def _why_closed(what: str, got: int) -> str:
    if what == "greeting" and got == 0:
        return ": at its connection limit (peer_max_connections)?"
    return ""


def _left(deadline: float, timeout_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AuthError(f"no authentication within {timeout_s}s")
    return left
