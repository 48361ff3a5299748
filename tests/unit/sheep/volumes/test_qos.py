"""sheep.volumes.qos: the request-path wait (fake clock, real greenlets, no sleeping) and
the registry that follows a VDI's catalog entry (a fake catalog firing its watches)."""
from types import SimpleNamespace as NS

import gevent
import pytest

from common.errors import AlreadyExists, InvalidRequest
from sheep.volumes.qos import TICK_S, QosRegistry, VdiThrottle, set_limits
from vdi.qos import READ, WRITE, QosLimits


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        gevent.sleep(0)


def throttle(clock, **limits):
    return VdiThrottle("v", QosLimits.parse(limits), clock=clock, sleep=clock.sleep)


def test_within_the_limit_nothing_waits():
    clock = Clock()
    t = throttle(clock, iops=100)
    for _ in range(100):
        t.admit(WRITE, 4096)
    assert clock.sleeps == [] and t.throttled == {READ: 0, WRITE: 0}


def test_over_the_limit_requests_wait_their_turn_and_it_is_counted():
    clock = Clock()
    t = throttle(clock, iops=10)
    done = []

    def request(i):
        t.admit(WRITE, 1)
        done.append((i, clock.now))
    gevent.joinall([gevent.spawn(request, i) for i in range(30)])
    assert [i for i, _ in done] == list(range(30))          # FIFO
    assert done[9][1] == 0.0 and done[-1][1] == pytest.approx(2.0)
    assert max(clock.sleeps) <= TICK_S
    assert t.throttled[WRITE] == 20 and t.throttled_s[WRITE] > 0


def test_a_queued_write_does_not_hold_reads_back():
    clock = Clock()
    t = throttle(clock, write_iops=1)
    t.admit(WRITE, 1)
    writer = gevent.spawn(t.admit, WRITE, 1)         # waits a second for its token
    gevent.sleep(0)
    at = clock.now
    t.admit(READ, 1 << 20)
    assert clock.now == at and not writer.dead
    writer.join()
    assert clock.now == pytest.approx(1.0)


def test_a_raised_limit_applies_to_a_request_already_waiting_within_a_tick():
    clock = Clock()
    t = throttle(clock, iops=1)
    t.admit(WRITE, 1)
    waiting = gevent.spawn(t.admit, WRITE, 1)        # would wait 1 s at 1 IOPS
    gevent.sleep(0)
    t.set_limits(QosLimits.parse({"iops": 1000}))
    waiting.join()
    assert clock.now <= TICK_S + 0.001     # one tick at the old rate, then 1 ms at the new


class FakeCatalog:
    """Entries by vid; ``watch`` one-shot as `coordinator.catalog.Catalog.watch`;
    ``update`` bumps a version and fires the watches (synchronously, for the test)."""

    def __init__(self, *entries):
        self.entries = {e["vid"]: dict(e) for e in entries}
        self.versions = {vid: 0 for vid in self.entries}
        self.watches = {}

    def get(self, vid):
        return dict(self.entries[vid])

    def get_with_version(self, vid):
        return dict(self.entries[vid]), self.versions[vid]

    def list(self):
        return [dict(e) for e in self.entries.values()]

    def watch(self, vid, on_change):
        self.watches.setdefault(vid, []).append(on_change)

    def update(self, vid, entry, expected_version=None):
        if expected_version is not None and expected_version != self.versions[vid]:
            raise AlreadyExists("changed", conflict=True)
        self.entries[vid] = {**entry, "vid": vid}
        self.versions[vid] += 1
        for fire in self.watches.pop(vid, []):
            fire(vid)
        return self.versions[vid]


class Export:
    """What the registry touches of a VdiExport: ``entry`` and ``qos`` (hashable)."""

    def __init__(self, entry):
        self.entry, self.qos = entry, None


def entry(vid=7, name="v", **more):
    return {"vid": vid, "name": name, "snapshot": False, **more}


def test_registry_gives_exports_the_throttle_only_while_limited():
    catalog = FakeCatalog(entry(qos={"iops": 5}))
    registry = QosRegistry(catalog)
    a, b = Export(catalog.get(7)), Export(catalog.get(7))
    registry.attach(a)
    registry.attach(b)
    assert a.qos is b.qos is registry.throttles["v"] and a.qos.limits.to_dict() == {"iops": 5}
    assert len(catalog.watches[7]) == 1                 # one watch per VDI
    # raised while attached: the same buckets, reshaped
    catalog.update(7, entry(qos={"iops": 50}))
    assert a.qos is registry.throttles["v"] and a.qos.limits.to_dict() == {"iops": 50}
    # removed: back to the attribute check only
    catalog.update(7, entry())
    assert a.qos is None and b.qos is None
    catalog.update(7, entry(qos={"bps": 1000}))
    assert a.qos.limits.to_dict() == {"bps": 1000}


def test_an_unlimited_vdi_gets_no_throttle_until_it_has_limits():
    catalog = FakeCatalog(entry())
    registry = QosRegistry(catalog)
    export = Export(catalog.get(7))
    registry.attach(export)
    assert export.qos is None and registry.throttles == {}
    catalog.update(7, entry(qos={"write_iops": 3}))
    assert export.qos.limits.to_dict() == {"write_iops": 3}


def test_registry_follows_the_name_to_its_new_vid_after_a_snapshot():
    catalog = FakeCatalog(entry(qos={"iops": 5}))
    registry = QosRegistry(catalog)
    export = Export(catalog.get(7))
    registry.attach(export)
    catalog.entries[8] = entry(vid=8, qos={"iops": 5})
    catalog.versions[8] = 0
    catalog.update(7, entry(snapshot=True, tag="s1", qos={"iops": 5}))
    assert 8 in catalog.watches
    catalog.update(8, entry(vid=8, qos={"iops": 9}))
    assert export.qos.limits.to_dict() == {"iops": 9}


def test_after_the_last_detach_changes_are_not_followed():
    catalog = FakeCatalog(entry(qos={"iops": 5}))
    registry = QosRegistry(catalog)
    export = Export(catalog.get(7))
    registry.attach(export)
    registry.detach(export)
    catalog.update(7, entry(qos={"iops": 9}))
    assert 7 not in catalog.watches and registry.throttles["v"].limits.to_dict() == {"iops": 5}
    registry.attach(Export(catalog.get(7)))    # attached again: watched again
    assert registry.throttles["v"].limits.to_dict() == {"iops": 9} and 7 in catalog.watches


def test_set_limits_merges_clears_and_refuses_bad_limits():
    catalog = FakeCatalog(entry(qos={"iops": 5}))
    vdis = NS(catalog=catalog, working=lambda name: catalog.get(7))
    assert set_limits(vdis, "v", {"bps": 1 << 20})["qos"] == {"iops": 5, "bps": 1 << 20}
    assert set_limits(vdis, "v", {"read_iops": 3}, clear=True)["qos"] == {"read_iops": 3}
    assert "qos" not in set_limits(vdis, "v", {"read_iops": 0})
    with pytest.raises(InvalidRequest, match="below the iops limit"):
        set_limits(vdis, "v", {"iops": 100, "iops_burst": 10})
    assert "qos" not in catalog.get(7)
