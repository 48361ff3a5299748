"""sheep.store.fdcache.FdCache: shared descriptors, leased, closed only when nobody uses them."""
from __future__ import annotations

import os

import pytest

from sheep.store.fdcache import FdCache


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"x%d" % i)
        paths.append(str(p))
    return paths


def test_same_descriptor_until_discarded(files):
    cache = FdCache()
    fd = cache.acquire(1, files[0])
    cache.release(fd)
    again = cache.acquire(1, files[0])
    assert again == fd and os.pread(fd, 2, 0) == b"x0"
    cache.release(again)
    cache.discard(1)
    assert not fd_open(fd)            # nobody leased it: closed at once
    assert cache.lease(1) is None
    cache.close_all()


def test_a_leased_descriptor_stays_open_however_long_its_user_takes(files):
    cache = FdCache()
    fd = cache.acquire(1, files[0])   # a thread stalls with this lease (writeback, minutes)
    cache.discard(1)                  # the object is removed meanwhile
    for i in range(2, 5):             # lots of other activity, nothing time based
        cache.release(cache.acquire(i, files[i]))
        cache.discard(i)
    assert fd_open(fd) and os.pread(fd, 2, 0) == b"x0"   # never recycled under it
    cache.release(fd)
    assert not fd_open(fd)            # closed by the last release
    cache.close_all()


def test_capacity_evicts_oldest_but_never_closes_a_leased_one(files):
    cache = FdCache(capacity=2)
    held = cache.acquire(0, files[0])
    others = [cache.acquire(i, files[i]) for i in (1, 2)]
    for fd in others:
        cache.release(fd)
    assert len(cache) == 2
    assert fd_open(held)              # evicted from the cache, still leased
    cache.release(held)
    assert not fd_open(held)
    assert all(fd_open(fd) for fd in others)
    cache.close_all()
    assert not any(fd_open(fd) for fd in others)


def test_adopt_caches_a_readers_descriptor_only_while_still_valid(files):
    cache = FdCache()
    mine = os.open(files[0], os.O_RDWR)
    assert not cache.adopt(0, mine, lambda: False)    # replaced since it was opened
    assert cache.lease(0) is None
    assert cache.adopt(0, mine, lambda: True)
    assert cache.lease(0) == mine
    cache.release(mine)
    cache.release(mine)
    other = os.open(files[0], os.O_RDWR)
    assert not cache.adopt(0, other, lambda: True)    # one is cached already
    os.close(other)
    cache.close_all()


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        FdCache().acquire(7, str(tmp_path / "nope"))


def test_a_descriptor_adopted_while_a_writer_opened_its_own_is_not_leaked(files, monkeypatch):
    cache = FdCache()
    adopted = os.open(files[0], os.O_RDWR)
    real_open = os.open

    def open_while_a_reader_adopts(path, flags, *mode):
        fd = real_open(path, flags, *mode)
        assert cache.adopt(0, adopted, lambda: True)
        return fd
    monkeypatch.setattr("sheep.store.fdcache.os.open", open_while_a_reader_adopts)
    fd = cache.acquire(0, files[0])
    monkeypatch.undo()
    assert fd == adopted and len(cache) == 1
    cache.release(fd)
    cache.release(adopted)
    cache.close_all()
    assert not fd_open(adopted)
