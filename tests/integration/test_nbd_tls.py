"""NBD over TLS and the handshake limits, against a real 2-node sheep cluster.

Both sheep run with ``--nbd-tls-dir`` (x509 files made by ``tls_certs`` once for
the module), ``--nbd-handshake-timeout 2`` and ``--nbd-max-options 16``.  Real
clients (qemu-io, qemu-img, nbdinfo, nbdcopy, python3-libnbd) write and read over
TLS through both nodes; plaintext clients, a client certificate of another CA and
a client without a certificate are refused while the sheep keeps serving; hostile
raw-socket clients (trickling bytes, endless options) are cut off at the deadline
and at the option cap while a TLS client is served meanwhile.  STARTTLS against a
server without TLS, and revoking a TLS connection, are checked against an
in-process ``NbdServer``.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import threading
import time

import gevent
import gevent.subprocess as gsp
import pytest
import requests

from nbd_frontend import protocol as p
from nbd_frontend.server import NbdServer
from tests.integration.fixtures_cluster import poll
from tests.integration.fixtures_nbd import (MiB, SYSTEM_PYTHON, create_vdi, libnbd,
                                            module_cluster, run, wait_unlocked)
from tests.integration.memory_exports import MemoryProvider
from tests.integration.tls_certs import CLIENT_CN, make_certs

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-io", "qemu-img", "nbdinfo", "nbdcopy", "openssl"))
    or not os.path.exists(SYSTEM_PYTHON),
    reason="NBD client tools (qemu-utils, libnbd-bin, python3-libnbd) or openssl not installed")

DEADLINE_S = 2.0
MAX_OPTIONS = 16


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("nbdtls"))


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, certs):
    yield from module_cluster(request, tmp_path_factory, nodes=2, copies=2, sheep_args=[
        "--nbd-tls-dir", str(certs.server), "--nbd-handshake-timeout", str(DEADLINE_S),
        "--nbd-max-options", str(MAX_OPTIONS)])


# -- clients ---------------------------------------------------------------------------------
def tls_object(certdir) -> list[str]:
    return ["--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={certdir}"]


def image_opts(port: int, name: str, tls: bool = True) -> str:
    return (f"driver=nbd,host=127.0.0.1,port={port},export={name}"
            + (",tls-creds=tls0" if tls else ""))


def qemu_io(node, name, certdir, *cmds, check=True, readonly=False):
    args = [a for c in cmds for a in ("-c", c)]
    res = run("qemu-io", *(["-r"] if readonly else []), *tls_object(certdir),
              "--image-opts", image_opts(node.nbd_port, name), *args, check=check)
    if check:
        wait_unlocked(node, name)       # its lock goes a moment after the client exits
    return res


def nbds(node, name, certdir) -> str:
    return f"nbds://127.0.0.1:{node.nbd_port}/{name}?tls-certificates={certdir}"


def log_of(node) -> str:
    return node.log_path.read_text(errors="replace")


def alive(node) -> bool:
    return requests.get(f"http://127.0.0.1:{node.admin_port}/health", timeout=5).ok


# -- TLS clients -----------------------------------------------------------------------------
def test_tls_clients_write_through_one_node_and_read_back_through_the_other(cluster, certs,
                                                                           tmp_path):
    a, b = cluster.sheep
    create_vdi(a, "tls-disk", 8 * MiB)
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(2 * MiB))

    # nbdcopy writes random bytes over TLS through node 0
    run("nbdcopy", src, nbds(a, "tls-disk", certs.client))
    wait_unlocked(a, "tls-disk")
    # qemu-io writes a pattern over TLS through node 0, then reads both back through node 1
    qemu_io(a, "tls-disk", certs.client, "write -P 0x5a 3145729 1048576")
    qemu_io(b, "tls-disk", certs.client, "read -P 0x5a 3145729 1048576", readonly=True)

    # qemu-img over TLS through node 1: the size, and the first 2 MiB as written by nbdcopy
    info = run("qemu-img", "info", *tls_object(certs.client), "--image-opts",
               image_opts(b.nbd_port, "tls-disk")).stdout.decode()
    assert "virtual size: 8 MiB (8388608 bytes)" in info
    out = tmp_path / "out.raw"
    run("qemu-img", "convert", *tls_object(certs.client), "--image-opts",
        image_opts(b.nbd_port, "tls-disk"), "-O", "raw", out)
    data = out.read_bytes()
    assert data[:2 * MiB] == src.read_bytes()
    assert data[3145729:3145729 + MiB] == b"\x5a" * MiB

    # nbdinfo and nbdcopy (libnbd, nbds:// URIs) through node 1
    shown = run("nbdinfo", nbds(b, "tls-disk", certs.client)).stdout.decode()
    assert "with TLS" in shown and "export-size: 8388608" in shown
    copy = tmp_path / "copy.raw"
    run("nbdcopy", nbds(b, "tls-disk", certs.client), copy)
    assert copy.read_bytes() == data

    # python3-libnbd with TLS required
    got = libnbd("""
        import json, sys, nbd
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(sys.argv[2])
        h.connect_uri(sys.argv[1])
        print(json.dumps({"tls": h.get_tls_negotiated(), "head": h.pread(16, 0).hex()}))
        h.shutdown()
    """, f"nbd://127.0.0.1:{b.nbd_port}/tls-disk", str(certs.client))
    assert got == {"tls": True, "head": src.read_bytes()[:16].hex()}

    # the sheep logged the client certificate's CN with the attach
    assert f"cn={CLIENT_CN} attached export=tls-disk" in log_of(b)


def test_refused_clients_leave_the_sheep_serving(cluster, certs):
    a, _ = cluster.sheep
    create_vdi(a, "tls-refuse", 4 * MiB)
    failures_before = log_of(a).count("TLS handshake failed")

    plain = run("qemu-io", "-f", "raw", "-c", "read 0 4096",
                f"nbd://127.0.0.1:{a.nbd_port}/tls-refuse", check=False)
    assert plain.returncode != 0
    assert b"TLS negotiation required before option 7 (go)" in plain.stderr
    assert run("nbdinfo", f"nbd://127.0.0.1:{a.nbd_port}/tls-refuse",
               check=False).returncode != 0
    poll(lambda: log_of(a).count("left before STARTTLS") >= 2, 10, "the plaintext clients logged")

    foreign = qemu_io(a, "tls-refuse", certs.foreign, "read 0 4096", check=False)
    nocert = qemu_io(a, "tls-refuse", certs.nocert, "read 0 4096", check=False)
    foreign_libnbd = run("nbdinfo", nbds(a, "tls-refuse", certs.foreign), check=False)
    assert foreign.returncode != 0 and nocert.returncode != 0
    assert foreign_libnbd.returncode != 0
    assert b"read 4096/4096" not in foreign.stdout + nocert.stdout

    # the server refused both certificates itself, one line each
    log = poll(lambda: (text := log_of(a)).count("TLS handshake failed") >= failures_before + 3
               and text, 10, "the refused TLS handshakes in the log")
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log
    assert "unable to get local issuer certificate" in log or "CERTIFICATE_VERIFY_FAILED" in log
    assert "cn=intruder" not in log

    assert alive(a)
    qemu_io(a, "tls-refuse", certs.client, "write -P 0x77 0 4096", "read -P 0x77 0 4096")


# -- hostile handshakes ----------------------------------------------------------------------
def _connect(node) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.nbd_port), timeout=10)
    greeting = b""
    while len(greeting) < 18:
        chunk = sock.recv(18 - len(greeting))
        assert chunk, "closed before the greeting"
        greeting += chunk
    assert greeting[:16] == b"NBDMAGICIHAVEOPT"
    return sock


def _trickle(node, result: dict) -> None:
    """Send a valid handshake one byte a second; record when the sheep closes."""
    stream = struct.pack("!I", 3) + b"IHAVEOPT" + struct.pack("!II", p.OPT_LIST, 0)
    began = time.monotonic()
    with _connect(node) as sock:
        sock.settimeout(1.0)        # the pace: one byte per second while nothing comes back
        sent = 0
        while time.monotonic() - began < 30:
            try:
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                if sent < len(stream):
                    sock.sendall(stream[sent:sent + 1])
                    sent += 1
            except ConnectionResetError:
                break
        result["closed_after_s"] = time.monotonic() - began
        result["bytes_sent"] = sent


def _flood(node, result: dict) -> None:
    """Send options one after the other (each answered TLS_REQD) until the sheep closes."""
    replies = 0
    with _connect(node) as sock:
        sock.sendall(struct.pack("!I", 3))
        try:
            for _ in range(10 * MAX_OPTIONS):
                sock.sendall(b"IHAVEOPT" + struct.pack("!II", p.OPT_LIST, 0))
                header = sock.recv(20, socket.MSG_WAITALL)
                if len(header) < 20:
                    break
                _, _, rtype, length = struct.unpack("!QIII", header)
                assert rtype == p.REP_ERR_TLS_REQD
                sock.recv(length, socket.MSG_WAITALL)
                replies += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
    result["replies"] = replies


def test_hostile_handshakes_are_cut_off_while_a_tls_client_is_served(cluster, certs):
    a, _ = cluster.sheep
    create_vdi(a, "tls-hostile", 4 * MiB)
    trickled: dict = {}
    flooded: dict = {}
    threads = [threading.Thread(target=_trickle, args=(a, trickled), daemon=True),
               threading.Thread(target=_flood, args=(a, flooded), daemon=True)]
    for t in threads:
        t.start()
    try:
        # a TLS client is served meanwhile
        qemu_io(a, "tls-hostile", certs.client, "write -P 0x42 0 65536", "read -P 0x42 0 65536")
    finally:
        for t in threads:
            t.join(timeout=40)
    assert not any(t.is_alive() for t in threads)

    # the trickler is cut at the deadline (with margin for a slow machine), long before
    # its 16 bytes at one a second are through
    assert DEADLINE_S - 0.2 <= trickled["closed_after_s"] <= DEADLINE_S + 3.0, trickled
    assert trickled["bytes_sent"] < 16
    # the flooder got exactly the options allowed, then the connection closed
    assert flooded["replies"] == MAX_OPTIONS
    log = poll(lambda: (text := log_of(a)).count("options in the handshake") and text, 10,
               "the option cap in the log")
    assert f"handshake not finished within {DEADLINE_S:g} s" in log
    assert f"more than {MAX_OPTIONS} options in the handshake" in log
    assert alive(a)


# -- TLS not configured ----------------------------------------------------------------------
def test_starttls_against_a_server_without_tls_is_refused_by_policy(certs):
    provider = MemoryProvider()
    provider.add("disk", MiB)
    server = NbdServer(provider, "127.0.0.1", 0)
    server.start()
    try:
        port = server.address[1]
        res = gsp.run(["qemu-io", "-r", *tls_object(certs.client), "--image-opts",
                       image_opts(port, "disk"), "-c", "read 0 4096"],
                      capture_output=True, text=True, timeout=30)
        assert res.returncode != 0
        assert "Denied by server for option 5 (starttls)" in res.stderr
        assert "TLS not configured" in res.stderr
        ok = gsp.run(["qemu-io", "-r", "--image-opts", image_opts(port, "disk", tls=False),
                      "-c", "read -P 0 0 4096"], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.stop()


LIBNBD_IDLE = """
import sys, nbd
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_certificates(sys.argv[2])
h.connect_uri(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
try:
    h.pread(512, 0)
    print("read", flush=True)
except nbd.Error as e:
    print("error", e, flush=True)
"""


def test_revoking_an_idle_tls_connection_ends_it_cleanly(certs, caplog):
    """The reader waits inside TLS when the connection is dropped: it sees end of file
    (no "unexpected error"), the export closes and the client's next request fails."""
    caplog.set_level(logging.INFO, logger="nbd_frontend")
    provider = MemoryProvider()
    provider.add("disk", MiB)
    server = NbdServer(provider, "127.0.0.1", 0, tls_dir=certs.server)
    server.start()
    proc = None
    try:
        proc = gsp.Popen([SYSTEM_PYTHON, "-c", LIBNBD_IDLE,
                          f"nbd://127.0.0.1:{server.address[1]}/disk", str(certs.client)],
                         stdin=gsp.PIPE, stdout=gsp.PIPE, stderr=gsp.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        with gevent.Timeout(10):
            while server.clients("disk") != 1:
                gevent.sleep(0.01)
        assert server.drop_export_clients("disk") == 1
        with gevent.Timeout(10):
            while not provider.closed:
                gevent.sleep(0.01)
        out, _ = proc.communicate("go\n", timeout=30)
        assert out.startswith("error"), out
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    assert "unexpected error" not in caplog.text
    assert f"cn={CLIENT_CN} export=disk disconnected" in caplog.text
