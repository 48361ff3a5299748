"""Recovery pieces without network or ZooKeeper: throttle, epoch comparison, lifecycle, a pass."""
from __future__ import annotations

import os

import gevent
import pytest

from common.errors import NotReady, OldEpoch, Shutdown, Unavailable
from coordinator.cluster import same_members
from coordinator.ring import Member, Ring
from sheep.daemon.lifecycle import Lifecycle
from sheep.recovery.executor import Recovery
from sheep.recovery.history import History, placed_on
from sheep.recovery.stale import StaleJanitor, list_all, version_any
from sheep.recovery.throttle import Limits, Throttle
from sheep.replication.epoch import EpochState, EpochView
from sheep.replication.replica import Replica
from sheep.store.objects import ObjectStore
from sheep.store.objfile import DATA_OFFSET, Version


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


class Catalog:
    """What the catalog and the maps say: every oid live unless listed as dead."""

    def __init__(self, copies: int = 2, dead=(), live=()):
        self.copies = copies
        self.dead = set(dead)
        self.live = list(live)          # what live_objects lists (vid 0: the entry below)
        self.entries = {0: {"vid": 0, "copies": copies}}
        self.reads = []

    def __call__(self, with_maps: bool):
        self.reads.append(with_maps)
        return self

    def copies_of(self, oid):
        return self.copies

    def max_copies(self):
        return self.copies

    def live_objects(self):
        return [(oid, self.copies) for oid in self.live if oid not in self.dead]

    def is_live(self, oid):
        return oid not in self.dead


V = {e: Version(e, 1, 1) for e in range(10)}


class FakeCluster:
    """Every member is a real Replica over its own store (and a Recovery registering its
    peer ops); requests are dispatched to `Replica.handle` like the peer server does."""

    def __init__(self, tmp_path, n: int, epoch: int, catalog=None, members=None, history=None):
        self.members = members or [member(i) for i in range(n)]
        self.epochs = EpochState()
        self.epochs.update(EpochView(epoch, tuple(self.members), Ring(self.members)))
        self.catalog = catalog or Catalog()
        self.stores = {m.node_id: ObjectStore(tmp_path / m.node_id, 1 << 20, reserve_bytes=0)
                       for m in self.members}
        self.replicas = {m.node_id: Replica(self.stores[m.node_id], self.epochs,
                                            is_fenced=lambda: False)
                         for m in self.members}
        self.recoveries = {m.node_id: Recovery(
            m.node_id, self.replicas[m.node_id], self.call, self.epochs, self.catalog,
            parallel=1, io_timeout_s=0.5,
            history=history and (lambda view, me=m.node_id: history(me, view)))
            for m in self.members}
        self.calls: list[tuple[str, str]] = []    # (node, op) of every request
        self.fetches = 0
        self.on_fetch = None
        self.refuse: dict[tuple[str, str], Exception] = {}   # (node, op) -> raised

    def call(self, m: Member, header: dict, payload=b""):
        self.calls.append((m.node_id, header["op"]))
        refused = self.refuse.get((m.node_id, header["op"]))
        if refused is not None:
            raise refused
        if header["op"] == "fetch_any":
            self.fetches += 1
            if self.on_fetch:
                self.on_fetch()
        return self.replicas[m.node_id].handle(header, payload)

    def bump(self):
        view = self.epochs.view
        self.epochs.update(EpochView(view.epoch + 1, view.members, view.ring))


def test_pass_pulls_newest_copies_and_a_new_epoch_carries_on(tmp_path):
    c = FakeCluster(tmp_path, 2, epoch=4)
    for oid in range(1, 9):
        c.stores["n1"].write(oid, 0, bytes([oid]) * 100, V[3], create=True)
    c.stores["n0"].write(1, 0, b"old", V[1], create=True)   # an outdated local copy
    rec = c.recoveries["n0"]

    # a newer epoch arrives during the third pull: that fetch is refused (its epoch is
    # over) and the pass stops
    c.on_fetch = lambda: c.fetches == 3 and c.bump()
    p = rec.run_once(c.epochs.view)
    assert p["state"] == "interrupted" and p["total"] == 8 and p["pulled"] == 2
    # the next pass only has what is still missing
    c.on_fetch = None
    p = rec.run_once(c.epochs.view)
    assert p["state"] == "complete" and p["total"] == 6 and p["pulled"] == 6
    assert rec.done_epoch == 5
    for oid in range(1, 9):
        assert c.stores["n0"].read(oid, 0, 100) == bytes([oid]) * 100
        assert c.stores["n0"].version_of(oid) == V[3]


def test_a_pass_without_every_members_list_does_not_finish(tmp_path):
    c = FakeCluster(tmp_path, 2, epoch=4)
    c.stores["n1"].write(1, 0, b"newest", V[3], create=True)
    rec = c.recoveries["n0"]
    # node 1 cannot be asked for its list: its copy might be the only newest one
    c.refuse[("n1", "list_all")] = Unavailable("connection refused")
    with pytest.raises(Unavailable):
        rec.run_once(c.epochs.view)
    assert rec.done_epoch == 0 and not c.stores["n0"].exists(1)
    # once it answers, the pass pulls the newest copy and finishes
    del c.refuse[("n1", "list_all")]
    assert rec.run_once(c.epochs.view)["state"] == "complete"
    assert c.stores["n0"].read(1, 0, 6) == b"newest" and rec.done_epoch == 4


def test_a_pass_never_pulls_a_copy_that_no_live_vdi_references(tmp_path):
    # node 1 was away while object 2 was trimmed (or its VDI deleted): its copy is the
    # only one left, and the newest by far, but nothing references it any more
    c = FakeCluster(tmp_path, 2, epoch=6, catalog=Catalog(dead={2}))
    c.stores["n1"].write(1, 0, b"live", V[3], create=True)
    c.stores["n1"].write(2, 0, b"\xaa" * 100, V[5], create=True)
    p = c.recoveries["n0"].run_once(c.epochs.view)
    assert p["state"] == "complete" and p["pulled"] == 1 and p["unreferenced"] == 1
    assert c.stores["n0"].exists(1) and not c.stores["n0"].exists(2)
    assert True in c.catalog.reads          # the maps were read, after the lists


class FsyncMarkers:
    """Recovery markers that record whether the pulled copies were durable first."""

    def __init__(self, store):
        self.store = store
        self.dirty_at_mark = []

    def mark_recovered(self, epoch):
        self.dirty_at_mark.append(self.store.usage()["dirty_objects"])

    def recovered(self, epoch, watch=None):
        return set()

    def prune_recovery_markers(self, epoch):
        pass


def test_pulled_copies_are_durable_before_the_marker_is_recorded(tmp_path, monkeypatch):
    c = FakeCluster(tmp_path, 2, epoch=4)
    for oid in range(1, 5):
        c.stores["n1"].write(oid, 0, b"x" * 100, V[3], create=True)
    rec = c.recoveries["n0"]
    markers = FsyncMarkers(c.stores["n0"])
    rec.janitor = StaleJanitor(c.stores["n0"], markers, lambda fn, *a: fn(*a))
    synced = []
    real = os.fsync
    monkeypatch.setattr("sheep.store.objects.os.fsync", lambda fd: synced.append(fd) or real(fd))
    assert rec.run_once(c.epochs.view)["pulled"] == 4
    assert markers.dirty_at_mark == [0]        # flushed, then marked
    assert len(synced) == 5                    # four pulled files and obj/


def test_ensure_does_not_call_a_copy_current_while_a_member_is_silent(tmp_path):
    c = FakeCluster(tmp_path, 3, epoch=4)
    c.stores["n0"].write(7, 0, b"old", V[2], create=True)
    c.stores["n2"].write(7, 0, b"newer", V[3], create=True)
    rec = c.recoveries["n0"]
    # node 2 holds the newest copy but does not answer: serving ours would be wrong
    c.refuse[("n2", "version_any")] = Unavailable("no reply")
    with pytest.raises(Unavailable, match="not known current"):
        rec.ensure(7, 4)
    assert rec.puller._verified.get(7) is None and c.stores["n0"].read(7, 0, 3) == b"old"
    del c.refuse[("n2", "version_any")]
    rec.ensure(7, 4)
    assert c.stores["n0"].read(7, 0, 5) == b"newer" and rec.puller._verified[7] == 4


def test_ensure_retries_a_pull_that_failed_instead_of_declaring_the_copy_current(tmp_path):
    c = FakeCluster(tmp_path, 2, epoch=4)
    c.stores["n1"].write(7, 0, b"newer", V[3], create=True)
    rec = c.recoveries["n0"]
    failures = [Unavailable("reset"), Unavailable("reset")]

    def flaky():
        if failures:
            raise failures.pop()
    c.on_fetch = flaky
    rec.ensure(7, 4)                           # two failed pulls, then one that works
    assert c.fetches == 3 and c.stores["n0"].read(7, 0, 5) == b"newer"


def test_ensure_of_an_epoch_that_is_over_fails_with_old_epoch(tmp_path):
    c = FakeCluster(tmp_path, 2, epoch=4)
    with pytest.raises(OldEpoch):
        c.recoveries["n0"].ensure(7, 3)


def test_recovery_is_answered_only_after_older_mutations_have_finished(tmp_path):
    c = FakeCluster(tmp_path, 2, epoch=4)
    r = c.replicas["n1"]
    answered = []
    with r.inflight.mutation(3):               # a write admitted at epoch 3, still running
        waiter = gevent.spawn(lambda: answered.append(r.handle({"op": "list_all",
                                                                "epoch": 4}, b"")))
        gevent.sleep(0.05)
        assert not answered
    waiter.join(timeout=5)
    assert answered
    with pytest.raises(OldEpoch):              # a pass of an older epoch is refused
        r.handle({"op": "list_all", "epoch": 3}, b"")


def test_each_pass_places_objects_by_the_copies_the_catalog_says_now(tmp_path):
    # a vid reused by a VDI with more copies: the placement must follow the catalog of
    # this pass, not a cache filled for the VDI that had the vid before
    c = FakeCluster(tmp_path, 2, epoch=4, catalog=Catalog(copies=1))
    oid = next(o for o in range(1, 50)
               if c.epochs.view.ring.replicas(o, 1)[0].node_id == "n1")
    c.stores["n1"].write(oid, 0, b"x", V[3], create=True)
    rec = c.recoveries["n0"]
    assert rec.run_once(c.epochs.view)["total"] == 0        # one copy: not ours
    c.catalog.copies = 2
    c.bump()
    assert rec.run_once(c.epochs.view)["pulled"] == 1       # two copies now: pulled here
    assert c.stores["n0"].read(oid, 0, 1) == b"x"


def test_the_recovered_epoch_is_persisted_off_the_event_loop(tmp_path):
    import threading
    c = FakeCluster(tmp_path, 2, epoch=4)

    class StateStore:
        threads = []

        def get(self, key, default=None):
            return default

        def set(self, key, value):
            self.threads.append(threading.get_ident())     # fsyncs: never on the loop

    rec = c.recoveries["n0"]
    rec._state_store = StateStore()
    rec.run_once(c.epochs.view)
    assert StateStore.threads and threading.get_ident() not in StateStore.threads


def test_a_copy_moving_to_the_stale_area_is_listed_somewhere(tmp_path):
    # the janitor moves copies aside while a peer asks for the list: a copy caught between
    # the two listings must still be in one of them (it may be the only newest one)
    store = ObjectStore(tmp_path / "s", 4 << 20, reserve_bytes=0)
    oid = 0x4200000007
    store.write(oid, 0, b"only", V[1], create=True)
    real = store.stale.list

    def janitor_moves_it_meanwhile():
        listed = real()
        store.move_to_stale(oid, 2)
        return listed
    store.stale.list = janitor_moves_it_meanwhile
    assert oid in list_all(store)
    store.stale.list = real
    assert version_any(store, oid) == V[1]


def test_an_object_corrupt_on_every_holder_does_not_stop_the_others(tmp_path):
    c = FakeCluster(tmp_path, 2, epoch=4)
    for oid in range(1, 9):
        c.stores["n1"].write(oid, 0, bytes([oid]) * 5000, V[3], create=True)
    with open(c.stores["n1"].path_of(2), "r+b") as f:       # its only copy rots
        f.seek(DATA_OFFSET + 10)
        f.write(b"\xff\xfe")
    rec = c.recoveries["n0"]
    p = rec.run_once(c.epochs.view)
    assert p["state"] == "stopped" and "RECOVERY INCOMPLETE" in p["error"]
    assert "0000000000000002" in p["error"] and rec.done_epoch == 0   # no marker
    assert [o for o in range(1, 9) if c.stores["n0"].exists(o)] == [1, 3, 4, 5, 6, 7, 8]


# -- passes that ask only the members that can hold what they need (sheep.recovery.history)

def test_after_a_loss_a_pass_asks_only_the_holders_of_what_moved_here(tmp_path):
    everyone = [member(i) for i in range(8)]
    survivors = everyone[:7]                         # n7 died after epoch 4
    before = EpochView(4, tuple(everyone), Ring(everyone))
    oids = list(range(1, 200))
    catalog = Catalog(copies=2, live=oids)
    c = FakeCluster(tmp_path, 0, epoch=5, catalog=catalog, members=survivors,
                    history=lambda me, view: History(me, 4, (before,), view))
    for oid in oids:                                 # epoch 4 was complete everywhere
        for m in before.ring.replicas(oid, 2):
            if m.node_id in c.stores:
                c.stores[m.node_id].write(oid, 0, oid.to_bytes(2, "little"), V[3], create=True)
    for m in survivors:
        c.calls.clear()
        p = c.recoveries[m.node_id].run_once(c.epochs.view)
        assert p["state"] == "complete" and p["barriers"] == 7
        moved_here = [o for o in oids if placed_on(c.epochs.view, m.node_id, o, 2)
                      and not placed_on(before, m.node_id, o, 2)]
        assert p["total"] == len(moved_here)
        asked = {n for n, op in c.calls if op == "versions_any"}
        holders = {h.node_id for o in moved_here for h in before.ring.replicas(o, 2)} & \
            {s.node_id for s in survivors}
        assert asked == holders and len(asked) < len(survivors)
        assert not any(op == "list_all" for _n, op in c.calls)
    for oid in oids:                                 # every placed replica has it now
        for m in c.epochs.view.ring.replicas(oid, 2):
            assert c.stores[m.node_id].read(oid, 0, 2) == oid.to_bytes(2, "little")


def test_a_restarted_node_asks_about_everything_placed_on_it(tmp_path):
    everyone = [member(i) for i in range(4)]
    again = [everyone[0].__class__(**{**everyone[0].to_dict(), "started": 99.0}),
             *everyone[1:]]
    before = EpochView(4, tuple(everyone), Ring(everyone))
    oids = list(range(1, 50))
    c = FakeCluster(tmp_path, 0, epoch=5, catalog=Catalog(copies=2, live=oids), members=again,
                    history=lambda me, view: History(me, 4, (before,), view))
    mine = [o for o in oids if placed_on(c.epochs.view, "n0", o, 2)]
    for oid in mine:                 # n0 lost a write while it was down; its peer has it
        peer = next(m for m in c.epochs.view.ring.replicas(oid, 2) if m.node_id != "n0")
        c.stores["n0"].write(oid, 0, b"old", V[2], create=True)
        c.stores[peer.node_id].write(oid, 0, b"new", V[3], create=True)
    p = c.recoveries["n0"].run_once(c.epochs.view)
    assert p["state"] == "complete" and p["total"] == len(mine) == p["pulled"]
    assert all(c.stores["n0"].read(o, 0, 3) == b"new" for o in mine)


def test_ensure_asks_only_holders_and_trusts_a_continuous_copy(tmp_path):
    everyone = [member(i) for i in range(6)]
    before = EpochView(4, tuple(everyone), Ring(everyone))
    survivors = everyone[:5]
    c = FakeCluster(tmp_path, 0, epoch=5, catalog=Catalog(copies=2), members=survivors,
                    history=lambda me, view: History(me, 4, (before,), view))
    now = c.epochs.view
    kept = next(o for o in range(1, 500) if placed_on(now, "n0", o, 2)
                and placed_on(before, "n0", o, 2))
    moved = next(o for o in range(1, 500) if placed_on(now, "n0", o, 2)
                 and not placed_on(before, "n0", o, 2))
    c.stores["n0"].write(kept, 0, b"mine", V[3], create=True)
    holder = next(m for m in before.ring.replicas(moved, 2) if m.node_id in c.stores)
    c.stores[holder.node_id].write(moved, 0, b"theirs", V[3], create=True)
    rec = c.recoveries["n0"]
    rec.ensure(kept, 5)                              # continuous: nobody is asked
    assert not [call for call in c.calls if call[1] == "version_any"]
    rec.ensure(moved, 5)
    asked = {n for n, op in c.calls if op == "version_any"}
    assert asked == {m.node_id for m in before.ring.replicas(moved, 2)} & set(c.stores) - {"n0"}
    assert c.stores["n0"].read(moved, 0, 6) == b"theirs"


def test_a_copy_only_a_returning_member_kept_is_found(tmp_path):
    # every holder of epoch 4 lacked these objects (their only copies were on n3, away
    # at epoch 4, which completed without them); n3 is back at epoch 5, and n4 joins
    everyone = [member(i) for i in range(5)]
    before = EpochView(4, tuple(everyone[:3]), Ring(everyone[:3]))
    now = EpochView(5, tuple(everyone), Ring(everyone))
    oids = range(1, 5000)
    moved = next(o for o in oids if placed_on(now, "n4", o, 1) and placed_on(before, "n1", o, 1))
    kept = next(o for o in oids if placed_on(now, "n0", o, 1) and placed_on(before, "n0", o, 1))
    c = FakeCluster(tmp_path, 0, epoch=5, catalog=Catalog(copies=1, live=[moved, kept]),
                    members=everyone, history=lambda me, view: History(me, 4, (before,), view))
    for oid in (moved, kept):
        c.stores["n3"].write(oid, 0, b"only", V[3], create=True)
    p = c.recoveries["n4"].run_once(now)         # not a holder of epoch 4: n3 is asked
    assert p["state"] == "complete" and p["pulled"] == 1
    assert c.stores["n4"].read(moved, 0, 4) == b"only"
    p = c.recoveries["n0"].run_once(now)         # continuous for it, but has no copy
    assert p["state"] == "complete" and p["pulled"] == 1
    assert c.stores["n0"].read(kept, 0, 4) == b"only"


def test_versions_are_asked_in_bounded_requests(tmp_path, monkeypatch):
    monkeypatch.setattr("sheep.recovery.executor.VERSIONS_PER_REQUEST", 7)
    everyone = [member(i) for i in range(3)]
    before = EpochView(4, tuple(everyone[1:]), Ring(everyone[1:]))   # n0 joins at 5
    oids = list(range(1, 60))
    c = FakeCluster(tmp_path, 0, epoch=5, catalog=Catalog(copies=2, live=oids), members=everyone,
                    history=lambda me, view: History(me, 4, (before,), view))
    for oid in oids:
        c.stores["n1"].write(oid, 0, b"x", V[3], create=True)
    p = c.recoveries["n0"].run_once(c.epochs.view)
    mine = [o for o in oids if placed_on(c.epochs.view, "n0", o, 2)]
    assert p["state"] == "complete" and p["pulled"] == len(mine)
    requests = [n for n, op in c.calls if op == "versions_any"]
    assert requests.count("n1") == -(-len(mine) // 7)
