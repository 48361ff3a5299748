"""Real NBD clients (qemu-io, qemu-img, nbdinfo, libnbd, raw sockets) against NbdServer.

The server runs in this process under gevent; every client runs as a subprocess
through ``gevent.subprocess`` (a blocking subprocess call would freeze the hub
and with it the server).  libnbd is only importable from Debian's
/usr/bin/python3, so those clients are small scripts run with that interpreter.
"""
import json
import shutil
import struct
import textwrap

import gevent
import gevent.socket as gsocket
import gevent.subprocess as gsp
import pytest

from common import errors
from nbd_frontend import protocol as p
from nbd_frontend.server import NbdServer
from tests.integration.memory_exports import BLOCK, MemoryProvider

MiB = 1 << 20
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-io", "qemu-img", "nbdinfo")),
    reason="NBD client tools not installed")


@pytest.fixture
def provider():
    prov = MemoryProvider()
    prov.add("disk", 64 * MiB)
    prov.add("ro", 1 * MiB, readonly=True).data[:4] = b"RO!!"
    prov.add("small", 1 * MiB)
    return prov


@pytest.fixture
def server(provider):
    srv = NbdServer(provider, "127.0.0.1", 0, pool_size=64)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def uri(server, name):
    host, port = server.address
    return f"nbd://{host}:{port}/{name}"


def run(*cmd, timeout=30, check=True, stdin=None):
    res = gsp.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def libnbd(script: str, *args, timeout=30):
    """Run a libnbd script with Debian's python; it prints one JSON document."""
    res = run(SYSTEM_PYTHON, "-c", textwrap.dedent(script), *args, timeout=timeout)
    return json.loads(res.stdout)


def wait_for(cond, timeout_s=5.0):
    with gevent.Timeout(timeout_s):
        while not cond():
            gevent.sleep(0.01)


# -- raw socket client ------------------------------------------------------------------
def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def opt(option, data=b""):
    return b"IHAVEOPT" + struct.pack("!II", option, len(data)) + data


def go_data(name: str) -> bytes:
    raw = name.encode()
    return struct.pack("!I", len(raw)) + raw + b"\0\0"


def option_replies(sock):
    """Replies to one option up to the final one: [(rtype, data)]."""
    out = []
    while True:
        magic, _opt, rtype, length = struct.unpack("!QIII", recv_exact(sock, 20))
        assert magic == p.OPTION_REPLY_MAGIC
        out.append((rtype, recv_exact(sock, length)))
        if rtype == p.REP_ACK or rtype & (1 << 31):
            return out


def raw_connect(server):
    sock = gsocket.create_connection(server.address)
    sock.settimeout(10)
    assert recv_exact(sock, 18) == b"NBDMAGICIHAVEOPT\x00\x03"
    sock.sendall(struct.pack("!I", 3))
    return sock


def raw_go(server, name="disk"):
    sock = raw_connect(server)
    sock.sendall(opt(p.OPT_GO, go_data(name)))
    replies = option_replies(sock)
    assert replies[-1][0] == p.REP_ACK, replies
    return sock


def raw_request(sock, typ, handle, offset, length, payload=b"", flags=0):
    sock.sendall(p.Request(flags, typ, handle, offset, length).pack() + payload)


def raw_simple_reply(sock, length=0):
    magic, error, handle = struct.unpack("!IIQ", recv_exact(sock, 16))
    assert magic == p.SIMPLE_REPLY_MAGIC
    data = recv_exact(sock, length) if length and not error else b""
    return error, handle, data


def assert_closed(sock):
    with gevent.Timeout(5):
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


# -- qemu -------------------------------------------------------------------------------
def test_qemu_io_patterns_at_odd_offsets(server, provider):
    u = uri(server, "disk")
    # write two patterns at unaligned offsets, one straddling an object boundary
    run("qemu-io", "-f", "raw", u, "-c", "write -P 0xab 1000 3M", "-c", "write -P 0xcd 5000001 12345",
        "-c", "flush")
    vol = provider.volumes["disk"]
    assert vol.data[1000:1000 + 3 * MiB] == b"\xab" * 3 * MiB and vol.data[999] == 0
    assert vol.data[5000001:5000001 + 12345] == b"\xcd" * 12345 and vol.flushes >= 1
    # read them back in a new session, and the untouched gaps as zeros
    run("qemu-io", "-f", "raw", u, "-c", "read -P 0xab 1000 3M", "-c", "read -P 0xcd 5000001 12345",
        "-c", "read -P 0 0 1000", "-c", "read -P 0 5012346 3M")
    # a pattern mismatch is detected (qemu-io exits 1): the server is not just saying yes
    assert run("qemu-io", "-f", "raw", u, "-c", "read -P 0xab 0 4096", check=False).returncode == 1
    # zero and discard go through as write_zeroes / trim
    run("qemu-io", "-f", "raw", u, "-c", "write -z 1M 512k", "-c", "discard 2M 1M",
        "-c", "read -P 0 1M 512k", "-c", "read -P 0 2M 1M")
    kinds = {c[0] for c in vol.calls}
    assert {"write_zeroes", "trim"} <= kinds
    assert provider.closed.count(("disk", provider.closed[0][1])) >= 1 and vol.holder is None


def test_qemu_img_convert_and_compare(server, tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(bytes(range(256)) * 4096 * 3 + bytes(MiB))   # 3 MiB data, 1 MiB zeros
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri(server, "small") + "x",
        check=False)   # unknown export: refused, nothing written
    res = run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri(server, "disk"))
    assert res.returncode == 0
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri(server, "disk"))


def test_locked_export_is_refused_with_the_holders_name(server, provider):
    provider.volumes["disk"].holder = "10.9.8.7:4242"
    res = run("qemu-io", "-f", "raw", uri(server, "disk"), "-c", "read 0 512", check=False)
    assert res.returncode != 0
    assert "Denied by server" in res.stderr and "locked by 10.9.8.7:4242" in res.stderr
    # the refusal keeps the handshake going: another option on the same connection works
    sock = raw_connect(server)
    sock.sendall(opt(p.OPT_GO, go_data("disk")))
    [(rtype, msg)] = option_replies(sock)
    assert rtype == p.REP_ERR_POLICY and b"10.9.8.7:4242" in msg
    sock.sendall(opt(p.OPT_GO, go_data("ro")))
    assert option_replies(sock)[-1][0] == p.REP_ACK
    sock.close()


def test_unknown_export_is_refused_with_a_message(server):
    res = run("qemu-io", "-f", "raw", uri(server, "nope"), "-c", "read 0 1", check=False)
    assert res.returncode != 0
    assert "Requested export not available" in res.stderr and "nope" in res.stderr


# -- nbdinfo ----------------------------------------------------------------------------
def test_nbdinfo_json_shows_size_block_sizes_and_flags(server):
    info = json.loads(run("nbdinfo", "--json", uri(server, "disk")).stdout)
    [exp] = info["exports"]
    assert info["protocol"] == "newstyle-fixed" and info["structured"] is True
    assert exp["export-size"] == 64 * MiB and exp["contexts"] == ["base:allocation"]
    assert (exp["block_size_minimum"], exp["block_size_preferred"], exp["block_size_maximum"]) == (
        1, 4096, 32 * MiB)
    assert exp["can_flush"] and exp["can_fua"] and exp["can_trim"] and exp["can_zero"]
    assert exp["can_fast_zero"] and not exp["can_multi_conn"] and not exp["is_read_only"]
    ro = json.loads(run("nbdinfo", "--json", uri(server, "ro")).stdout)["exports"][0]
    assert ro["is_read_only"] and not ro["can_trim"] and not ro["can_zero"]


def test_nbdinfo_list_and_map(server, provider):
    listing = json.loads(run("nbdinfo", "--list", "--json", uri(server, "")).stdout)
    assert sorted(e["export-name"] for e in listing["exports"]) == ["disk", "ro", "small"]
    vol = provider.volumes["disk"]
    vol.data[BLOCK:3 * BLOCK] = b"x" * 2 * BLOCK
    vol.allocated.update({1, 2})
    extents = json.loads(run("nbdinfo", "--map", "--json", uri(server, "disk")).stdout)
    assert [(e["offset"], e["length"], e["type"]) for e in extents] == [
        (0, BLOCK, 3), (BLOCK, 2 * BLOCK, 0), (3 * BLOCK, 64 * MiB - 3 * BLOCK, 3)]


# -- libnbd -----------------------------------------------------------------------------
LIBNBD_IO = """
import json, sys, nbd
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
out = {"structured": h.get_structured_replies_negotiated(),
       "meta": h.can_meta_context("base:allocation")}
h.pwrite(b"Q" * 70000, 1000)
h.pwrite(b"Z" * 4096, 8 * 65536, nbd.CMD_FLAG_FUA)
out["read"] = h.pread(999, 70002).hex()
ext = []
def cb(metacontext, offset, entries, err):
    ext.extend(entries)
h.block_status(16 * 65536, 0, cb)
out["extents"] = ext
# 64 requests in flight at once, completed out of order
done = []
cookies = []
for i in range(64):
    buf = nbd.Buffer(4096)
    cookies.append(h.aio_pread(buf, i * 4096))
for i in range(64, 80):
    cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([i]) * 512), 2 * 1048576 + i * 512))
out["in_flight_peak"] = h.aio_in_flight()
while h.aio_in_flight() > 0:
    h.poll(-1)
    for c in cookies:
        if c not in done and h.aio_command_completed(c):
            done.append(c)
out["completed"] = len(done)
h.flush()
h.shutdown()
print(json.dumps(out))
"""


def test_libnbd_structured_reads_block_status_and_64_in_flight(server, provider):
    vol = provider.volumes["disk"]
    vol.delay_s = 0.05          # keep requests in the server long enough to pile up
    out = libnbd(LIBNBD_IO, uri(server, "disk"))
    assert out["structured"] and out["meta"]
    assert bytes.fromhex(out["read"]) == b"Q" * 998 + b"\0"
    # blocks 0-1 (pwrite at 1000+70000) and 8 are data; the rest of the first 16 blocks is a hole
    assert out["extents"] == [2 * 65536, 0, 6 * 65536, 3, 65536, 0, 7 * 65536, 3]
    assert out["completed"] == 80 and out["in_flight_peak"] >= 64
    assert vol.max_in_flight == 64                         # the per-connection pool was full
    assert vol.data[2 * MiB + 79 * 512:2 * MiB + 80 * 512] == bytes([79]) * 512
    fua = [c for c in vol.calls if c[0] == "write" and c[3]]
    assert len(fua) == 1 and vol.flushes >= 2                # FUA write flushed, plus h.flush()


LIBNBD_ERRORS = """
import json, sys, nbd
def errno_of(fn, *args):
    try:
        fn(*args)
        return 0
    except nbd.Error as e:
        return e.errno       # a name like "EINVAL" in this libnbd
h = nbd.NBD()
h.set_strict_mode(0)     # let the server, not libnbd, judge the requests
h.connect_uri(sys.argv[1])
size = h.get_size()
out = {"read_past_end": errno_of(h.pread, 4096, size - 1),
       "write_past_end": errno_of(h.pwrite, b"x" * 4096, size - 1),
       "injected": errno_of(h.pread, 512, 0),
       "after": errno_of(h.pread, 512, 0)}
r = nbd.NBD(); r.set_strict_mode(0)
r.connect_uri(sys.argv[2])
out["ro_write"] = errno_of(r.pwrite, b"x", 0)
out["ro_read"] = r.pread(4, 0).decode()
r.shutdown(); h.shutdown()
print(json.dumps(out))
"""


@pytest.mark.parametrize("injected,expected", [(errors.Unavailable("replicas gone"), "EIO"),
                                               (errors.Shutdown("node stopping"), "ESHUTDOWN"),
                                               (RuntimeError("bug"), "EIO")])
def test_libnbd_errors(server, provider, injected, expected):
    # the in-memory export raises this on its next call (the first in-range read)
    provider.fail_next["disk"] = injected
    out = libnbd(LIBNBD_ERRORS, uri(server, "disk"), uri(server, "ro"))
    assert out["read_past_end"] == "EINVAL"
    assert out["write_past_end"] == "ENOSPC"
    assert out["injected"] == expected
    assert out["after"] == 0                         # errors do not end the connection
    assert out["ro_write"] == "EPERM" and out["ro_read"] == "RO!!"


LIBNBD_DROPPED = """
import json, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"A" * 512, 0)
print("attached", flush=True)
sys.stdin.readline()
try:
    h.pwrite(b"B" * 512, 0)
    print(json.dumps({"error": None}))
except nbd.Error as e:
    print(json.dumps({"error": str(e)}))
"""


def test_drop_export_clients_fails_the_next_request(server, provider):
    vol = provider.volumes["disk"]
    proc = gsp.Popen([SYSTEM_PYTHON, "-c", textwrap.dedent(LIBNBD_DROPPED), uri(server, "disk")],
                     stdin=gsp.PIPE, stdout=gsp.PIPE, text=True)
    try:
        with gevent.Timeout(20):
            assert proc.stdout.readline().strip() == "attached"
            assert server.clients("disk") == 1
            # an operator breaks the lock: the client is cut at once
            assert server.drop_export_clients("disk") == 1
            wait_for(lambda: vol.holder is None)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            result = json.loads(proc.stdout.readline())
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result["error"] is not None
    assert vol.data[:512] == b"A" * 512                 # the late write never ran
    assert ("disk", provider.closed[0][1]) in provider.closed and server.clients("disk") == 0
    assert server.drop_export_clients("disk") == 0


def test_requests_queued_behind_a_drop_never_run(server, provider):
    vol = provider.volumes["disk"]
    vol.delay_s = 0.2
    sock = raw_go(server)
    # one slow read in flight, then writes queued right behind it
    raw_request(sock, p.CMD_READ, 1, 0, 512)
    gevent.sleep(0.05)
    for h in range(2, 6):
        raw_request(sock, p.CMD_WRITE, h, 4096 * h, 512, b"W" * 512)
    server.drop_export_clients("disk")
    wait_for(lambda: provider.closed)
    assert b"W" not in vol.data[:8 * 4096]
    assert_closed(sock)


# -- raw sockets: malformed input ends one connection only --------------------------------
@pytest.mark.parametrize("garbage", [
    b"\xde\xad\xbe\xef" + bytes(24),                                  # bad request magic
    p.Request(0, p.CMD_WRITE, 1, 0, p.MAX_PAYLOAD + 1).pack(),         # payload too large to read
])
def test_malformed_request_closes_only_that_connection(server, provider, garbage):
    good = raw_go(server, "ro")
    bad = raw_go(server, "disk")
    bad.sendall(garbage)
    assert_closed(bad)
    wait_for(lambda: ("disk", provider.closed[0][1] if provider.closed else None) in provider.closed)
    # the other client goes on
    raw_request(good, p.CMD_READ, 77, 0, 4)
    assert raw_simple_reply(good, 4) == (0, 77, b"RO!!")
    # and so does the server: a new client attaches the released export
    again = raw_go(server, "disk")
    raw_request(again, p.CMD_FLUSH, 5, 0, 0)
    assert raw_simple_reply(again) == (0, 5, b"")
    for s in (good, again):
        s.close()


def test_handshake_garbage_and_bad_requests(server, provider):
    sock = raw_connect(server)
    sock.sendall(b"GARBAGE!" * 4)
    assert_closed(sock)
    # parseable but invalid requests get errors and the connection stays up
    sock = raw_go(server, "small")
    raw_request(sock, 42, 1, 0, 0)                                       # unknown command
    raw_request(sock, p.CMD_READ, 2, 0, 64 * MiB)                          # larger than max payload
    raw_request(sock, p.CMD_READ, 3, 0, 16, flags=0x40)                    # unknown flag
    raw_request(sock, p.CMD_BLOCK_STATUS, 4, 0, 512)                      # no meta context
    raw_request(sock, p.CMD_WRITE, 5, MiB - 1, 2, b"ab")                  # past the end
    got = {raw_simple_reply(sock)[:2] for _ in range(5)}
    assert got == {(p.EINVAL, 1), (p.EINVAL, 2), (p.EINVAL, 3), (p.EINVAL, 4), (p.ENOSPC, 5)}
    # a disconnect request ends the session cleanly
    raw_request(sock, p.CMD_DISC, 6, 0, 0)
    assert_closed(sock)
    wait_for(lambda: any(n == "small" for n, _ in provider.closed))


def test_client_vanishing_mid_request_closes_the_export(server, provider):
    sock = raw_go(server)
    raw_request(sock, p.CMD_WRITE, 1, 0, 4096, b"half" * 256)              # 1 KiB of 4 KiB
    sock.close()
    wait_for(lambda: provider.closed)
    assert provider.volumes["disk"].holder is None
    assert provider.volumes["disk"].data[:4] == bytes(4)


def test_abort_list_and_stop(provider):
    srv = NbdServer(provider, "127.0.0.1", 0)
    srv.start()
    try:
        sock = raw_connect(srv)
        sock.sendall(opt(p.OPT_LIST))
        names = [d[4:].decode() for t, d in option_replies(sock) if t == p.REP_SERVER]
        assert names == ["disk", "ro", "small"]
        sock.sendall(opt(p.OPT_ABORT))
        assert option_replies(sock) == [(p.REP_ACK, b"")]
        assert_closed(sock)
        attached = raw_go(srv)
    finally:
        srv.stop()
    # stop() cut the attached client and released its export
    assert_closed(attached)
    assert provider.closed and provider.volumes["disk"].holder is None
    with pytest.raises(OSError):
        gsocket.create_connection(srv.address, timeout=2)
