"""The catalog as NBD handshakes see it: a short-lived copy, refreshed by one reader.

Every NBD_OPT_LIST and every export lookup needs the visible catalog entries; read
from ZooKeeper each time, a storm of LIST requests becomes a storm of ZooKeeper
reads (a listing is one ``get_children`` and one ``get`` per VDI).  `CatalogCache`
keeps the last listing for ``ttl_s`` and refreshes it single-flight: however many
handshakes ask at once, one listing is in flight and all of them share it.

A name it does not know may be a VDI created a moment ago: ``find`` then waits for
a listing that started after it was asked (shared by every concurrent miss, and no
sooner than ``min_gap_s`` after the previous one started, so a storm of unknown
names costs at most one listing per ``min_gap_s``) before answering None.

``listings`` counts the listings made (what the tests measure).
"""
from __future__ import annotations

import time

import gevent
from gevent.event import AsyncResult

TTL_S = 1.0
MIN_GAP_S = 0.1


class CatalogCache:
    """``entries()``: the visible entries, at most ``ttl_s`` old; ``find(pick)``: the
    entry ``pick(entries)`` returns, looking again once in a fresh listing when it
    returns None.  ``list_entries()`` is the real listing (ZooKeeper); its errors
    reach every caller waiting for that listing."""

    def __init__(self, list_entries, ttl_s: float = TTL_S, min_gap_s: float = MIN_GAP_S,
                 clock=time.monotonic) -> None:
        self._list_entries = list_entries
        self.ttl_s = ttl_s
        self.min_gap_s = min_gap_s
        self._clock = clock
        self._entries: list[dict] | None = None
        self._listed_at = float("-inf")     # when the listing in _entries started
        self._flight: AsyncResult | None = None
        self._flight_at = float("-inf")     # when the last listing started
        self._epoch = 0                     # bumped by invalidate: older listings are stale
        self._listed_epoch = 0              # the epoch the listing in _entries started in
        self._flight_epoch = 0              # the epoch the last listing started in
        self.listings = 0

    def entries(self) -> list[dict]:
        return self._fresh(self._clock() - self.ttl_s)

    def find(self, pick):
        asked = self._clock()
        found = pick(self._fresh(asked - self.ttl_s))
        if found is None:
            found = pick(self._fresh(asked))
        return found

    def invalidate(self) -> None:
        """Callers from now on use only a listing that starts after this call (e.g. an
        entry read directly was newer): not the cached one, nor one in flight now."""
        self._epoch += 1

    def _fresh(self, since: float) -> list[dict]:
        """A listing that started at ``since`` or later."""
        while True:
            if (self._entries is not None and self._listed_at >= since
                    and self._listed_epoch == self._epoch):
                return self._entries
            flight, flight_at, flight_epoch = self._flight, self._flight_at, self._flight_epoch
            if flight is not None:
                entries = flight.get()
                if flight_at >= since and flight_epoch == self._epoch:
                    return entries
                continue
            wait = self._flight_at + self.min_gap_s - self._clock()
            if wait > 0:
                gevent.sleep(wait)
                continue
            return self._list()

    def _list(self) -> list[dict]:
        flight = self._flight = AsyncResult()
        started = self._flight_at = self._clock()
        epoch = self._flight_epoch = self._epoch
        self.listings += 1
        try:
            entries = self._list_entries()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            self._flight = None
        self._entries, self._listed_at, self._listed_epoch = entries, started, epoch
        flight.set(entries)
        return entries
