"""The NBD handshakes' catalog cache: one listing shared by concurrent callers, fresh
within its TTL, one more listing for an unknown name, errors reaching every waiter."""
import gevent
import pytest
from gevent.event import Event

from common.errors import Unavailable
from sheep.volumes.catalog_cache import CatalogCache


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Catalog:
    """A listing that can be held open (to make callers overlap) and counted."""

    def __init__(self, entries):
        self.entries = list(entries)
        self.calls = 0
        self.gate = None
        self.error = None

    def __call__(self):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait()
        if self.error is not None:
            raise self.error
        return list(self.entries)


def named(name):
    return lambda entries: next((e for e in entries if e["name"] == name), None)


def test_listings_are_reused_within_the_ttl():
    clock, catalog = Clock(), Catalog([{"name": "a"}])
    cache = CatalogCache(catalog, ttl_s=1.0, clock=clock)
    for _ in range(100):
        assert cache.entries() == [{"name": "a"}]
    assert catalog.calls == cache.listings == 1
    clock.now += 1.5
    catalog.entries.append({"name": "b"})
    assert len(cache.entries()) == 2 and catalog.calls == 2


def test_concurrent_callers_share_one_listing():
    catalog = Catalog([{"name": "a"}])
    catalog.gate = Event()
    cache = CatalogCache(catalog)
    callers = [gevent.spawn(cache.entries) for _ in range(50)]
    gevent.sleep(0.01)
    catalog.gate.set()
    gevent.joinall(callers, raise_error=True)
    assert all(g.value == [{"name": "a"}] for g in callers)
    assert catalog.calls == 1


def test_an_unknown_name_is_looked_up_once_more_in_a_fresh_listing():
    clock, catalog = Clock(), Catalog([{"name": "a"}])
    cache = CatalogCache(catalog, ttl_s=60.0, min_gap_s=0.0, clock=clock)
    cache.entries()
    catalog.entries.append({"name": "new"})             # created a moment ago
    clock.now += 0.01
    assert cache.find(named("new")) == {"name": "new"}
    assert catalog.calls == 2
    assert cache.find(named("a")) == {"name": "a"} and catalog.calls == 2   # cached hit
    clock.now += 0.01
    assert cache.find(named("nope")) is None and catalog.calls == 3


def test_a_storm_of_unknown_names_lists_at_most_once_per_gap():
    catalog = Catalog([{"name": "a"}])
    cache = CatalogCache(catalog, ttl_s=60.0, min_gap_s=0.05)
    cache.entries()
    callers = [gevent.spawn(cache.find, named(f"missing{i}")) for i in range(200)]
    gevent.joinall(callers, raise_error=True, timeout=5)
    assert all(g.value is None for g in callers)
    assert catalog.calls <= 3                           # the first, then one shared miss


def test_a_failed_listing_reaches_every_waiter_and_the_next_call_tries_again():
    catalog = Catalog([{"name": "a"}])
    catalog.gate, catalog.error = Event(), Unavailable("zk down")
    cache = CatalogCache(catalog, min_gap_s=0.0)
    callers = [gevent.spawn(cache.entries) for _ in range(5)]
    gevent.sleep(0.01)
    catalog.gate.set()
    gevent.joinall(callers)
    assert all(isinstance(g.exception, Unavailable) for g in callers)
    assert catalog.calls == 1
    catalog.error = None
    assert cache.entries() == [{"name": "a"}]


def test_invalidate_makes_the_next_caller_list_again():
    clock, catalog = Clock(), Catalog([{"name": "a"}])
    cache = CatalogCache(catalog, min_gap_s=0.0, clock=clock)
    cache.entries()
    cache.invalidate()
    cache.entries()
    assert catalog.calls == 2


@pytest.mark.parametrize("gap", [0.0, 0.02])
def test_callers_wait_for_the_gap_rather_than_list_back_to_back(gap):
    catalog = Catalog([])
    cache = CatalogCache(catalog, ttl_s=0.0, min_gap_s=gap)
    cache.entries()
    started = gevent.get_hub().loop.now()
    cache.find(named("x"))
    assert catalog.calls == 2
    assert gevent.get_hub().loop.now() - started >= gap * 0.9


def test_invalidate_rejects_a_listing_already_in_flight():
    catalog = Catalog([{"name": "old"}])
    catalog.gate = Event()
    cache = CatalogCache(catalog, min_gap_s=0.0)
    first = gevent.spawn(cache.entries)             # a listing held open
    gevent.sleep(0.01)
    cache.invalidate()
    after = gevent.spawn(cache.entries)             # asked after the invalidate
    gevent.sleep(0.01)
    catalog.gate.set()
    gevent.joinall([first, after], raise_error=True, timeout=5)
    assert first.value == after.value == [{"name": "old"}]
    assert catalog.calls == 2                       # ``after`` did not share the first
