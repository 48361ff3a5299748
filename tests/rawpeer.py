"""A hand-driven peer client for tests: raw socket reads that say how the server ended.

Works on stdlib and gevent sockets alike (the unit tests use gevent's, the integration
tests the standard library's).
"""
from __future__ import annotations

from sheep.peer.auth import HELLO


def recv_exact(sock, n: int) -> bytes:
    """Exactly ``n`` bytes; AssertionError if the server closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def read_until_closed(sock) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def greeting_or_nothing(sock) -> bytes:
    """The server's HELLO, or b"" when it closes without one (refused at accept)."""
    data = b""
    try:
        while len(data) < HELLO.size:
            chunk = sock.recv(HELLO.size - len(data))
            if not chunk:
                return b""
            data += chunk
    except ConnectionResetError:
        return b""
    return data
