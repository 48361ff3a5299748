"""Recovery housekeeping without ZooKeeper: marker cleanup, pacing of parallel pulls, and
the store reserve under pulls in flight."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from kazoo.exceptions import NoNodeError, NotEmptyError

from common.errors import NoSpace
from coordinator.cluster_state import ClusterStateMixin, prunable_marker_epochs
from coordinator.layout import Layout, epoch_name
from sheep.recovery.stale import StaleJanitor
from sheep.recovery.throttle import Limits, Throttle
from sheep.store.objects import ObjectStore
from sheep.store.objfile import Version

MiB = 1 << 20
V1 = Version(1, 0, 0)


# -- which marker directories may go ------------------------------------------------------

def test_only_epochs_older_than_the_complete_one_are_pruned():
    assert prunable_marker_epochs([1, 2, 3, 4, 5], 4) == [1, 2, 3]
    assert prunable_marker_epochs([4, 5], 4) == []           # the complete one and newer stay
    assert prunable_marker_epochs([], 9) == []
    assert prunable_marker_epochs([7, 2, 5], 6) == [2, 5]


class FakeZk:
    def __init__(self, tree: dict[str, list[str]]):
        self.tree = tree            # epoch dir path -> its children
        self.deleted = []
        self.not_empty = set()      # paths whose delete races with a new marker
        self.gone = set()           # paths another node deleted first

    def get_children(self, path):
        if path.endswith("/recovery"):
            return [p.rsplit("/", 1)[1] for p in self.tree] + ["not-an-epoch"]
        raise NoNodeError

    def delete(self, path, recursive=False):
        assert recursive
        if path in self.gone:
            raise NoNodeError
        if path in self.not_empty:
            raise NotEmptyError
        self.deleted.append(path)


class Markers(ClusterStateMixin):
    def __init__(self, client):
        self.client, self.layout, self.cluster, self.node_id = client, Layout("c"), "c", "n1"


def test_prune_deletes_old_marker_subtrees_and_tolerates_races():
    layout = Layout("c")
    zk = FakeZk({layout.recovery_epoch(e): ["n1", "n2"] for e in (1, 2, 3, 4, 5)})
    zk.gone.add(layout.recovery_epoch(1))          # deleted by another node meanwhile
    zk.not_empty.add(layout.recovery_epoch(2))     # a late marker recreated it: next time
    removed = Markers(zk).prune_recovery_markers(4)
    assert removed == [1, 3]
    assert zk.deleted == [layout.recovery_epoch(3)]
    assert epoch_name(4) not in " ".join(zk.deleted)


class FakeMarkers:
    def __init__(self, done: set[str]):
        self.done = done
        self.marked, self.pruned = [], []

    def mark_recovered(self, epoch):
        self.marked.append(epoch)
        self.done.add("n1")

    def recovered(self, epoch, watch=None):
        return set(self.done)

    def prune_recovery_markers(self, epoch):
        self.pruned.append(epoch)


def test_janitor_prunes_markers_only_after_its_purge(tmp_path):
    store = ObjectStore(tmp_path / "s", MiB)
    store.write(1, 0, b"x", V1, create=True)
    store.move_to_stale(1, 3)
    io = lambda fn, *a: fn(*a)                      # noqa: E731

    # not every member has finished: nothing purged, nothing pruned
    markers = FakeMarkers(set())
    janitor = StaleJanitor(store, markers, io)
    janitor.finished(3, ["n1", "n2"], current=lambda: 4)   # a newer epoch: the waiter ends
    janitor._waiter.join(timeout=5)
    assert markers.marked == [3] and markers.pruned == [] and store.stale.list() == {1: V1}

    # every member has: the stale area goes first, then the older marker directories
    markers = FakeMarkers({"n2"})
    janitor = StaleJanitor(store, markers, io)
    janitor.finished(3, ["n1", "n2"], current=lambda: 3)
    janitor._waiter.join(timeout=5)
    assert store.stale.list() == {} and markers.pruned == [3]


# -- pacing: a pool of parallel pulls cannot burst past objects/s -----------------------------

def test_objects_are_counted_when_a_pull_starts():
    t = [0.0]
    th = Throttle(Limits(objects_per_s=2), clock=lambda: t[0])
    th.start()                                      # the first pull starts at once
    assert th.delay(0) == pytest.approx(0.5)        # the second waits, though none finished
    t[0] = 0.5
    th.start()
    th.moved(MiB)
    th.moved(MiB)
    assert th.delay(0) == pytest.approx(0.5)
    th.set(Limits(objects_per_s=2, bytes_per_s=MiB))
    th.start()
    th.moved(3 * MiB)
    assert th.delay(0) == pytest.approx(3.0)        # bytes bind once they have moved


# -- the reserve with writes in flight ------------------------------------------------------------

class FakeFs:
    """statvfs of a filesystem whose free space the test controls."""

    def __init__(self, free: int):
        self.free = free

    def __call__(self, _path):
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096)


@pytest.fixture
def space(tmp_path, monkeypatch):
    now = [0.0]
    store = ObjectStore(tmp_path / "s", 4 * MiB, reserve_bytes=16 * MiB, clock=lambda: now[0])
    fs = FakeFs(18 * MiB)
    monkeypatch.setattr("sheep.store.space.os.statvfs", fs)
    return store, fs, now


def test_writes_in_flight_count_against_a_fresh_reading(space):
    store, fs, now = space
    store.space.claim(MiB)                         # two pulls in flight, neither landed:
    store.space.claim(MiB)                         # statvfs still says 18 MiB free
    now[0] = 10.0                                   # a fresh reading must not forget them
    with pytest.raises(NoSpace):
        store.space.claim(MiB)
    store.space.release(MiB)
    store.space.release(MiB)
    fs.free -= 2 * MiB                              # they landed: still no room
    now[0] = 20.0
    with pytest.raises(NoSpace):
        store.space.claim(MiB)


def test_the_write_that_refreshed_the_reading_is_counted(space):
    store, fs, now = space
    fs.free = 17 * MiB + MiB // 2
    store.space.claim(MiB)                         # refresh: 17.5 MiB free, fits
    fs.free -= MiB
    store.space.release(MiB)
    with pytest.raises(NoSpace):                    # 16.5 MiB left: a second one does not
        store.space.claim(MiB)


def test_space_is_counted_in_whole_blocks(space):
    store, fs, now = space
    fs.free = 16 * MiB + 4096
    store.space.claim(520)                         # a small inode costs one 4 KiB block
    with pytest.raises(NoSpace):
        store.space.claim(1)


def test_a_small_store_stops_exactly_at_the_reserve(tmp_path, monkeypatch):
    fs = FakeFs(20 * MiB)
    monkeypatch.setattr("sheep.store.space.os.statvfs", fs)
    store = ObjectStore(tmp_path / "s", 4 * MiB, reserve_bytes=16 * MiB)
    written = 0
    with pytest.raises(NoSpace):
        for oid in range(10):
            store.install(oid, os.urandom(MiB), V1)
            fs.free -= MiB + 4096                   # the data and its header block
            written += 1
    assert written == 3 and 16 * MiB <= fs.free < 17 * MiB
