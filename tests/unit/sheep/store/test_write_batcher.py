"""sheep.store.write_batcher: writes share trips to the pool, each keeps its own outcome."""
from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from common.errors import NoSpace
from sheep.store.write_batcher import WriteBatcher


class Pool:
    """Runs pool work in a greenlet that waits for `release` (a slow disk), counting trips."""

    def __init__(self):
        self.trips = []
        self.release = Event()
        self.release.set()

    def __call__(self, fn, batch):
        self.trips.append(len(batch))
        self.release.wait()
        return fn(batch)


def test_one_write_is_one_trip():
    written, pool = [], Pool()
    batcher = WriteBatcher(lambda *a: written.append(a), pool)
    batcher.write(1, 0, b"x", 5, False)
    assert written == [(1, 0, b"x", 5, False)] and pool.trips == [1]


def test_writes_arriving_during_a_trip_share_the_next_one():
    written, pool = [], Pool()
    batcher = WriteBatcher(lambda *a: written.append(a[0]), pool, parallel=1)
    pool.release.clear()                   # the first trip stalls...
    first = gevent.spawn(batcher.write, 0, 0, b"", 1, False)
    gevent.sleep(0)
    rest = [gevent.spawn(batcher.write, i, 0, b"", 1, False) for i in range(1, 17)]
    gevent.sleep(0)                        # ...while 16 more writes queue up
    pool.release.set()
    gevent.joinall([first, *rest], raise_error=True)
    assert sorted(written) == list(range(17))
    assert pool.trips == [1, 16]


def test_each_write_gets_its_own_error():
    def write(oid, *_):
        if oid == 2:
            raise NoSpace("full")
    pool = Pool()
    batcher = WriteBatcher(write, pool, parallel=1)
    pool.release.clear()
    jobs = [gevent.spawn(batcher.write, oid, 0, b"", 1, False) for oid in range(4)]
    gevent.sleep(0)
    pool.release.set()
    gevent.joinall(jobs)
    assert [type(j.exception) for j in jobs] == [type(None), type(None), NoSpace, type(None)]
    with pytest.raises(NoSpace):
        batcher.write(2, 0, b"", 1, False)
