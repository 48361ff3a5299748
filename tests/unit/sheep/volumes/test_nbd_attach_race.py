"""Attaching an export never uses a stale catalog entry: the entry is confirmed by a
ZooKeeper read of its vid that started after it was picked, and a listing already in
flight when a mismatch is seen (it may predate the change) is never trusted."""
import json
from types import SimpleNamespace

import gevent
import pytest
from gevent.event import Event

from common.errors import NotFound, Unavailable
from sheep.volumes.nbd_exports import ATTACH_TRIES, VdiExportProvider
from sheep.volumes.service import VdiService

FORMAT = {"copies": 1, "block_size_shift": 22}


class FakeCatalog:
    """Behaves like `coordinator.catalog.Catalog`: ``list`` and ``get`` return decoded
    copies with ``vid`` (ascending by vid), ``get`` raises NotFound for a missing vid.
    A listing reads the znodes when it starts and may be held open (``gate``) before it
    returns, as a slow ZooKeeper listing that started before a change does."""

    def __init__(self):
        self._znodes: dict[int, bytes] = {}
        self.gate: Event | None = None
        self.listing_started = Event()
        self.gets = 0
        self.on_get = None          # called before each get returns (to change the catalog)

    def put(self, vid, entry):
        self._znodes[vid] = json.dumps({**entry, "vid": vid}).encode()

    def list(self):
        read = {vid: json.loads(data) for vid, data in sorted(self._znodes.items())}
        self.listing_started.set()
        if self.gate is not None:
            self.gate.wait()
        return list(read.values())

    def get(self, vid):
        self.gets += 1
        if self.on_get is not None:
            self.on_get(vid)
        if vid not in self._znodes:
            raise NotFound(f"no VDI with vid {vid:06x}", vid=vid)
        return json.loads(self._znodes[vid])

    def watch(self, vid, on_change):
        pass


class Vdis(VdiService):
    def open_volume(self, entry, readonly=False, gateway=None):
        return SimpleNamespace(vid=entry["vid"], size=entry["size"],
                               readonly=readonly or bool(entry.get("snapshot")), follow=False)


def working(name="vol", **extra):
    return {"name": name, "size": 1 << 22, "copies": 1, "block_size_shift": 22,
            "created": 1.0, **extra}


@pytest.fixture
def setup():
    catalog = FakeCatalog()
    catalog.put(0xA, working())
    gateway = SimpleNamespace(guard=SimpleNamespace(check=lambda: None))
    provider = VdiExportProvider(Vdis(catalog, gateway, lambda: FORMAT), None, "node")
    provider.catalog_cache.min_gap_s = 0.0
    return catalog, provider


def snapshot_vol(catalog):
    """A snapshot: the old working vid A becomes a snapshot, B the new working vid."""
    old = catalog.get(0xA)
    del old["vid"]
    catalog.put(0xA, {**old, "snapshot": True, "snap_id": 1, "tag": "t1"})
    catalog.put(0xB, working(created=2.0))


def test_a_listing_in_flight_from_before_a_snapshot_is_not_attached(setup):
    catalog, provider = setup
    assert provider.list_exports() == ["vol"]           # the cache holds A as working
    # a handshake for an unknown name starts a fresh listing; it reads the catalog
    # before the snapshot and is slow to return
    catalog.gate, catalog.listing_started = Event(), Event()
    miss = gevent.spawn(provider.describe, "other")
    catalog.listing_started.wait(5)
    snapshot_vol(catalog)
    attach = gevent.spawn(provider.open_export, "vol", "client")
    gevent.sleep(0.01)                                  # attach waits for that listing
    catalog.gate.set()
    gevent.joinall([miss, attach], timeout=5)
    assert isinstance(miss.exception, NotFound)
    export = attach.get(timeout=0)
    assert export.entry["vid"] == 0xB and not export.entry.get("snapshot")
    assert export.entry == catalog.get(0xB)             # the confirmed entry
    assert not export.readonly and export.working


def test_a_snapshot_between_lookup_and_read_attaches_the_new_working_vid(setup):
    catalog, provider = setup
    provider.list_exports()

    def snapshot_once(vid):
        catalog.on_get = None
        snapshot_vol(catalog)
    catalog.on_get = snapshot_once
    export = provider.open_export("vol", "client")
    assert export.entry["vid"] == 0xB and catalog.gets >= 2


def test_a_snapshot_export_is_attached_read_only_from_the_confirmed_entry(setup):
    catalog, provider = setup
    snapshot_vol(catalog)
    export = provider.open_export("vol@t1", "client")
    assert export.entry == catalog.get(0xA) and export.readonly and not export.working


def test_an_entry_that_keeps_changing_is_refused_after_bounded_tries(setup):
    catalog, provider = setup
    provider.list_exports()
    state = {"n": 0}

    def bump(vid):                                      # every read sees a newer entry
        state["n"] += 1
        catalog.put(0xA, working(created=1.0, generation=state["n"]))
    catalog.on_get = bump
    with pytest.raises(Unavailable, match="kept changing"):
        provider.open_export("vol", "client")
    assert catalog.gets == ATTACH_TRIES


def test_an_unchanged_entry_costs_one_read(setup):
    catalog, provider = setup
    provider.list_exports()
    provider.open_export("vol", "client")
    assert catalog.gets == 1 and provider.catalog_cache.listings == 1


def test_a_deleted_entry_is_not_found(setup):
    catalog, provider = setup
    provider.list_exports()
    catalog._znodes.clear()
    with pytest.raises(NotFound):
        provider.open_export("vol", "client")
