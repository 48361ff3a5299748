"""NBD over TLS (x509): the server context and the TLS socket a connection switches to.

``server_context(tls_dir)`` loads the files qemu's ``tls-creds-x509`` uses from one
directory: ``ca-cert.pem`` (the CA client certificates must be signed by),
``server-cert.pem`` and ``server-key.pem``, and ``ca-crl.pem`` if present (revoked
client certificates).  Client certificates are required (``CERT_REQUIRED``, as
qemu's ``verify-peer=on`` default).  A missing, unreadable or broken file raises
``InvalidRequest`` with one line naming it.

After STARTTLS the connection wraps its socket with ``start(ctx, sock)``; the
resulting gevent SSL socket reads with ``recv_into`` like the plaintext socket, and
``shutdown`` wakes a greenlet blocked in it (gevent cancels the wait) as before.  SSL
sockets cannot ``sendmsg``, so the connection's ``BufferWriter`` writes through a
``TlsSender`` instead (coalesced ``sendall``); the plaintext path is untouched.
"""
from __future__ import annotations

import os
import ssl
from pathlib import Path

import gevent.ssl

from common.errors import InvalidRequest

CA_CERT = "ca-cert.pem"
CA_CRL = "ca-crl.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
REQUIRED_FILES = (CA_CERT, SERVER_CERT, SERVER_KEY)

COALESCE_BYTES = 64 << 10     # buffers smaller than this are joined into one TLS write


def server_context(tls_dir) -> gevent.ssl.SSLContext:
    """The TLS server context for the x509 files in ``tls_dir`` (see module docstring)."""
    d = Path(tls_dir)
    for name in REQUIRED_FILES:
        path = d / name
        if not path.is_file() or not os.access(path, os.R_OK):
            raise InvalidRequest(f"NBD TLS: {path} is missing or unreadable "
                                 f"(the directory needs {', '.join(REQUIRED_FILES)})")
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    loading = d / SERVER_CERT
    try:
        ctx.load_cert_chain(d / SERVER_CERT, d / SERVER_KEY)
        loading = d / CA_CERT
        ctx.load_verify_locations(cafile=d / CA_CERT)
        if (d / CA_CRL).exists():
            loading = d / CA_CRL
            ctx.load_verify_locations(cafile=d / CA_CRL)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (ssl.SSLError, OSError) as exc:
        raise InvalidRequest(f"NBD TLS: cannot load {loading}: {exc}") from None
    return ctx


def start(ctx: ssl.SSLContext, sock) -> gevent.ssl.SSLSocket:
    """Wrap ``sock`` (nothing may have been read past STARTTLS) and run the server side
    of the TLS handshake.  Raises ``ssl.SSLError`` (an ``OSError``) when it fails,
    e.g. on a client certificate from another CA or none at all."""
    tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls


def peer_common_name(tls: ssl.SSLSocket) -> str:
    """The CN of the verified client certificate ("?" if it has none)."""
    for rdn in (tls.getpeercert() or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "?"


class TlsSender:
    """What `common.sockio.BufferWriter` needs of a socket, over TLS.

    ``sendmsg(buffers)`` sends everything (blocking the calling greenlet): buffers
    under ``COALESCE_BYTES`` are joined so a reply header and its small payload make
    one TLS record rather than two; large payloads are written as they are.  It has
    no ``_sock``, so the writer never bypasses TLS with a raw ``sendmsg``."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self._tls = tls

    def sendmsg(self, buffers) -> int:
        total = 0
        small = bytearray()
        for buf in buffers:
            n = memoryview(buf).nbytes
            total += n
            if n < COALESCE_BYTES:
                small += buf
                continue
            if small:
                self._tls.sendall(small)
                small = bytearray()
            self._tls.sendall(buf)
        if small:
            self._tls.sendall(small)
        return total

    def close(self) -> None:
        self._tls.close()
