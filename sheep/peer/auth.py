"""Peer authentication: a mutual HMAC-SHA256 challenge-response, sans-IO.

Before the first frame on a peer connection both ends prove they hold the cluster's
peer key (`common.secrets.ClusterSecret.peer_key`)::

    server -> client  HELLO   magic "PAUT" | version u16 | Ns (32 random bytes)
    client -> server  ANSWER  magic "PAUT" | version u16 | Nc (32) | HMAC(key, "client" | Ns | Nc)
    server -> client  VERDICT status u8 | HMAC(key, "server" | Nc | Ns)   (status 0: accepted)

Each MAC is bound to its direction and to both nonces, so an answer cannot be reflected
back at its sender nor replayed against a new ``Ns``.  The client sends no request until
the server's MAC checked out (no data to an impostor).  Every message has a fixed size,
so the socket shell reads exact lengths and nothing past the handshake.  MACs are
compared in constant time.

A refused answer gets ``status`` `REFUSED` (and no MAC) so the client can name the cause;
an answer that is not a handshake at all gets nothing (the server just closes).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct

MAGIC = b"PAUT"          # not the frame magic "SH": neither is taken for the other
VERSION = 1
NONCE_BYTES = 32
MAC_BYTES = 32
HELLO = struct.Struct(f"!4sH{NONCE_BYTES}s")
ANSWER = struct.Struct(f"!4sH{NONCE_BYTES}s{MAC_BYTES}s")
VERDICT = struct.Struct(f"!B{MAC_BYTES}s")
ACCEPTED, REFUSED = 0, 1
REFUSAL = VERDICT.pack(REFUSED, bytes(MAC_BYTES))
_LABEL = b"sheepdog-py peer auth v1 "


class AuthError(ConnectionError):
    """The handshake failed; the message says why in words an operator can act on
    (it does not name the peer: the caller knows who it is)."""


class NotAHandshake(AuthError):
    """The other end does not speak this handshake (garbage, a raw frame, an old sheep)."""


class BadKey(AuthError):
    """The other end speaks the handshake but does not hold our key."""


def _mac(key: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, _LABEL + role + first + second, hashlib.sha256).digest()


def _check_preamble(magic: bytes, version: int, what: str) -> None:
    if magic != MAGIC:
        raise NotAHandshake(f"sent no peer authentication ({what} starts {magic!r}): "
                            "not a sheep, or one without authentication")
    if version != VERSION:
        raise NotAHandshake(f"speaks peer authentication version {version}, we speak "
                            f"{VERSION}")


class ServerHandshake:
    """The accepting side: `hello`, then `verdict(answer)`."""

    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self._key = key
        self._ns = nonce if nonce is not None else os.urandom(NONCE_BYTES)

    def hello(self) -> bytes:
        return HELLO.pack(MAGIC, VERSION, self._ns)

    def verdict(self, answer) -> bytes:
        """The VERDICT to send for the client's ANSWER (``ANSWER.size`` bytes).  Raises
        `NotAHandshake` (send nothing, close) or `BadKey` (send `REFUSAL`, close)."""
        if len(answer) != ANSWER.size:
            raise NotAHandshake(f"sent {len(answer)} bytes of authentication, not "
                                f"{ANSWER.size}")
        magic, version, nc, mac = ANSWER.unpack(answer)
        _check_preamble(magic, version, "its answer")
        if not hmac.compare_digest(mac, _mac(self._key, b"client", self._ns, nc)):
            raise BadKey("its proof of the cluster secret does not match ours: "
                         "bad cluster secret? (is its --secret-file ours?)")
        return VERDICT.pack(ACCEPTED, _mac(self._key, b"server", nc, self._ns))


class ClientHandshake:
    """The connecting side: `answer(hello)`, then `check(verdict)`."""

    def __init__(self, key: bytes, nonce: bytes | None = None) -> None:
        self._key = key
        self._nc = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self._ns: bytes | None = None

    def answer(self, hello) -> bytes:
        """Our ANSWER to the server's HELLO (``HELLO.size`` bytes)."""
        if len(hello) != HELLO.size:
            raise NotAHandshake(f"sent {len(hello)} bytes of greeting, not {HELLO.size}")
        magic, version, ns = HELLO.unpack(hello)
        _check_preamble(magic, version, "its greeting")
        self._ns = ns
        return ANSWER.pack(MAGIC, VERSION, self._nc, _mac(self._key, b"client", ns, self._nc))

    def check(self, verdict) -> None:
        """Accept the server's VERDICT or raise `BadKey`/`NotAHandshake`."""
        if self._ns is None:
            raise NotAHandshake("verdict before greeting")
        if len(verdict) != VERDICT.size:
            raise NotAHandshake(f"sent {len(verdict)} bytes of verdict, not {VERDICT.size}")
        status, mac = VERDICT.unpack(verdict)
        if status == REFUSED:
            raise BadKey("refused our cluster secret: do both sheep have the same "
                         "--secret-file?")
        if status != ACCEPTED or not hmac.compare_digest(
                mac, _mac(self._key, b"server", self._nc, self._ns)):
            raise BadKey("could not prove it holds our cluster secret: a sheep of another "
                         "cluster (another --secret-file), or not a sheep")
