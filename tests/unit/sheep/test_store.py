"""sheep.store.ObjectStore on a real filesystem (tmp_path)."""
from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from sheep.errors import InvalidRequest, NoObject, NoSpace
from sheep.store import EPOCH_XATTR, ObjectStore

OBJ = 4 << 20
OID = 1 << 63 | 0x7c2b25 << 32
DATA_OID = 0x7c2b25 << 32 | 3


@pytest.fixture
def store(tmp_path):
    return ObjectStore(tmp_path / "store", OBJ)


def reopen(store: ObjectStore) -> ObjectStore:
    return ObjectStore(store.root, store.max_object_bytes, store.reserve_bytes)


# ------------------------------------------------------------ layout and I/O

def test_layout(store):
    for d in ("obj", "tmp", "stale"):
        assert (store.root / d).is_dir()
    store.write(OID, 0, b"x", epoch=1, create=True)
    assert os.listdir(store.root / "obj") == ["807c2b2500000000"]
    assert os.listdir(store.root / "tmp") == []
    assert os.getxattr(store.root / "obj" / f"{OID:016x}", EPOCH_XATTR) == b"1"


def test_create_write_then_read(store):
    store.write(DATA_OID, 100, b"hello", epoch=2, create=True)
    assert store.read(DATA_OID, 100, 5) == b"hello"
    assert store.read(DATA_OID, 98, 9) == b"\0\0hello\0\0"
    assert store.exists(DATA_OID)
    assert store.epoch_of(DATA_OID) == 2


def test_sparse_reads_zeros_up_to_object_size(store):
    store.write(DATA_OID, 0, b"abc", epoch=1, create=True)
    assert store.read(DATA_OID, OBJ - 10, 10) == bytes(10)
    assert store.read(DATA_OID, 0, 0) == b""
    whole = store.read(DATA_OID, 0, OBJ)
    assert len(whole) == OBJ and whole[:3] == b"abc" and whole[3:] == bytes(OBJ - 3)
    assert os.stat(store.path_of(DATA_OID)).st_size == 3


def test_create_at_offset_is_sparse(store):
    store.write(DATA_OID, OBJ - 4, b"tail", epoch=1, create=True)
    st = os.stat(store.path_of(DATA_OID))
    assert st.st_size == OBJ
    assert st.st_blocks * 512 < OBJ  # a hole, not zeros on disk
    assert store.read(DATA_OID, 0, 8) == bytes(8)
    assert store.read(DATA_OID, OBJ - 4, 4) == b"tail"


def test_partial_overwrite(store):
    store.write(DATA_OID, 0, b"a" * 100, epoch=1, create=True)
    store.write(DATA_OID, 10, b"B" * 5, epoch=1)
    assert store.read(DATA_OID, 0, 20) == b"a" * 10 + b"B" * 5 + b"a" * 5
    store.write(DATA_OID, 95, b"CCCCCCCCCC", epoch=1)  # extends the file
    assert store.read(DATA_OID, 90, 20) == b"a" * 5 + b"C" * 10 + bytes(5)


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview,
                                  lambda b: memoryview(bytearray(b"..." + b + b"..."))[3:-3]])
def test_write_accepts_buffers(store, make):
    store.write(DATA_OID, 7, make(b"payload"), epoch=1, create=True)
    store.write(DATA_OID, 0, make(b"head"), epoch=1, create=True)  # exists: in place
    assert store.read(DATA_OID, 0, 14) == b"head\0\0\0payload"


def test_create_on_existing_writes_in_place(store):
    store.write(DATA_OID, 0, b"first", epoch=1, create=True)
    store.write(DATA_OID, 2, b"X", epoch=1, create=True)
    assert store.read(DATA_OID, 0, 5) == b"fiXst"


def test_large_write_and_read(store):
    data = os.urandom(OBJ)
    store.write(DATA_OID, 0, data, epoch=1, create=True)
    assert store.read(DATA_OID, 0, OBJ) == data
    assert store.checksum(DATA_OID) == hashlib.sha1(data.rstrip(b"\0")).hexdigest()


# ------------------------------------------------------------ errors

def test_missing_object(store):
    with pytest.raises(NoObject):
        store.read(DATA_OID, 0, 1)
    with pytest.raises(NoObject):
        store.write(DATA_OID, 0, b"x", epoch=1)
    with pytest.raises(NoObject):
        store.remove(DATA_OID)
    with pytest.raises(NoObject):
        store.epoch_of(DATA_OID)
    with pytest.raises(NoObject):
        store.set_epoch(DATA_OID, 3)
    with pytest.raises(NoObject):
        store.checksum(DATA_OID)
    with pytest.raises(NoObject):
        store.move_to_stale(DATA_OID, 1)
    assert not store.exists(DATA_OID)
    assert os.listdir(store.root / "obj") == []


@pytest.mark.parametrize("offset,length", [(-1, 1), (0, -1), (OBJ, 1), (OBJ - 1, 2), (0, OBJ + 1)])
def test_read_out_of_range(store, offset, length):
    store.write(DATA_OID, 0, b"x", epoch=1, create=True)
    with pytest.raises(InvalidRequest):
        store.read(DATA_OID, offset, length)


@pytest.mark.parametrize("offset,size", [(-1, 1), (OBJ, 1), (OBJ - 1, 2), (0, OBJ + 1)])
def test_write_out_of_range(store, offset, size):
    with pytest.raises(InvalidRequest):
        store.write(DATA_OID, offset, b"x" * size, epoch=1, create=True)
    assert not store.exists(DATA_OID)


def test_bad_oid(store):
    with pytest.raises(InvalidRequest):
        store.write(-1, 0, b"x", epoch=1, create=True)
    with pytest.raises(InvalidRequest):
        store.read(1 << 64, 0, 1)


def test_write_at_the_end_is_allowed(store):
    store.write(DATA_OID, OBJ - 1, b"z", epoch=1, create=True)
    assert store.read(DATA_OID, OBJ - 1, 1) == b"z"
    assert store.read(DATA_OID, OBJ, 0) == b""


def test_no_space(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = ObjectStore(tmp_path / "s", OBJ, reserve_bytes=free + (1 << 40))
    with pytest.raises(NoSpace) as err:
        store.write(DATA_OID, 0, b"x", epoch=1, create=True)
    assert "reserve" in err.value.message
    assert not store.exists(DATA_OID)


@pytest.mark.parametrize("create", [True, False])
def test_enospc_from_the_filesystem_is_no_space(store, monkeypatch, create):
    store.write(1, 0, b"x", epoch=1, create=True)
    oid = 2 if create else 1

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sheep.store.os.pwrite", full)
    with pytest.raises(NoSpace):
        store.write(oid, 0, b"y", epoch=1, create=create)
    assert os.listdir(store.root / "tmp") == []
    assert store.list_objects() == {1: 1}


def test_space_is_checked_by_time_and_volume(tmp_path, monkeypatch):
    now = [0.0]
    store = ObjectStore(tmp_path / "s", OBJ, reserve_bytes=0, clock=lambda: now[0])
    calls = []
    real = os.statvfs
    monkeypatch.setattr("sheep.store.os.statvfs", lambda p: calls.append(p) or real(p))
    for i in range(10):
        store.write(i, 0, b"x" * 4096, epoch=1, create=True)
    assert len(calls) == 1  # cached between checks
    now[0] = 1.0
    store.write(0, 0, b"y", epoch=1)
    assert len(calls) == 2  # refreshed by time
    for i in range(17):  # 17 x 4 MiB > 64 MiB of writes within the same instant
        store.write(1, 0, bytes(OBJ), epoch=1)
    assert len(calls) == 3  # refreshed by volume


# ------------------------------------------------------------ epochs

def test_epochs_recorded_updated_and_survive_reopen(store):
    store.write(DATA_OID, 0, b"x", epoch=3, create=True)
    store.write(OID, 0, b"y", epoch=4, create=True)
    assert store.list_objects() == {DATA_OID: 3, OID: 4}
    store.write(DATA_OID, 1, b"z", epoch=7)
    assert store.epoch_of(DATA_OID) == 7
    assert os.getxattr(store.path_of(DATA_OID), EPOCH_XATTR) == b"7"
    store.set_epoch(OID, 9)
    again = reopen(store)
    assert again.list_objects() == {DATA_OID: 7, OID: 9}
    assert again.read(DATA_OID, 0, 2) == b"xz"


def test_same_epoch_does_not_rewrite_xattr(store, monkeypatch):
    store.write(DATA_OID, 0, b"x", epoch=3, create=True)
    calls = []
    real = os.setxattr
    monkeypatch.setattr("sheep.store.os.setxattr", lambda *a: calls.append(a) or real(*a))
    store.write(DATA_OID, 0, b"y", epoch=3)
    assert calls == []
    store.write(DATA_OID, 0, b"y", epoch=4)
    assert len(calls) == 1


def test_reopen_cleans_tmp_and_ignores_strangers(store):
    store.write(DATA_OID, 0, b"x", epoch=3, create=True)
    (store.root / "tmp" / "leftover").write_bytes(b"junk")
    (store.root / "obj" / "not-an-oid").write_bytes(b"junk")
    (store.root / "obj" / f"{OID:016x}").write_bytes(b"no xattr")
    again = reopen(store)
    assert os.listdir(store.root / "tmp") == []
    assert again.list_objects() == {DATA_OID: 3, OID: 0}


def test_remove(store):
    store.write(DATA_OID, 0, b"x", epoch=1, create=True)
    store.remove(DATA_OID)
    assert not store.exists(DATA_OID)
    assert store.list_objects() == {}
    with pytest.raises(NoObject):
        store.read(DATA_OID, 0, 1)


# ------------------------------------------------------------ concurrency

def test_concurrent_creates_of_one_oid(store):
    n = 8
    chunk = 4096
    barrier = threading.Barrier(n)
    errors = []

    def creator(i):
        try:
            barrier.wait()
            store.write(DATA_OID, i * chunk, bytes([i + 1]) * chunk, epoch=5, create=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _round in range(20):
        threads = [threading.Thread(target=creator, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert os.listdir(store.root / "obj") == [f"{DATA_OID:016x}"]
        assert os.listdir(store.root / "tmp") == []
        for i in range(n):
            assert store.read(DATA_OID, i * chunk, chunk) == bytes([i + 1]) * chunk
        assert store.list_objects() == {DATA_OID: 5}
        store.remove(DATA_OID)


def test_create_race_lost_writes_into_the_winner(store, monkeypatch):
    real_link = os.link

    def link_after_a_rival(src, dst):
        # another thread creates the object between our check and our link
        with open(dst, "xb") as f:
            f.write(b"rival")
        os.setxattr(dst, EPOCH_XATTR, b"5")
        return real_link(src, dst)

    monkeypatch.setattr("sheep.store.os.link", link_after_a_rival)
    store.write(DATA_OID, 10, b"mine", epoch=5, create=True)
    assert store.read(DATA_OID, 0, 14) == b"rival\0\0\0\0\0mine"
    assert os.listdir(store.root / "tmp") == []
    assert store.epoch_of(DATA_OID) == 5


def test_create_race_winner_vanishes_then_retry(store, monkeypatch):
    real_link = os.link
    calls = []

    def link(src, dst):
        calls.append(dst)
        if len(calls) == 1:  # a rival created it ... and removed it again
            raise FileExistsError(dst)
        return real_link(src, dst)

    monkeypatch.setattr("sheep.store.os.link", link)
    store.write(DATA_OID, 0, b"data", epoch=2, create=True)
    assert len(calls) == 2
    assert store.read(DATA_OID, 0, 4) == b"data"
    assert os.listdir(store.root / "tmp") == []


def test_concurrent_writers_on_many_oids(store):
    def worker(t):
        for i in range(50):
            oid = t << 32 | i
            store.write(oid, 0, b"%d" % oid, epoch=t, create=True)
            store.write(oid, 100, b"more", epoch=t + 1)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    objs = store.list_objects()
    assert len(objs) == 400
    assert all(epoch == (oid >> 32) + 1 for oid, epoch in objs.items())
    assert store.flush() == 400


# ------------------------------------------------------------ flush

def test_flush_syncs_only_dirty_files(store, monkeypatch):
    for i in range(5):
        store.write(i, 0, b"x", epoch=1, create=True)
    assert store.flush() == 5
    assert store.flush() == 0
    store.write(1, 0, b"y", epoch=1)
    store.write(3, 0, b"y", epoch=1)
    store.write(3, 1, b"y", epoch=1)
    synced = []
    real = os.fsync
    monkeypatch.setattr("sheep.store.os.fsync", lambda fd: synced.append(fd) or real(fd))
    assert store.flush() == 2
    assert len(synced) == 2  # no directory sync: nothing was created
    synced.clear()
    store.write(9, 0, b"new", epoch=1, create=True)
    assert store.flush() == 1
    assert len(synced) == 2  # the new file and obj/


def test_flush_skips_removed_objects(store):
    store.write(1, 0, b"x", epoch=1, create=True)
    store.write(2, 0, b"x", epoch=1, create=True)
    store.remove(1)
    store.move_to_stale(2, 1)
    assert store.flush() == 0


def test_no_fsync_on_write(store, monkeypatch):
    monkeypatch.setattr("sheep.store.os.fsync", lambda fd: pytest.fail("fsync outside flush"))
    store.write(1, 0, b"x", epoch=1, create=True)
    store.write(1, 0, b"y", epoch=2)
    store.remove(1)


# ------------------------------------------------------------ checksum and usage

def test_checksum_sparse_equals_zeroed(store):
    store.write(1, 0, b"data", epoch=1, create=True)
    store.write(1, 8192, b"more", epoch=1)                    # hole in between
    store.write(2, 0, b"data" + bytes(8188) + b"more" + bytes(5000), epoch=1, create=True)
    store.write(3, 0, b"data" + bytes(8188) + b"morf", epoch=1, create=True)
    assert store.checksum(1) == store.checksum(2)
    assert store.checksum(1) != store.checksum(3)
    store.write(4, OBJ - 1, b"\0", epoch=1, create=True)      # all zeros
    assert store.checksum(4) == hashlib.sha1(b"").hexdigest()


def test_usage(store):
    empty = store.usage()
    assert empty["objects"] == 0 and empty["used_bytes"] == 0
    assert empty["capacity_bytes"] >= empty["free_bytes"] > 0
    store.write(1, 0, os.urandom(1 << 20), epoch=1, create=True)
    store.write(2, OBJ - 1, b"x", epoch=1, create=True)
    u = store.usage()
    assert u["objects"] == 2
    assert (1 << 20) <= u["used_bytes"] < (1 << 20) + (1 << 18)
    assert reopen(store).usage()["used_bytes"] == u["used_bytes"]
    store.remove(1)
    assert store.usage()["used_bytes"] < 1 << 18


# ------------------------------------------------------------ stale copies

def test_move_to_stale_read_and_purge(store):
    store.write(1, 0, b"old", epoch=2, create=True)
    store.write(2, 0, b"two", epoch=3, create=True)
    store.move_to_stale(1, 4)
    assert store.list_objects() == {2: 3}
    assert not store.exists(1)
    assert store.read_stale(1) == (2, b"old")
    # a newer copy, made stale in a later epoch, wins
    store.write(1, 0, b"newer", epoch=5, create=True)
    store.move_to_stale(1, 6)
    store.move_to_stale(2, 6)
    assert store.read_stale(1) == (5, b"newer")
    assert sorted(os.listdir(store.root / "stale")) == ["4", "6"]
    # stale copies survive a re-open and stay out of the object list
    again = reopen(store)
    assert again.list_objects() == {}
    assert again.purge_stale(4) == 1
    assert sorted(os.listdir(store.root / "stale")) == ["6"]
    assert again.read_stale(1) == (5, b"newer")
    assert again.purge_stale(10) == 1
    assert os.listdir(store.root / "stale") == []
    with pytest.raises(NoObject):
        again.read_stale(1)


def test_read_stale_missing(store):
    with pytest.raises(NoObject):
        store.read_stale(42)


# ------------------------------------------------------------ recovery copies

def test_read_whole_and_replace_install_a_sparse_copy_atomically(store, tmp_path):
    store.write(DATA_OID, 5000, b"old bytes at the end", epoch=1, create=True)
    source = ObjectStore(tmp_path / "source", OBJ)
    source.write(DATA_OID, 3, b"newer", epoch=4, create=True)
    source.write(DATA_OID, 2 * 4096 + 1, b"tail", epoch=4)
    epoch, data = source.read_whole(DATA_OID)
    assert epoch == 4 and len(data) == 2 * 4096 + 5

    store.replace(DATA_OID, data, epoch)

    assert store.epoch_of(DATA_OID) == 4
    assert store.read(DATA_OID, 0, len(data)) == data
    # the old copy's bytes are gone entirely (not overlaid)
    assert store.read(DATA_OID, 5000, 20) == bytes(20)
    assert reopen(store).epoch_of(DATA_OID) == 4
    assert os.listdir(store.root / "tmp") == []
    # the all-zero middle block stayed a hole
    st = os.stat(store.path_of(DATA_OID))
    assert st.st_blocks * 512 < st.st_size


def test_read_whole_of_missing_object(store):
    with pytest.raises(NoObject):
        store.read_whole(DATA_OID)


def test_read_cached_serves_hot_data_and_declines_otherwise(store):
    # nothing cached yet: the caller must use the blocking path
    assert store.read_cached(DATA_OID, 0, 4096) is None
    store.write(DATA_OID, 0, b"h" * 8192, epoch=1, create=True)
    assert store.read(DATA_OID, 0, 4096) == b"h" * 4096     # caches the descriptor
    assert bytes(store.read_cached(DATA_OID, 4096, 4096)) == b"h" * 4096
    # past the file's end (a sparse tail) is left to the blocking path, which pads zeros
    assert store.read_cached(DATA_OID, 8192, 4096) is None
    with pytest.raises(InvalidRequest):
        store.read_cached(DATA_OID, OBJ, 1)


def test_stale_listing_keeps_the_newest_copy_per_object(store):
    store.write(1, 0, b"a", epoch=2, create=True)
    store.move_to_stale(1, 3)
    store.write(1, 0, b"b", epoch=5, create=True)
    store.move_to_stale(1, 6)
    store.write(2, 0, b"c", epoch=4, create=True)
    store.move_to_stale(2, 4)
    assert store.list_stale() == {1: 5, 2: 4}
    assert store.stale_epoch_of(1) == 5
    assert store.stale_epoch_of(3) == -1
    assert store.list_objects() == {}
