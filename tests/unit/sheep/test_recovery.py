"""Recovery pieces without network or ZooKeeper: throttle, epoch comparison, lifecycle, a pass."""
from __future__ import annotations

import msgpack
import pytest

from coordinator.cluster import same_members
from coordinator.ring import Member
from sheep.epoch import EpochState, EpochView
from sheep.errors import NotReady, Shutdown, Unavailable
from sheep.lifecycle import Lifecycle
from sheep.recovery import Recovery
from sheep.replica import Replica
from sheep.stale import fetch_any, list_all
from sheep.store import ObjectStore
from sheep.throttle import Limits, Throttle


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_throttle_paces_objects_and_bytes():
    clock = Clock()
    t = Throttle(Limits(objects_per_s=2), clock=clock)
    assert t.delay(0) == 0
    t.record(10)
    t.record(10)
    assert t.delay(0) == pytest.approx(1.0)      # 2 objects at 2/s: the next one at t+1
    clock.t += 1.0
    assert t.delay(0) == 0
    t.set(Limits(bytes_per_s=1000))               # a run-time change restarts the window
    t.record(4000)
    assert t.delay(0) == pytest.approx(4.0)
    t.set(Limits())
    assert t.delay(0) == 0 and Limits().unlimited


def test_same_members_ignores_started_only_for_the_recorded_restart():
    a = {"node_id": "a", "addr": "x", "started": 1.0}
    b = {"node_id": "b", "addr": "y", "started": 2.0}
    epoch = {"epoch": 5, "members": [a, b]}
    restarted = [{**a, "started": 10.0}, {**b, "started": 11.0}]
    assert same_members(epoch, [a, b])
    assert not same_members(epoch, restarted)
    assert same_members(epoch, restarted, {"epoch": 5, "started": {"a": 10.0, "b": 11.0}})
    assert not same_members(epoch, restarted, {"epoch": 4, "started": {"a": 10.0, "b": 11.0}})
    assert not same_members(epoch, [{**a, "started": 12.0}, b],
                            {"epoch": 5, "started": {"a": 10.0, "b": 2.0}})
    assert not same_members(epoch, [a], {"epoch": 5, "started": {"a": 1.0}})


def test_lifecycle_refuses_writes_and_stops_on_shutdown():
    stopped = []
    lc = Lifecycle("n1", started=50.0, stop=lambda: stopped.append(True))
    lc.on_cluster({"state": "running"})
    assert lc.write_refusal() is None
    lc.on_cluster({"state": "waiting", "waiting_for": ["n3"]})
    assert isinstance(lc.write_refusal(), NotReady) and "n3" in lc.write_refusal().message
    lc.on_cluster({"state": "shutdown", "shutdown_at": 40.0})   # before our start: stay up
    assert isinstance(lc.write_refusal(), Shutdown) and not stopped
    lc.on_cluster({"state": "shutdown", "shutdown_at": 60.0})
    assert stopped == [True]


def member(i: int) -> Member:
    return Member(node_id=f"n{i}", addr="127.0.0.1", port=7000 + i, admin_port=0, nbd_port=0)


class FakeCluster:
    """The other members' stores, answering list_all / fetch_any like peers would."""

    def __init__(self, stores: dict[str, ObjectStore]):
        self.stores = stores
        self.fetches = 0
        self.on_fetch = None

    def call(self, m: Member, header: dict):
        store = self.stores[m.node_id]
        if header["op"] == "list_all":
            return {}, msgpack.packb(list(list_all(store).items()))
        if header["op"] == "fetch_any":
            self.fetches += 1
            if self.on_fetch:
                self.on_fetch()
            epoch, data = fetch_any(store, header["oid"])
            return {"object_epoch": epoch}, data
        raise AssertionError(header)


def test_pass_pulls_newest_copies_and_a_new_epoch_carries_on(tmp_path):
    me, other = member(0), member(1)
    stores = {m.node_id: ObjectStore(tmp_path / m.node_id, 1 << 20, reserve_bytes=0)
              for m in (me, other)}
    for oid in range(1, 9):
        stores["n1"].write(oid, 0, bytes([oid]) * 100, epoch=3, create=True)
    stores["n0"].write(1, 0, b"old", epoch=1, create=True)   # an outdated local copy
    epochs = EpochState()
    epochs.update(EpochView(4, (me, other), __import__("coordinator.ring").ring.Ring([me, other])))
    replica = Replica(stores["n0"], epochs, is_fenced=lambda: False)
    fake = FakeCluster(stores)
    rec = Recovery("n0", replica, fake.call, epochs, copies_of=lambda oid: 2, parallel=1)

    # a newer epoch arrives after three pulls: the pass stops
    def bump():
        if fake.fetches == 3:
            view = epochs.view
            epochs.update(EpochView(5, view.members, view.ring))
    fake.on_fetch = bump
    p = rec.run_once(epochs.view)
    assert p["state"] == "interrupted" and p["total"] == 8 and p["pulled"] == 3
    # the next pass only has what is still missing
    fake.on_fetch = None
    p = rec.run_once(epochs.view)
    assert p["state"] == "complete" and p["total"] == 5 and p["pulled"] == 5
    assert rec.done_epoch == 5
    for oid in range(1, 9):
        assert stores["n0"].read(oid, 0, 100) == bytes([oid]) * 100
        assert stores["n0"].epoch_of(oid) == 3


def test_a_pass_without_every_members_list_does_not_finish(tmp_path):
    me, other = member(0), member(1)
    stores = {m.node_id: ObjectStore(tmp_path / m.node_id, 1 << 20, reserve_bytes=0)
              for m in (me, other)}
    stores["n1"].write(1, 0, b"newest", epoch=3, create=True)
    epochs = EpochState()
    epochs.update(EpochView(4, (me, other), __import__("coordinator.ring").ring.Ring([me, other])))
    replica = Replica(stores["n0"], epochs, is_fenced=lambda: False)
    fake = FakeCluster(stores)
    rec = Recovery("n0", replica, fake.call, epochs, copies_of=lambda oid: 2, parallel=1)

    # node 1 cannot be asked for its list: its copy might be the only newest one
    reachable = fake.call

    def call(m, header):
        if m.node_id == "n1" and header["op"] == "list_all":
            raise Unavailable("connection refused")
        return reachable(m, header)
    rec._call = call
    with pytest.raises(Unavailable):
        rec.run_once(epochs.view)
    assert rec.done_epoch == 0 and not stores["n0"].exists(1)

    # once it answers, the pass pulls the newest copy and finishes
    rec._call = reachable
    assert rec.run_once(epochs.view)["state"] == "complete"
    assert stores["n0"].read(1, 0, 6) == b"newest" and rec.done_epoch == 4
