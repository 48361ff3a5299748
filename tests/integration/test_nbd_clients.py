"""Real NBD clients against a real 3-node sheep cluster (copies 3).

qemu-io, qemu-img, nbdinfo, nbdcopy and libnbd (scripts run with Debian's
/usr/bin/python3) attach to VDIs through different sheep; every node holds a
replica of every object, so "written through one node, read through another"
exercises the gateway, the peer protocol and the replicas.  The cluster is shared
by the module; each test works on its own VDI.  The protocol itself (against an
in-memory export) is covered by test_nbd_protocol.py; this module proves the
product end to end.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import struct

import pytest

from tests.integration.fixtures_cluster import poll
from tests.integration.fixtures_nbd import (MiB, OBJ, NbdSession, attached, create_vdi, libnbd,
                                            module_cluster, run, store, uri,
                                            wait_detached, wait_unlocked)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-io", "qemu-img", "nbdinfo", "nbdcopy"))
    or not os.path.exists("/usr/bin/python3"),
    reason="NBD client tools (qemu-utils, libnbd-bin, python3-libnbd) not installed")

HOLE_ZERO = 3                   # base:allocation flags of an unallocated range


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    yield from module_cluster(request, tmp_path_factory, nodes=3, copies=3)


def run_check(res, cmd) -> None:
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {res.returncode}\n"
                             f"stdout: {res.stdout.decode(errors='replace')}\n"
                             f"stderr: {res.stderr.decode(errors='replace')}")


def qemu_io(node, name, *cmds, check=True):
    args = []
    for c in cmds:
        args += ["-c", c]
    res = run("qemu-io", "-f", "raw", uri(node, name), *args, check=False)
    if b"Denied by server" not in res.stderr + res.stdout:
        wait_unlocked(node, name)       # its lock goes a moment after the client exits
    if check:
        run_check(res, ["qemu-io", uri(node, name), *args])
    return res


def runs(model: bytearray, start: int, end: int):
    """Maximal runs of one byte value in ``model[start:end]`` as (offset, length, byte)."""
    pos = start
    while pos < end:
        b = model[pos]
        stop = pos
        while stop < end and model[stop] == b:
            stop += 1
        yield pos, stop - pos, b
        pos = stop


def test_qemu_io_odd_offsets_across_object_boundaries_through_every_node(cluster):
    a, b, c = cluster.sheep
    size = 16 * MiB
    create_vdi(a, "patterns", size)
    model = bytearray(size)
    writes = [  # (offset, length, byte): odd offsets, straddling 4 MiB object boundaries
        (1, 511, 0x44),
        (OBJ - 1, 2, 0x11),                        # the last byte of object 0, first of 1
        (2 * OBJ - 608, 1_000_000, 0x22),          # objects 1 -> 2
        (3 * OBJ - 1, OBJ + 1, 0x33),              # objects 2 -> 3, up to the last byte
        (5 * MiB + 3, 70_001, 0x66),
    ]

    # write every pattern through node 0
    qemu_io(a, "patterns", *[f"write -P {v:#x} {o} {n}" for o, n, v in writes])
    for o, n, v in writes:
        model[o:o + n] = bytes([v]) * n

    # read the whole volume through nodes 1 and 2: patterns where written, zeros elsewhere
    reads = [f"read -P {v:#x} {o} {n}" for o, n, v in runs(model, 0, size)]
    for node in (b, c):
        wait_unlocked(a, "patterns")
        qemu_io(node, "patterns", *reads)

    # overwrite across the boundaries through node 2 and read it all back through node 0
    wait_unlocked(a, "patterns")
    overwrite = [(OBJ - 1000, 3000, 0x55), (3 * OBJ - 7, 14, 0x77)]
    qemu_io(c, "patterns", *[f"write -P {v:#x} {o} {n}" for o, n, v in overwrite])
    for o, n, v in overwrite:
        model[o:o + n] = bytes([v]) * n
    wait_unlocked(a, "patterns")
    qemu_io(a, "patterns", *[f"read -P {v:#x} {o} {n}" for o, n, v in runs(model, 0, size)])

    # a wrong pattern is noticed (qemu-io exits 1), so the checks above mean something
    wait_unlocked(a, "patterns")
    bad = qemu_io(b, "patterns", f"read -P 0x99 {OBJ - 1} 2", check=False)
    assert bad.returncode != 0 and b"Pattern verification failed" in bad.stdout + bad.stderr


def make_sparse_image(path, size: int, rng: random.Random) -> list[bool]:
    """A raw image with random data in some objects, explicit zeros in others and
    holes in the rest; returns per object whether it has non-zero data."""
    has_data = [False] * (size // OBJ)
    with open(path, "wb") as f:
        f.truncate(size)

        def put(offset, data):
            f.seek(offset)
            f.write(data)
            if any(data):
                has_data[offset // OBJ] = True

        put(0, rng.randbytes(OBJ))                           # object 0: full
        put(3 * OBJ + 123_457, rng.randbytes(MiB))           # object 3: odd partial
        put(4 * OBJ, bytes(4 * OBJ))                         # objects 4-7: written zeros
        put(8 * OBJ, rng.randbytes(4096))                    # object 8: head and tail
        put(9 * OBJ - 4096, rng.randbytes(4096))
        put(size - 100 * 1024, rng.randbytes(100 * 1024))    # object 15: the end
    return has_data


def test_qemu_img_convert_in_and_out_compare_and_map_holes(cluster, tmp_path):
    a, b, c = cluster.sheep
    size = 64 * MiB
    create_vdi(a, "img", size)
    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    has_data = make_sparse_image(src, size, random.Random(7))

    # convert the image into the VDI through node 0 (-n: the target exists)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri(a, "img"))

    # compare through node 1: identical
    wait_unlocked(a, "img")
    cmp_ = run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri(b, "img"))
    assert b"Images are identical" in cmp_.stdout

    # qemu-img map through node 2: data exactly in the objects that have data
    wait_unlocked(a, "img")
    extents = json.loads(run("qemu-img", "map", "--output=json", "-f", "raw",
                             uri(c, "img")).stdout)
    allocated = [False] * len(has_data)
    for e in extents:
        assert e["start"] % OBJ == 0 and e["length"] % OBJ == 0, e
        for i in range(e["start"] // OBJ, (e["start"] + e["length"]) // OBJ):
            allocated[i] = e["data"]
            assert e["zero"] == (not e["data"]), e
    assert allocated == has_data

    # nbdinfo --map through node 0 agrees: holes (type 3 = hole,zero) where nothing was written
    wait_unlocked(a, "img")
    nmap = json.loads(run("nbdinfo", "--map", "--json", uri(a, "img")).stdout)
    holes = [False] * len(has_data)
    for e in nmap:
        for i in range(e["offset"] // OBJ, (e["offset"] + e["length"]) // OBJ):
            holes[i] = e["type"] == HOLE_ZERO
    assert holes == [not d for d in has_data]

    # and back out through node 1: byte for byte the source
    wait_unlocked(a, "img")
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri(b, "img"), out)
    assert out.read_bytes() == src.read_bytes()


def test_nbdcopy_in_both_directions(cluster, tmp_path):
    a, b, c = cluster.sheep
    size = 24 * MiB
    create_vdi(a, "copied", size)
    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    rng = random.Random(11)
    with open(src, "wb") as f:
        f.truncate(size)
        f.write(rng.randbytes(5 * MiB + 17))                 # objects 0-1, odd end
        f.seek(4 * OBJ + 999)
        f.write(rng.randbytes(3 * MiB))                      # object 4 only

    # file -> VDI through node 1, VDI -> file through node 2
    run("nbdcopy", src, uri(b, "copied"))
    wait_unlocked(a, "copied")
    run("nbdcopy", uri(c, "copied"), out)
    assert out.read_bytes() == src.read_bytes()

    # the copy kept the hole (objects 2, 3 and 5 were never written)
    wait_unlocked(a, "copied")
    nmap = json.loads(run("nbdinfo", "--map", "--json", uri(a, "copied")).stdout)
    holes = {i for e in nmap if e["type"] == HOLE_ZERO
             for i in range(e["offset"] // OBJ, (e["offset"] + e["length"]) // OBJ)}
    assert {2, 3, 5} <= holes and not {0, 1, 4} & holes


LIBNBD_CHECKS = r'''
import errno, json, sys, nbd
uri, size = sys.argv[1], int(sys.argv[2])
OBJ, MiB = 4 << 20, 1 << 20
out = {}
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)

# what the export advertises
out["flags"] = {"size": h.get_size(), "read_only": h.is_read_only(),
                "flush": h.can_flush(), "fua": h.can_fua(), "trim": h.can_trim(),
                "zero": h.can_zero(), "fast_zero": h.can_fast_zero(), "df": h.can_df(),
                "multi_conn": h.can_multi_conn(),
                "base_allocation": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
                "structured": h.get_structured_replies_negotiated()}

# structured read across an object boundary: chunks must cover the range exactly
h.pwrite(b"\xa5" * (2 * MiB), 3 * MiB)
chunks, got = [], bytearray(4 * MiB)
def chunk(sub, offset, status, err):
    chunks.append((offset, len(sub), status))
    got[offset - 2 * MiB: offset - 2 * MiB + len(sub)] = sub
    return 0
h.pread_structured(4 * MiB, 2 * MiB, chunk)
out["chunks_ok"] = (sum(n for _, n, _ in chunks) == 4 * MiB
                    and all(s in (nbd.READ_DATA, nbd.READ_HOLE) for *_, s in chunks))
out["read_ok"] = bytes(got) == bytes(MiB) + b"\xa5" * (2 * MiB) + bytes(MiB)

# block status of the whole export: data in objects 0 and 1 only
ext = []
pos = 0
while pos < size:
    got_e = []
    h.block_status(size - pos, pos,
                   lambda ctx, off, e, err: got_e.extend(e) if ctx == nbd.CONTEXT_BASE_ALLOCATION else None)
    for i in range(0, len(got_e), 2):
        ext.append([pos, got_e[i], got_e[i + 1]]); pos += got_e[i]
out["extents"] = ext

# out-of-range and malformed requests reach the server (strict mode off) and get errnos
h.set_strict_mode(0)
def err(f):
    try:
        f(); return 0
    except nbd.Error as e:
        return e.errno
out["errors"] = {
    "read_at_end": err(lambda: h.pread(1, size)),
    "read_across_end": err(lambda: h.pread(4096, size - 1)),
    "write_at_end": err(lambda: h.pwrite(b"x", size)),
    "write_across_end": err(lambda: h.pwrite(b"xy", size - 1)),
    "trim_past_end": err(lambda: h.trim(OBJ, size)),
    "zero_length_read": err(lambda: h.pread(0, 0)),
    "read_with_fua_flag": err(lambda: h.pread(512, 0, nbd.CMD_FLAG_FUA)),
    "write_with_unknown_flag": err(lambda: h.pwrite(b"z", 0, 1 << 10)),
}
# ... and the connection is still good afterwards
out["after_errors"] = h.pread(2, 3 * MiB) == b"\xa5\xa5"
h.shutdown()
print(json.dumps(out))
'''


def test_libnbd_flags_structured_reads_block_status_and_errors(cluster):
    a, b, c = cluster.sheep
    size = 16 * MiB
    create_vdi(a, "lib", size)

    # all checks in one libnbd session through node 1
    r = libnbd(LIBNBD_CHECKS, uri(b, "lib"), str(size))

    assert r["flags"] == {"size": size, "read_only": False, "flush": True, "fua": True,
                          "trim": True, "zero": True, "fast_zero": True, "df": True,
                          "multi_conn": False, "base_allocation": True, "structured": True}
    assert r["chunks_ok"] and r["read_ok"]
    data = [(off, n) for off, n, flags in r["extents"] if not flags & 1]
    holes = [(off, n) for off, n, flags in r["extents"] if flags == HOLE_ZERO]
    assert data and all(off + n <= 2 * OBJ for off, n in data)
    assert sum(n for _, n in data) == 2 * OBJ
    assert sum(n for _, n in holes) == size - 2 * OBJ
    # (libnbd's Python binding reports errnos by name)
    assert r["errors"] == {
        "read_at_end": "EINVAL", "read_across_end": "EINVAL",
        "write_at_end": "ENOSPC", "write_across_end": "ENOSPC",
        "trim_past_end": "ENOSPC", "zero_length_read": "EINVAL",
        "read_with_fua_flag": "EINVAL", "write_with_unknown_flag": "EINVAL"}
    assert r["after_errors"]


LIBNBD_AIO = r'''
import json, sys, nbd
uri = sys.argv[1]
MiB, KiB = 1 << 20, 1 << 10
h = nbd.NBD()
h.connect_uri(uri)
N = 128
done, bufs, max_in_flight = [], [], 0
def completion(i):
    def cb(error):
        done.append((i, getattr(error, "value", error))); return 1
    return cb
# interleave big writes to 16 objects with tiny reads: queued all at once, then driven
for i in range(N):
    if i % 2 == 0:
        buf = nbd.Buffer.from_bytearray(bytearray([i % 251 + 1]) * MiB)
        h.aio_pwrite(buf, (i // 2 % 16) * 4 * MiB + (i // 32) * MiB, completion(i))
    else:
        buf = nbd.Buffer(4 * KiB)
        h.aio_pread(buf, (i % 16) * 4 * MiB + 512 * 1024, completion(i))
    bufs.append(buf)
    max_in_flight = max(max_in_flight, h.aio_in_flight())
while h.aio_in_flight() > 0:
    max_in_flight = max(max_in_flight, h.aio_in_flight())
    h.poll(-1)
order = [i for i, _ in done]
ok = all(e == 0 for _, e in done)
check = all(h.pread(4, (i // 2 % 16) * 4 * MiB + (i // 32) * MiB + 1000) == bytes([i % 251 + 1]) * 4
            for i in range(0, N, 2))
h.shutdown()
print(json.dumps({"order": order, "ok": ok, "max_in_flight": max_in_flight, "check": check}))
'''


def test_libnbd_128_requests_in_flight_complete_out_of_order(cluster):
    a, b, c = cluster.sheep
    create_vdi(a, "aio", 64 * MiB)

    # 128 requests queued on one connection through node 2 before any reply is read
    r = libnbd(LIBNBD_AIO, uri(c, "aio"))

    assert r["ok"] and r["check"]
    assert sorted(r["order"]) == list(range(128))
    assert r["max_in_flight"] >= 64
    # replies came back in another order than the requests went out: the small reads
    # overtook the 1 MiB replicated writes queued before them
    assert r["order"] != sorted(r["order"])
    inversions = sum(1 for x, y in zip(r["order"], r["order"][1:]) if x > y)
    assert inversions >= 1, r["order"]


def test_flush_and_fua_leave_no_dirty_object_on_any_replica(cluster):
    nodes = cluster.sheep
    create_vdi(nodes[0], "durable", 32 * MiB)

    with NbdSession(nodes[0], "durable") as s:
        s.must("connect")
        # start clean: a FLUSH syncs what creating the VDI wrote (its inode)
        s.must("flush")
        assert [store(n)["dirty_objects"] for n in nodes] == [0, 0, 0]

        # plain writes into three objects: acknowledged but not synced one by one
        for i in range(3):
            s.must("pwrite", offset=i * OBJ + 4096, length=64 * 1024, byte=i + 1)
        dirty = [store(n)["dirty_objects"] for n in nodes]
        assert all(d > 0 for d in dirty), dirty

        # FLUSH: every replica synced everything acknowledged before it
        s.must("flush")
        assert [store(n)["dirty_objects"] for n in nodes] == [0, 0, 0]

        # one FUA write into a new object: durable on every replica when acknowledged
        s.must("pwrite", offset=5 * OBJ + 123, length=4096, byte=9, fua=True)
        assert [store(n)["dirty_objects"] for n in nodes] == [0, 0, 0]

        # another plain write is dirty again (FUA did not switch to sync-per-write)
        s.must("pwrite", offset=6 * OBJ, length=4096, byte=10)
        assert all(store(n)["dirty_objects"] > 0 for n in nodes)
        s.must("flush")
        assert s.must("pread", offset=5 * OBJ + 123, length=4096)["bytes"] == [9]


def test_trim_frees_whole_objects_and_zeroes_partial_ranges(cluster):
    nodes = cluster.sheep
    create_vdi(nodes[0], "trimmed", 16 * MiB)

    with NbdSession(nodes[2], "trimmed") as s:
        s.must("connect")
        # fill objects 0, 1 and 2 with data
        for i in range(3):
            s.must("pwrite", offset=i * OBJ, length=MiB, byte=0x30 + i)
        before = [store(n)["objects"] for n in nodes]

        # trim all of object 1: each replica drops it, block status shows a hole
        s.must("trim", offset=OBJ, length=OBJ)
        poll(lambda: [store(n)["objects"] for n in nodes] == [x - 1 for x in before], 10,
             "object 1 removed on every replica")
        ext = s.must("block_status", offset=0, length=3 * OBJ)["extents"]
        assert ext == [[OBJ, 0], [OBJ, HOLE_ZERO], [OBJ, 0]]
        assert s.must("pread", offset=OBJ, length=MiB)["bytes"] == [0]

        # trim part of object 2: that range reads as zeros, the rest is kept
        s.must("trim", offset=2 * OBJ + 4096, length=8192)
        assert s.must("pread", offset=2 * OBJ + 4096, length=8192)["bytes"] == [0]
        assert s.must("pread", offset=2 * OBJ, length=4096)["bytes"] == [0x32]
        assert s.must("pread", offset=2 * OBJ + 12288, length=MiB - 12288)["bytes"] == [0x32]
        assert [store(n)["objects"] for n in nodes] == [x - 1 for x in before]

    # the data survives a reconnect through another node
    wait_unlocked(nodes[0], "trimmed")
    qemu_io(nodes[1], "trimmed", f"read -P 0x30 0 {MiB}", f"read -P 0 {OBJ} {OBJ}",
            f"read -P 0x32 {2 * OBJ} 4096", f"read -P 0 {2 * OBJ + 4096} 8192")


def test_unknown_export_name_is_refused(cluster):
    a = cluster.sheep[0]

    # qemu-io shows the server's message
    res = qemu_io(a, "no-such-vdi", "read 0 1", check=False)
    assert res.returncode != 0
    assert b"no-such-vdi" in res.stderr

    # libnbd sees NBD_REP_ERR_UNKNOWN as ENOENT on NBD_OPT_GO
    r = libnbd(r'''
        import json, sys, nbd
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.connect_uri(sys.argv[1])
        try:
            h.opt_go(); print(json.dumps({"errno": 0}))
        except nbd.Error as e:
            print(json.dumps({"errno": e.errno, "error": e.string}))
        ''', uri(a, "no-such-vdi"))
    assert r["errno"] == "ENOENT", r


def raw_attach(node, name: str) -> socket.socket:
    """Fixed-newstyle handshake with NBD_OPT_GO on a plain socket."""
    sock = socket.create_connection(("127.0.0.1", node.nbd_port), timeout=10)
    greeting = sock.recv(18, socket.MSG_WAITALL)
    assert greeting[:8] == b"NBDMAGIC", greeting
    sock.sendall(struct.pack("!I", 3))                       # FIXED_NEWSTYLE | NO_ZEROES
    raw = name.encode()
    data = struct.pack("!I", len(raw)) + raw + struct.pack("!H", 0)
    sock.sendall(struct.pack("!QII", 0x49484156454F5054, 7, len(data)) + data)
    while True:
        _magic, _opt, rtype, length = struct.unpack("!QIII", sock.recv(20, socket.MSG_WAITALL))
        body = sock.recv(length, socket.MSG_WAITALL) if length else b""
        assert not rtype & 0x80000000, f"GO refused: {rtype:#x} {body!r}"
        if rtype == 1:                                        # NBD_REP_ACK
            return sock


def test_hostile_client_loses_only_its_own_connection(cluster):
    a, b, c = cluster.sheep
    create_vdi(a, "victim", 8 * MiB)
    create_vdi(a, "hostile", 8 * MiB)

    with NbdSession(b, "victim") as good:
        # a well-behaved client is attached to node 1
        good.must("connect")
        good.must("pwrite", offset=0, length=4096, byte=0x42)

        # a hostile client on the same node finishes the handshake, then sends garbage
        bad = raw_attach(b, "hostile")
        try:
            poll(lambda: "hostile" in attached(a), 10, "the hostile client's attachment")
            bad.sendall(os.urandom(64) + b"\xff" * 64)
            bad.settimeout(10)
            # the server closes that connection (EOF or reset; never a hang)
            try:
                while bad.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        finally:
            bad.close()

        # its attachment goes with it; the good client carries on as before
        wait_detached(a, "hostile")
        assert good.must("pread", offset=0, length=4096)["bytes"] == [0x42]
        good.must("pwrite", offset=OBJ, length=4096, byte=0x43)
        good.must("flush")

    # and the hostile client's VDI can be attached normally
    qemu_io(b, "hostile", "write -P 0x1 0 512", "read -P 0x1 0 512")
