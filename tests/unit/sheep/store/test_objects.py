"""sheep.store.objects.ObjectStore on a real filesystem (tmp_path)."""
from __future__ import annotations

import errno
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import Corrupt, InvalidRequest, NoObject, NoSpace, Unavailable
from sheep.store import objfile, objio
from sheep.store.objects import ObjectStore
from sheep.store.objfile import BLOCK, DATA_OFFSET, Version

OBJ = 4 << 20
OID = 1 << 63 | 0x7c2b25 << 32
DATA_OID = 0x7c2b25 << 32 | 3
V1, V2, V3 = Version(1, 1, 1), Version(2, 1, 5), Version(3, 2, 1)


@pytest.fixture
def store(tmp_path):
    return ObjectStore(tmp_path / "store", OBJ)


def reopen(store: ObjectStore) -> ObjectStore:
    return ObjectStore(store.root, store.max_object_bytes, store.reserve_bytes)


def corrupt_byte(store: ObjectStore, oid: int, offset: int) -> None:
    """Flip one data byte on disk behind the store's back (bit rot)."""
    with open(store.path_of(oid), "r+b") as f:
        f.seek(DATA_OFFSET + offset)
        b = f.read(1)
        f.seek(DATA_OFFSET + offset)
        f.write(bytes([b[0] ^ 0xFF]) if b else b"\xff")


# ------------------------------------------------------------ layout and I/O

def test_layout_header_sums_and_data_in_one_file(store):
    for d in ("obj", "tmp", "stale"):
        assert (store.root / d).is_dir()
    store.write(OID, 0, b"x" * 5000, V1, create=True)
    assert os.listdir(store.root / "obj") == ["807c2b2500000000"]
    assert os.listdir(store.root / "tmp") == []
    raw = open(store.path_of(OID), "rb").read()
    assert objfile.unpack_header(raw[:objfile.HEADER_READ_BYTES]) == V1
    assert raw[DATA_OFFSET:] == b"x" * 5000
    sums = objfile.sums_of(b"x" * 5000)
    assert raw[objfile.SUMS_OFFSET:objfile.SUMS_OFFSET + 8] == sums.tobytes()
    assert not os.listxattr(store.path_of(OID))


def test_create_write_then_read(store):
    store.write(DATA_OID, 100, b"hello", V2, create=True)
    assert store.read(DATA_OID, 100, 5) == b"hello"
    assert store.read(DATA_OID, 98, 9) == b"\0\0hello\0\0"
    assert store.exists(DATA_OID)
    assert store.version_of(DATA_OID) == V2


def test_sparse_reads_zeros_up_to_object_size(store):
    store.write(DATA_OID, 0, b"abc", V1, create=True)
    assert store.read(DATA_OID, OBJ - 10, 10) == bytes(10)
    assert store.read(DATA_OID, 0, 0) == b""
    whole = store.read(DATA_OID, 0, OBJ)
    assert len(whole) == OBJ and whole[:3] == b"abc" and whole[3:] == bytes(OBJ - 3)
    assert os.stat(store.path_of(DATA_OID)).st_size == DATA_OFFSET + 3


def test_create_at_offset_is_sparse(store):
    store.write(DATA_OID, OBJ - 4, b"tail", V1, create=True)
    st = os.stat(store.path_of(DATA_OID))
    assert st.st_size == DATA_OFFSET + OBJ
    assert st.st_blocks * 512 < 64 << 10  # holes, not zeros on disk
    assert store.read(DATA_OID, 0, 8) == bytes(8)
    assert store.read(DATA_OID, OBJ - 4, 4) == b"tail"


def test_partial_overwrite(store):
    store.write(DATA_OID, 0, b"a" * 100, V1, create=True)
    store.write(DATA_OID, 10, b"B" * 5, V1)
    assert store.read(DATA_OID, 0, 20) == b"a" * 10 + b"B" * 5 + b"a" * 5
    store.write(DATA_OID, 95, b"CCCCCCCCCC", V1)  # extends the file
    assert store.read(DATA_OID, 90, 20) == b"a" * 5 + b"C" * 10 + bytes(5)
    store.write(DATA_OID, BLOCK - 2, b"across", V1)  # across a block boundary
    assert store.read(DATA_OID, BLOCK - 4, 10) == b"\0\0across\0\0"
    assert store.info(DATA_OID)["bad_blocks"] == []


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview,
                                  lambda b: memoryview(bytearray(b"..." + b + b"..."))[3:-3]])
def test_write_accepts_buffers(store, make):
    store.write(DATA_OID, 7, make(b"payload"), V1, create=True)
    store.write(DATA_OID, 0, make(b"head"), V1)
    assert store.read(DATA_OID, 0, 14) == b"head\0\0\0payload"


def test_an_allocating_write_starts_from_a_fresh_object_never_a_leftover(store):
    # a copy left behind (its object trimmed or its VDI deleted while this node was away)
    store.write(DATA_OID, 0, b"\xaa" * OBJ, Version(1, 1, 9), create=True)
    # the next first write of that oid must not show the old bytes around it
    store.write(DATA_OID, 0, b"\xbb" * 4096, Version(5, 3, 1), create=True)
    assert store.read(DATA_OID, 0, 4096) == b"\xbb" * 4096
    assert store.read(DATA_OID, 1 << 20, 4096) == bytes(4096)
    assert store.read(DATA_OID, 0, OBJ).count(b"\xaa") == 0
    assert store.version_of(DATA_OID) == Version(5, 3, 1)
    assert os.listdir(store.root / "tmp") == []


def test_large_write_and_read(store):
    data = os.urandom(OBJ)
    store.write(DATA_OID, 0, data, V1, create=True)
    assert store.read(DATA_OID, 0, OBJ) == data
    version, whole = store.read_whole(DATA_OID)
    assert version == V1 and whole == data


# ------------------------------------------------------------ versions

def test_a_copy_keeps_the_highest_version_it_has_seen(store):
    store.write(DATA_OID, 0, b"x", Version(3, 1, 10), create=True)
    store.write(DATA_OID, 1, b"y", Version(3, 1, 12))
    store.write(DATA_OID, 2, b"z", Version(3, 1, 11))      # arrived out of order
    assert store.version_of(DATA_OID) == Version(3, 1, 12)
    assert store.read(DATA_OID, 0, 3) == b"xyz"
    store.write(DATA_OID, 0, b"w", Version(4, 1, 1))       # a later epoch wins
    assert store.version_of(DATA_OID) == Version(4, 1, 1)


def test_versions_become_durable_with_the_data_at_flush(store):
    store.write(DATA_OID, 0, b"x", V1, create=True)
    store.write(OID, 0, b"y", V2, create=True)
    store.flush()
    store.write(DATA_OID, 1, b"z", V3)
    # not flushed: the header on disk still says V1 (it is written before the fsync)
    assert reopen(store).list_objects() == {DATA_OID: V1, OID: V2}
    store.flush()
    again = reopen(store)
    assert again.list_objects() == {DATA_OID: V3, OID: V2}
    assert again.read(DATA_OID, 0, 2) == b"xz"


def test_reopen_cleans_tmp_and_treats_headerless_files_as_oldest(store):
    store.write(DATA_OID, 0, b"x", V3, create=True)
    store.flush()
    (store.root / "tmp" / "leftover").write_bytes(b"junk")
    (store.root / "obj" / "not-an-oid").write_bytes(b"junk")
    (store.root / "obj" / f"{OID:016x}").write_bytes(b"no header")
    again = reopen(store)
    assert os.listdir(store.root / "tmp") == []
    assert again.list_objects() == {DATA_OID: V3, OID: objfile.ZERO}


# ------------------------------------------------------------ checksums

def test_a_corrupt_block_is_refused_never_served(store):
    data = os.urandom(3 * BLOCK)
    store.write(DATA_OID, 0, data, V1, create=True)
    corrupt_byte(store, DATA_OID, BLOCK + 17)
    with pytest.raises(Corrupt) as err:
        store.read(DATA_OID, BLOCK, 100)
    assert err.value.data["blocks"] == [1]
    assert store.read(DATA_OID, 0, BLOCK) == data[:BLOCK]        # other blocks still read
    assert store.read(DATA_OID, 2 * BLOCK, BLOCK) == data[2 * BLOCK:]
    assert store.read_cached(DATA_OID, BLOCK, 100) is None
    with pytest.raises(Corrupt):
        store.read_whole(DATA_OID)
    assert store.info(DATA_OID)["bad_blocks"] == [1]
    assert store.usage()["corrupt_reads"] == 2


def test_a_partial_write_into_a_corrupt_block_does_not_give_it_a_valid_sum(store):
    store.write(DATA_OID, 0, os.urandom(2 * BLOCK), V1, create=True)
    corrupt_byte(store, DATA_OID, 10)
    with pytest.raises(Corrupt):
        store.write(DATA_OID, 100, b"new", V2)
    assert store.info(DATA_OID)["bad_blocks"] == [0]
    store.write(DATA_OID, 0, b"w" * BLOCK, V2)                   # a whole block heals it
    assert store.read(DATA_OID, 0, BLOCK) == b"w" * BLOCK


def test_repair_blocks_rewrites_only_what_is_still_corrupt(store, tmp_path):
    data = os.urandom(3 * BLOCK)
    store.write(DATA_OID, 0, data, V1, create=True)
    donor = ObjectStore(tmp_path / "donor", OBJ)
    donor.write(DATA_OID, 0, data, V1, create=True)
    corrupt_byte(store, DATA_OID, 5)
    corrupt_byte(store, DATA_OID, 2 * BLOCK + 5)
    good = donor.read_blocks(DATA_OID, [0, 2])
    blocks = {k: (objfile.block_sum(good[k]), good[k]) for k in (0, 2)}
    tick = store.tick_of(DATA_OID)
    assert store.repair_blocks(DATA_OID, blocks) == 2
    assert store.read(DATA_OID, 0, 3 * BLOCK) == data and store.tick_of(DATA_OID) != tick
    assert store.repair_blocks(DATA_OID, blocks) == 0           # nothing corrupt any more
    with pytest.raises(InvalidRequest):                           # bytes not matching the sum
        store.repair_blocks(DATA_OID, {1: (objfile.block_sum(good[0]), b"x" * BLOCK)})


# ------------------------------------------------------------ install (recovery, repair)

def test_install_replaces_a_copy_atomically_and_keeps_zero_blocks_as_holes(store, tmp_path):
    store.write(DATA_OID, 5 * BLOCK, b"old bytes at the end", V1, create=True)
    source = ObjectStore(tmp_path / "source", OBJ)
    source.write(DATA_OID, 3, b"newer", V3, create=True)
    source.write(DATA_OID, 2 * BLOCK + 1, b"tail", V3)
    version, data = source.read_whole(DATA_OID)
    assert version == V3 and len(data) == 2 * BLOCK + 5
    assert store.install(DATA_OID, data, version)
    assert store.version_of(DATA_OID) == V3
    assert store.read(DATA_OID, 0, len(data)) == data
    assert store.read(DATA_OID, 5 * BLOCK, 20) == bytes(20)       # not overlaid: replaced
    store.flush()
    assert reopen(store).version_of(DATA_OID) == V3
    assert os.listdir(store.root / "tmp") == []
    st = os.stat(store.path_of(DATA_OID))
    assert st.st_blocks * 512 < st.st_size - DATA_OFFSET + 3 * BLOCK


def test_install_only_if_newer_than_the_copy_and_its_tombstone(store):
    store.write(DATA_OID, 0, b"mine", V2, create=True)
    assert not store.install(DATA_OID, b"older", V1, only_if_newer=True)
    assert not store.install(DATA_OID, b"equal", V2, only_if_newer=True)
    assert store.read(DATA_OID, 0, 4) == b"mine"
    store.remove(DATA_OID, V3)                                    # trimmed at V3
    assert store.tombstone_of(DATA_OID) == V3
    assert not store.install(DATA_OID, b"resurrected", V2, only_if_newer=True)
    assert not store.exists(DATA_OID)
    assert store.install(DATA_OID, b"later", Version(4, 0, 0), only_if_newer=True)
    assert store.drop_tombstones(below_epoch=4) == 1 and store.tombstone_of(DATA_OID) is None


def test_install_with_an_expected_tick_never_undoes_a_write_it_did_not_see(store):
    store.write(DATA_OID, 0, b"aaaa", V1, create=True)
    seen = store.tick_of(DATA_OID)
    store.write(DATA_OID, 0, b"b", V1)                            # lands after the look
    assert not store.install(DATA_OID, b"repair", V1, expect_tick=seen)
    assert store.read(DATA_OID, 0, 4) == b"baaa"
    assert store.install(DATA_OID, b"repair", V1, expect_tick=store.tick_of(DATA_OID))
    assert not store.install(7, b"x", V1, expect_tick=123)        # no copy: tick 0
    assert store.install(7, b"x", V1, expect_tick=0)


# ------------------------------------------------------------ errors

def test_missing_object(store):
    with pytest.raises(NoObject):
        store.read(DATA_OID, 0, 1)
    with pytest.raises(NoObject):
        store.write(DATA_OID, 0, b"x", V1)
    with pytest.raises(NoObject):
        store.remove(DATA_OID)
    with pytest.raises(NoObject):
        store.version_of(DATA_OID)
    with pytest.raises(NoObject):
        store.info(DATA_OID)
    with pytest.raises(NoObject):
        store.read_whole(DATA_OID)
    with pytest.raises(NoObject):
        store.move_to_stale(DATA_OID, 1)
    assert not store.exists(DATA_OID) and store.tick_of(DATA_OID) == 0
    assert os.listdir(store.root / "obj") == []


@pytest.mark.parametrize("offset,length", [(-1, 1), (0, -1), (OBJ, 1), (OBJ - 1, 2), (0, OBJ + 1)])
def test_read_out_of_range(store, offset, length):
    store.write(DATA_OID, 0, b"x", V1, create=True)
    with pytest.raises(InvalidRequest):
        store.read(DATA_OID, offset, length)


@pytest.mark.parametrize("offset,size", [(-1, 1), (OBJ, 1), (OBJ - 1, 2), (0, OBJ + 1)])
def test_write_out_of_range(store, offset, size):
    with pytest.raises(InvalidRequest):
        store.write(DATA_OID, offset, b"x" * size, V1, create=True)
    assert not store.exists(DATA_OID)


def test_bad_oid(store):
    with pytest.raises(InvalidRequest):
        store.write(-1, 0, b"x", V1, create=True)
    with pytest.raises(InvalidRequest):
        store.read(1 << 64, 0, 1)


def test_write_at_the_end_is_allowed(store):
    store.write(DATA_OID, OBJ - 1, b"z", V1, create=True)
    assert store.read(DATA_OID, OBJ - 1, 1) == b"z"
    assert store.read(DATA_OID, OBJ, 0) == b""


def test_no_space(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = ObjectStore(tmp_path / "s", OBJ, reserve_bytes=free + (1 << 40))
    with pytest.raises(NoSpace) as err:
        store.write(DATA_OID, 0, b"x", V1, create=True)
    assert "reserve" in err.value.message
    assert not store.exists(DATA_OID)


@pytest.mark.parametrize("create", [True, False])
def test_enospc_from_the_filesystem_is_no_space(store, monkeypatch, create):
    store.write(1, 0, b"x", V1, create=True)
    oid = 2 if create else 1

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sheep.store.objects.os.pwrite", full)
    with pytest.raises(NoSpace):
        store.write(oid, 0, b"y", V2, create=create)
    assert os.listdir(store.root / "tmp") == []
    assert store.list_objects() == {1: V1}


def test_space_is_checked_by_time_and_volume(tmp_path, monkeypatch):
    now = [0.0]
    store = ObjectStore(tmp_path / "s", OBJ, reserve_bytes=0, clock=lambda: now[0])
    calls = []
    real = os.statvfs
    monkeypatch.setattr("sheep.store.space.os.statvfs", lambda p: calls.append(p) or real(p))
    for i in range(10):
        store.write(i, 0, b"x" * 4096, V1, create=True)
    assert len(calls) == 1  # cached between checks
    now[0] = 1.0
    store.write(0, 0, b"y", V1)
    assert len(calls) == 2  # refreshed by time
    for i in range(17):  # 17 x 4 MiB > 64 MiB of writes within the same instant
        store.write(1, 0, bytes(OBJ), V1)
    assert len(calls) == 3  # refreshed by volume


def test_a_failed_fsync_is_sticky(store, monkeypatch):
    store.write(1, 0, b"x", V1, create=True)

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("sheep.store.objects.os.fsync", eio)
    with pytest.raises(Unavailable):
        store.flush()
    monkeypatch.undo()
    # the kernel may have dropped the dirty pages: this copy may have lost writes, so the
    # next flush must not pretend all is well, and nothing is served any more
    assert store.failed and "fsync" in store.failed
    for call in (store.flush, lambda: store.read(1, 0, 1),
                 lambda: store.write(1, 0, b"y", V2)):
        with pytest.raises(Unavailable):
            call()


def test_remove_leaves_a_tombstone(store):
    store.write(DATA_OID, 0, b"x", V1, create=True)
    store.remove(DATA_OID, V2)
    assert not store.exists(DATA_OID) and store.list_objects() == {}
    assert store.tombstone_of(DATA_OID) == V2
    with pytest.raises(NoObject):
        store.read(DATA_OID, 0, 1)
    with pytest.raises(NoObject):
        store.remove(DATA_OID, V3)
    assert store.tombstone_of(DATA_OID) == V3


# ------------------------------------------------------------ concurrency

def test_concurrent_writes_to_one_object_all_land_with_valid_sums(store):
    store.write(DATA_OID, 0, b"", V1, create=True)
    n, rounds = 8, 30
    errors = []

    def writer(i):
        try:
            for r in range(rounds):
                # unaligned pieces: neighbours share blocks, so sums need the stripe lock
                store.write(DATA_OID, i * 1000, bytes([i + 1]) * 1000, Version(1, 1, r))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader():
        try:
            for _ in range(rounds * 4):
                store.read(DATA_OID, 0, n * 1000)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(n):
        assert store.read(DATA_OID, i * 1000, 1000) == bytes([i + 1]) * 1000
    assert store.info(DATA_OID)["bad_blocks"] == []


def test_concurrent_writers_on_many_oids(store):
    def worker(t):
        for i in range(50):
            oid = t << 32 | i
            store.write(oid, 0, b"%d" % oid, Version(t, 0, 0), create=True)
            store.write(oid, 100, b"more", Version(t + 1, 0, 0))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    objs = store.list_objects()
    assert len(objs) == 400
    assert all(v == Version((oid >> 32) + 1, 0, 0) for oid, v in objs.items())
    assert store.flush() == 400


def test_a_reader_never_caches_the_descriptor_of_a_replaced_file(store, monkeypatch):
    store.write(DATA_OID, 0, b"old", V1, create=True)
    real_open = os.open

    def open_then_replace(path, flags, *mode):
        fd = real_open(path, flags, *mode)
        if path == store.path_of(DATA_OID) and flags == os.O_RDWR:
            monkeypatch.setattr("sheep.store.objects.os.open", real_open)
            store.install(DATA_OID, b"new", V2)       # replaced between open and caching
        return fd

    monkeypatch.setattr("sheep.store.objects.os.open", open_then_replace)
    assert store.read(DATA_OID, 0, 3) == b"old"       # this read saw the old file...
    store.write(DATA_OID, 3, b"!", V2)                # ...but later I/O must use the new one
    assert store.read(DATA_OID, 0, 4) == b"new!"


# ------------------------------------------------------------ flush

def test_flush_syncs_only_dirty_files(store, monkeypatch):
    for i in range(5):
        store.write(i, 0, b"x", V1, create=True)
    assert store.flush() == 5
    assert store.flush() == 0
    store.write(1, 0, b"y", V1)
    store.write(3, 0, b"y", V1)
    store.write(3, 1, b"y", V1)
    synced = []
    real = os.fsync
    monkeypatch.setattr("sheep.store.objects.os.fsync", lambda fd: synced.append(fd) or real(fd))
    assert store.flush() == 2
    assert len(synced) == 2  # no directory sync: nothing was created
    synced.clear()
    store.write(9, 0, b"new", V1, create=True)
    assert store.flush() == 1
    assert len(synced) == 2  # the new file and obj/


def test_flush_skips_removed_objects(store):
    store.write(1, 0, b"x", V1, create=True)
    store.write(2, 0, b"x", V1, create=True)
    store.remove(1)
    store.move_to_stale(2, 1)
    assert store.flush() == 0


def test_no_fsync_on_write(store, monkeypatch):
    monkeypatch.setattr("sheep.store.objects.os.fsync", lambda fd: pytest.fail("fsync outside flush"))
    store.write(1, 0, b"x", V1, create=True)
    store.write(1, 0, b"y", V2)
    store.install(2, b"z", V2)
    store.remove(1)


# ------------------------------------------------------------ digest and usage

def test_digest_of_a_sparse_copy_equals_one_with_explicit_zeros(store):
    store.write(1, 0, b"data", V1, create=True)
    store.write(1, 8192, b"more", V1)                    # hole in between
    store.write(2, 0, b"data" + bytes(8188) + b"more" + bytes(5000), V1, create=True)
    store.write(3, 0, b"data" + bytes(8188) + b"morf", V1, create=True)
    assert store.info(1)["digest"] == store.info(2)["digest"]
    assert store.info(1)["digest"] != store.info(3)["digest"]
    store.write(4, OBJ - 1, b"\0", V1, create=True)      # all zeros
    store.write(5, 0, b"", V1, create=True)
    assert store.info(4)["digest"] == store.info(5)["digest"]


def test_usage(store):
    empty = store.usage()
    assert empty["objects"] == 0 and empty["used_bytes"] == 0
    assert empty["capacity_bytes"] >= empty["free_bytes"] > 0
    store.write(1, 0, os.urandom(1 << 20), V1, create=True)
    store.write(2, OBJ - 1, b"x", V1, create=True)
    u = store.usage()
    assert u["objects"] == 2
    assert (1 << 20) <= u["used_bytes"] < (1 << 20) + (1 << 18)
    assert reopen(store).usage()["used_bytes"] == u["used_bytes"]
    store.remove(1)
    assert store.usage()["used_bytes"] < 1 << 18


# ------------------------------------------------------------ stale copies

def test_move_to_stale_read_and_purge(store):
    store.write(1, 0, b"old", V1, create=True)
    store.write(2, 0, b"two", V2, create=True)
    store.move_to_stale(1, 4)
    assert store.list_objects() == {2: V2}
    assert not store.exists(1)
    assert store.stale.read(1) == (V1, b"old")
    # a newer copy, made stale in a later epoch, wins
    store.write(1, 0, b"newer", V3, create=True)
    store.move_to_stale(1, 6)
    store.move_to_stale(2, 6)
    assert store.stale.read(1) == (V3, b"newer")
    assert sorted(os.listdir(store.root / "stale")) == ["4", "6"]
    # stale copies survive a re-open and stay out of the object list
    again = reopen(store)
    assert again.list_objects() == {}
    assert again.stale.purge(4) == 1
    assert sorted(os.listdir(store.root / "stale")) == ["6"]
    assert again.stale.read(1) == (V3, b"newer")
    assert again.stale.purge(10) == 1
    assert os.listdir(store.root / "stale") == []
    with pytest.raises(NoObject):
        again.stale.read(1)


def test_read_stale_missing(store):
    with pytest.raises(NoObject):
        store.stale.read(42)


def test_stale_listing_keeps_the_newest_copy_per_object(store):
    store.write(1, 0, b"a", V1, create=True)
    store.move_to_stale(1, 3)
    store.write(1, 0, b"b", V3, create=True)
    store.move_to_stale(1, 6)
    store.write(2, 0, b"c", V2, create=True)
    store.move_to_stale(2, 4)
    assert store.stale.list() == {1: V3, 2: V2}
    assert store.stale.version_of(1) == V3
    assert store.stale.version_of(3) is None
    assert store.list_objects() == {}


def test_read_cached_serves_hot_data_and_declines_otherwise(store):
    # nothing cached yet: the caller must use the blocking path
    assert store.read_cached(DATA_OID, 0, 4096) is None
    store.write(DATA_OID, 0, b"h" * 8192, V1, create=True)
    assert store.read(DATA_OID, 0, 4096) == b"h" * 4096     # caches the descriptor
    assert bytes(store.read_cached(DATA_OID, 4096, 4096)) == b"h" * 4096
    # past the file's end (a sparse tail) is left to the blocking path, which pads zeros
    assert store.read_cached(DATA_OID, 8192, 4096) is None
    with pytest.raises(InvalidRequest):
        store.read_cached(DATA_OID, OBJ, 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5 * BLOCK), st.integers(1, 3 * BLOCK),
                          st.booleans()), min_size=1, max_size=8))
def test_any_sequence_of_writes_reads_back_with_valid_sums(tmp_path_factory, writes):
    store = ObjectStore(tmp_path_factory.mktemp("h"), OBJ)
    model = bytearray()
    for i, (offset, length, create) in enumerate(writes):
        data = bytes([i + 1]) * length
        if create or not model:
            model = bytearray(offset + length)
            store.write(DATA_OID, offset, data, V1, create=True)
        else:
            store.write(DATA_OID, offset, data, V1)
        model.extend(bytes(max(0, offset + length - len(model))))
        model[offset:offset + length] = data
    assert store.read(DATA_OID, 0, len(model)) == bytes(model)
    assert store.info(DATA_OID)["bad_blocks"] == []
    assert store.read_whole(DATA_OID)[1].ljust(len(model), b"\0") == bytes(model)


def test_a_flush_never_returns_while_another_is_still_syncing_its_writes(store, monkeypatch):
    store.write(1, 0, b"old", V1, create=True)
    store.flush()
    store.write(1, 0, b"acked", V2)                 # acknowledged, not yet durable
    real, go, synced = os.fsync, threading.Event(), []

    def slow_fsync(fd):
        go.wait(5)
        real(fd)
        synced.append(fd)
    monkeypatch.setattr("sheep.store.objects.os.fsync", slow_fsync)
    first = threading.Thread(target=store.flush)    # e.g. recovery's flush took the write
    first.start()
    while not store.usage()["dirty_objects"] == 0:  # it popped the dirty object
        pass
    second_done = []
    second = threading.Thread(target=lambda: second_done.append(store.flush()))
    second.start()                                  # a client's FLUSH
    second.join(0.3)
    assert not second_done, "a FLUSH returned before the write it covers was synced"
    go.set()
    first.join()
    second.join()
    assert synced and second_done


def test_an_object_whose_sync_failed_stays_dirty_and_the_store_fails(store, monkeypatch):
    store.write(1, 0, b"x", V1, create=True)

    def emfile(*a, **k):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr("sheep.store.objects.os.open", emfile)
    with pytest.raises(Unavailable):
        store.flush()
    monkeypatch.undo()
    assert store.usage()["dirty_objects"] == 1 and store.failed


@pytest.mark.parametrize("err", [errno.EIO, errno.EROFS])
def test_a_disk_refusing_a_write_fails_the_store(store, monkeypatch, err):
    store.write(1, 0, b"x", V1, create=True)

    def refuse(*a):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr("sheep.store.objio.os.pwrite", refuse)
    with pytest.raises(Unavailable):
        store.write(1, 0, b"y", V2)
    monkeypatch.undo()
    assert store.failed and "writing" in store.failed
    with pytest.raises(Unavailable):                # it serves nothing any more
        store.read(1, 0, 1)


def test_a_repair_never_brings_back_a_copy_removed_since_it_was_made(store):
    store.write(DATA_OID, 0, b"gone", V1, create=True)
    store.remove(DATA_OID, V2)
    assert not store.install(DATA_OID, b"gone", V1, expect_tick=0)
    assert not store.exists(DATA_OID)
    assert store.install(DATA_OID, b"new", V3, expect_tick=0)      # newer than the removal


def test_a_block_aligned_write_stores_the_sums_its_gateway_computed(store):
    store.write(DATA_OID, 0, b"\0", V1, create=True)
    data = os.urandom(2 * BLOCK)
    sent = objfile.sums_of(data)
    store.write(DATA_OID, BLOCK, data, V2, sums=sent)
    assert store.read(DATA_OID, BLOCK, 2 * BLOCK) == data
    # the stored sums are the gateway's: bytes that changed after it summed them (in
    # flight, in a replica's memory) read as corrupt instead of being blessed here
    wrong = objfile.sums_of(os.urandom(2 * BLOCK))
    assert store.write_cached(DATA_OID, 3 * BLOCK, data, V3, wrong)
    with pytest.raises(Corrupt):
        store.read(DATA_OID, 3 * BLOCK, BLOCK)


def test_sums_given_with_an_unaligned_write_are_not_used(store):
    store.write(DATA_OID, 0, os.urandom(3 * BLOCK), V1, create=True)
    data = os.urandom(BLOCK)
    bogus = objfile.sums_of(os.urandom(BLOCK))
    store.write(DATA_OID, 100, data, V2, sums=bogus)     # straddles two blocks: merged here
    assert store.read(DATA_OID, 100, BLOCK) == data


def test_sums_from_the_wire_must_cover_the_write_exactly():
    sums = objfile.sums_of(os.urandom(2 * BLOCK))
    assert objfile.sums_from_wire(sums.tobytes(), 2 * BLOCK) == sums
    assert objfile.sums_from_wire(None, 2 * BLOCK) is None
    with pytest.raises(ValueError):
        objfile.sums_from_wire(sums.tobytes(), 3 * BLOCK)
    with pytest.raises(ValueError):
        objfile.sums_from_wire(sums.tobytes(), 2 * BLOCK + 1)


def test_large_writes_reach_the_file_in_pieces_of_at_most_write_piece(tmp_path, monkeypatch):
    # the page cache sizes its folios by the write: no pwrite larger than WRITE_PIECE
    sizes = []
    real = os.pwrite

    def recording(fd, data, offset):
        sizes.append(memoryview(data).nbytes)
        return real(fd, data, offset)
    monkeypatch.setattr(objio.os, "pwrite", recording)
    data = os.urandom(objio.WRITE_PIECE * 3 + 4096)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        objio.pwrite_all(fd, data, 100)
        assert max(sizes) == objio.WRITE_PIECE and len(sizes) == 4
        assert os.pread(fd, len(data), 100) == data
    finally:
        os.close(fd)
