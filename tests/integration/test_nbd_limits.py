"""Hostile NBD clients against a real sheep: its memory stays bounded, others are served.

Each test drives a raw-socket client that abuses one limit (replies never read, a
flood of large writes, too many connections, a LIST storm) while a normal client
(qemu-io) reads and writes its own VDI correctly.  Memory is the sheep's peak RSS
(``VmHWM``, reset through ``/proc/PID/clear_refs`` before the attack), compared with
the per-connection cap (``--nbd-queue-bytes``, 64 MiB by default); ZooKeeper load is
the server's own ``zk_packets_received`` (``mntr``).
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

import gevent.socket

from nbd_frontend import protocol as p
from nbd_frontend.server import NbdServer
from sheepdog_local.zookeeper import four_letter_word
from tests.integration.fixtures_cluster import poll
from tests.integration.fixtures_nbd import MiB, attached, create_vdi, module_cluster, run, uri
from tests.integration.memory_exports import MemoryProvider
from tests.integration.test_nbd_protocol import go_data, opt, option_replies, recv_exact, wait_for

MAX_CONNECTIONS = 8
QUEUE_BYTES = 64 * MiB          # the default cap
BIG = p.MAX_PAYLOAD             # 32 MiB, the largest request
# On top of the cap (the accounted buffers: READ data being read and queued, WRITE
# payloads): the data of the at most two 32 MiB requests in flight also passes through
# object-sized (4 MiB) buffers (a read's pieces from the store, a write's pieces to the
# replica), which glibc keeps in the heap for reuse once freed (sheep.daemon.malloc),
# so the peak may count them once more: at most the cap again.  Measured: 56 to 113 MiB
# of growth in all; without the cap these tests reach 350 MiB to 1.1 GiB.
SLACK = QUEUE_BYTES


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    yield from module_cluster(request, tmp_path_factory, nodes=1, copies=1,
                              sheep_args=["--nbd-max-connections", str(MAX_CONNECTIONS)])


# -- helpers ----------------------------------------------------------------------------------
def status_bytes(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class Peak:
    """The sheep's RSS growth from now on: ``peak`` (VmHWM) minus the RSS at start."""

    def __init__(self, pid: int):
        self.pid = pid
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")                            # reset VmHWM to the current RSS
        self.start = status_bytes(pid, "VmRSS")

    def grown(self) -> int:
        return status_bytes(self.pid, "VmRSS") - self.start

    def peak(self) -> int:
        return status_bytes(self.pid, "VmHWM") - self.start


def nbd_connect(node, rcvbuf: int | None = None, port: int | None = None,
                sockets=socket) -> socket.socket:
    """A raw client past the greeting (``sockets``: gevent's for an in-process server)."""
    sock = sockets.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port or node.nbd_port))
    assert recv_exact(sock, 18) == b"NBDMAGICIHAVEOPT\x00\x03"
    sock.sendall(struct.pack("!I", p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES))
    return sock


def nbd_go(node, name: str, rcvbuf: int | None = None, **where) -> socket.socket:
    """A raw client in transmission on ``name`` (simple replies: none negotiated)."""
    sock = nbd_connect(node, rcvbuf, **where)
    sock.sendall(opt(p.OPT_GO, go_data(name)))
    replies = option_replies(sock)
    assert replies[-1][0] == p.REP_ACK, replies
    return sock


def request(rtype: int, handle: int, offset: int, length: int) -> bytes:
    return p.Request(0, rtype, handle, offset, length).pack()


def simple_reply(sock) -> tuple[int, int]:
    magic, error, handle = p.SIMPLE_REPLY.unpack(recv_exact(sock, p.SIMPLE_REPLY.size))
    assert magic == p.SIMPLE_REPLY_MAGIC
    return error, handle


def recv_into_exact(sock, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError(f"EOF after {got} of {len(view)} bytes")
        got += n


def normal_client(node, name: str, pattern: int) -> None:
    """qemu-io writes and reads back its own VDI while the hostile client runs."""
    run("qemu-io", "-f", "raw", "-c", f"write -P {pattern} 0 4M", "-c", f"read -P {pattern} 0 4M",
        "-c", f"write -P {pattern + 1} 5M 64k", "-c", f"read -P {pattern + 1} 5M 64k",
        uri(node, name))


def zk_packets(cluster) -> int:
    answer = four_letter_word(cluster.zk.host, cluster.zk.port, "mntr")
    for line in answer.splitlines():
        key, _, value = line.partition("\t")
        if key == "zk_packets_received":
            return int(value)
    raise AssertionError(f"no zk_packets_received in mntr: {answer!r}")


# -- tests ------------------------------------------------------------------------------------
def test_a_client_that_never_reads_replies_stops_being_read(cluster):
    node = cluster.sheep[0]
    create_vdi(node, "rflood", 2 * BIG)
    create_vdi(node, "rnormal", 16 * MiB)
    run("qemu-io", "-f", "raw", "-c", f"write -P 0x61 0 {BIG}", "-c", f"write -P 0x62 {BIG} {BIG}",
        uri(node, "rflood"))
    sock = nbd_go(node, "rflood", rcvbuf=64 << 10)
    try:
        peak = Peak(node.pid)
        count = 32                                  # 1 GiB of replies if nothing held back
        sock.sendall(b"".join(request(p.CMD_READ, h, (h % 2) * BIG, BIG) for h in range(count)))
        poll(lambda: peak.grown() > BIG, 30, "the sheep to serve the first reads")
        normal_client(node, "rnormal", 0x30)       # served meanwhile, data correct
        assert peak.peak() < QUEUE_BYTES + SLACK, f"sheep grew {peak.peak() / MiB:.0f} MiB"
        # the client reads now: every reply arrives, in full and correct
        data = bytearray(BIG)
        seen = set()
        for _ in range(count):
            error, handle = simple_reply(sock)
            assert error == 0
            recv_into_exact(sock, memoryview(data))
            assert data[:1] == data[-1:] == (b"a" if handle % 2 == 0 else b"b")
            seen.add(handle)
        assert seen == set(range(count))
        print(f"read flood: sheep peak growth {peak.peak() / MiB:.0f} MiB for {count} x 32 MiB")
        assert peak.peak() < QUEUE_BYTES + SLACK
    finally:
        sock.close()
    poll(lambda: "rflood" not in attached(node), 15, "the hostile client's export to detach")


def test_a_write_flood_holds_at_most_the_cap_of_payloads(cluster):
    node = cluster.sheep[0]
    create_vdi(node, "wflood", 2 * BIG)
    create_vdi(node, "wnormal", 16 * MiB)
    sock = nbd_go(node, "wflood")
    count = 12                                      # 384 MiB of payloads
    payload = b"\xa5" * BIG
    errors: list[BaseException] = []

    def flood():
        try:
            for h in range(count):
                sock.sendall(request(p.CMD_WRITE, h, (h % 2) * BIG, BIG))
                sock.sendall(payload)
        except OSError as exc:
            errors.append(exc)

    try:
        peak = Peak(node.pid)
        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        poll(lambda: peak.grown() > BIG // 2, 30, "the sheep to take the first payloads")
        normal_client(node, "wnormal", 0x40)
        for _ in range(count):                      # replies read only now: all succeed
            assert simple_reply(sock)[0] == 0
        sender.join(30)
        assert not errors and not sender.is_alive()
        print(f"write flood: sheep peak growth {peak.peak() / MiB:.0f} MiB for {count} x 32 MiB")
        assert peak.peak() < QUEUE_BYTES + SLACK, f"sheep grew {peak.peak() / MiB:.0f} MiB"
    finally:
        sock.close()
    run("qemu-io", "-r", "-f", "raw", "-c", f"read -P 0xa5 0 {2 * BIG}", uri(node, "wflood"))


def test_connections_beyond_the_limit_are_closed_at_accept(cluster):
    node = cluster.sheep[0]
    create_vdi(node, "cflood", 16 * MiB)
    peak = Peak(node.pid)
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(nbd_go(node, "cflood"))
        extra = []
        started = time.monotonic()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", node.nbd_port), timeout=10)
            extra.append(s)
        for s in extra:
            try:
                assert s.recv(18) == b""            # closed before the greeting
            except ConnectionResetError:
                pass
            s.close()
        assert time.monotonic() - started < 10
        refused = run("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", uri(node, "cflood"),
                      check=False)
        assert refused.returncode != 0              # over the limit: closed at accept
        print("qemu-io over the limit:", refused.stderr.decode().strip())
        served = held[0]                            # a client within the limit is served
        served.sendall(request(p.CMD_READ, 99, 0, 4096))
        assert simple_reply(served) == (0, 99) and len(recv_exact(served, 4096)) == 4096
        assert peak.peak() < 32 * MiB
    finally:
        for s in held:
            s.close()
    poll(lambda: run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 4k", uri(node, "cflood"),
                     check=False).returncode == 0, 15, "a normal client to connect again")


def list_storm(node, stop: threading.Event, counts: list, errors: list) -> None:
    """LIST over and over (a few dozen per connection, then a new one)."""
    try:
        while not stop.is_set():
            sock = nbd_connect(node)
            try:
                for _ in range(32):
                    sock.sendall(opt(p.OPT_LIST))
                    replies = option_replies(sock)
                    assert replies[-1][0] == p.REP_ACK
                    counts.append(len(replies) - 1)
            finally:
                sock.close()
    except (OSError, AssertionError, EOFError) as exc:
        errors.append(exc)


def test_a_list_storm_does_not_become_a_zookeeper_storm(cluster):
    node = cluster.sheep[0]
    create_vdi(node, "lstorm", 16 * MiB)
    window = 2.0
    before = zk_packets(cluster)
    time.sleep(window)                               # a measured window, nothing to poll
    idle = zk_packets(cluster) - before
    entries = len(list_names(node))                 # catalog znodes (none deleted here)
    stop, counts, errors = threading.Event(), [], []
    storm = [threading.Thread(target=list_storm, args=(node, stop, counts, errors), daemon=True)
             for _ in range(4)]
    peak = Peak(node.pid)
    try:
        for t in storm:
            t.start()
        poll(lambda: len(counts) > 50, 30, "the LIST storm to start")
        first, before = len(counts), zk_packets(cluster)
        time.sleep(window)
        lists, during = len(counts) - first, zk_packets(cluster) - before
        print(f"LIST storm: {lists} LISTs in {window}s; ZooKeeper packets {during} "
              f"(idle: {idle}); {entries} VDIs")
        assert lists > 200
        # at most a listing (a get_children and a get per VDI) per second plus a spare one
        assert during <= idle + (window + 2) * (entries + 2) + 5
        # a VDI created during the storm: GO finds it at once, LIST within a second or so
        normal_client(node, "lstorm", 0x50)
        create_vdi(node, "lstorm-new", 8 * MiB)
        sock = nbd_go(node, "lstorm-new")
        sock.close()
        poll(lambda: b"lstorm-new" in list_names(node), 5, "LIST to show the new VDI")
        assert not errors, errors
        assert peak.peak() < 32 * MiB
    finally:
        stop.set()
        for t in storm:
            t.join(10)


def list_names(node) -> list[bytes]:
    sock = nbd_connect(node)
    try:
        sock.sendall(opt(p.OPT_LIST))
        return [data[4:] for rtype, data in option_replies(sock) if rtype == p.REP_SERVER]
    finally:
        sock.close()


def test_a_connection_whose_replies_do_not_move_is_closed():
    """In process (the deadline is --io-timeout in a sheep): replies unread past
    ``send_timeout_s`` while the connection waits for room close it."""
    provider = MemoryProvider()
    provider.add("disk", 2 * BIG)
    server = NbdServer(provider, "127.0.0.1", 0, send_timeout_s=0.5)
    server.start()
    sock = None
    try:
        sock = nbd_go(None, "disk", rcvbuf=64 << 10, port=server.address[1],
                      sockets=gevent.socket)
        sock.sendall(b"".join(request(p.CMD_READ, h, 0, BIG) for h in range(8)))
        wait_for(lambda: server.clients("disk") == 1, 5)
        wait_for(lambda: server.clients("disk") == 0, 10)   # closed by the deadline
    finally:
        if sock is not None:
            sock.close()
        server.stop()
