"""sheep.fdcache.FdCache: shared descriptors, retired (not closed) when they leave."""
from __future__ import annotations

import os

import pytest

from sheep.fdcache import FdCache


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


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
    fd = cache.get(1, files[0])
    assert cache.get(1, files[0]) == fd
    assert os.pread(fd, 2, 0) == b"x0"
    cache.discard(1)
    again = cache.get(1, files[0])
    assert again != fd and fd_open(fd)  # a new descriptor; the old one is only retired
    cache.close_all()


def test_retired_descriptors_close_only_after_the_grace_period(files):
    clock = Clock()
    cache = FdCache(grace_s=30, clock=clock)
    old = cache.get(1, files[0])
    cache.discard(1)
    assert fd_open(old)               # still usable by a thread that looked it up
    clock.now = 31
    cache.get(2, files[1])
    cache.discard(2)                  # any retirement sweeps what is old enough
    assert not fd_open(old)
    cache.close_all()


def test_capacity_evicts_oldest_without_closing(files):
    clock = Clock()
    cache = FdCache(capacity=2, clock=clock)
    fds = [cache.get(i, files[i]) for i in range(3)]
    assert len(cache) == 2
    assert all(fd_open(fd) for fd in fds)
    assert cache.get(1, files[1]) == fds[1] and cache.get(2, files[2]) == fds[2]
    cache.close_all()
    assert not any(fd_open(fd) for fd in fds)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        FdCache().get(7, str(tmp_path / "nope"))
