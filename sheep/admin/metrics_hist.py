"""Cheap labelled histograms for the hot paths, exposed through prometheus_client.

`StageHistogram.labels(...)` returns a child whose ``observe`` is a list increment; the
counts become prometheus_client metric families only at scrape time (``collect``), so
the exposition (escaping, formatting) is prometheus_client's.  Subclasses add the
counters kept in the same child: `IoHistogram` (requests and bytes, the NBD exports)
and `PeerHistogram` (requests and errors, the peer connections).

Observe from one thread at a time (the event loop; the store's fsyncs, serialized by
its flush lock): the counts are plain integers, never locked.
"""
from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# 25 us .. ~3.3 s, doubling: a LAN store's stages (prometheus_client's defaults start at 5 ms)
BUCKETS = tuple(25e-6 * 2 ** i for i in range(18))
_LE = tuple(floatToGoString(b) for b in BUCKETS) + ("+Inf",)


class _Counts:
    """One label set's observations: a count per bucket (not cumulative) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class IoCounts(_Counts):
    """An NBD command's latency and the bytes it moved (its request length)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def observe(self, seconds: float, nbytes: int = 0) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.bytes += nbytes


class PeerCounts(_Counts):
    """A peer op's round trips (``observe``: a reply came), failed replies (``error``)
    and requests that got no reply at all (``unanswered``: timeout, connection lost)."""

    __slots__ = ("errors", "lost")

    def __init__(self) -> None:
        super().__init__()
        self.errors = self.lost = 0

    def error(self) -> None:
        self.errors += 1

    def unanswered(self) -> None:
        self.lost += 1


class StageHistogram:
    """A histogram with labels whose ``observe`` is a list increment (~0.3 us).

    prometheus_client's own `Histogram` takes a lock for each of its two counter updates;
    under gevent those are greenlet locks written in Python, and a replicated write
    observes five stages (1.4 us each unpatched, several times that patched).  This one
    keeps plain counts and hands them to prometheus_client as a `HistogramMetricFamily`
    at scrape time.  ``const_labels`` (e.g. ``{"node": id}``) go on every sample.
    """

    child = _Counts

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry, const_labels: dict | None = None) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._const = dict(const_labels or {})
        self._children: dict[tuple, _Counts] = {}
        registry.register(self)

    def labels(self, *values) -> _Counts:
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.child()
        return child

    def _names(self) -> list[str]:
        return [*self.labelnames, *self._const]

    def _items(self):
        """(label values, child) for every label set, const labels appended."""
        const = list(self._const.values())
        for key, child in list(self._children.items()):
            yield [*key, *const], child

    def describe(self):
        yield HistogramMetricFamily(self.name, self.documentation, labels=self._names())

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self._names())
        for values, child in self._items():
            total, buckets = 0, []
            for le, n in zip(_LE, child.counts):
                total += n
                buckets.append((le, total))
            family.add_metric(values, buckets, child.sum)
        yield family


class _CountedHistogram(StageHistogram):
    """A histogram followed by counters of the same children: ``_counters()`` makes the
    empty families, ``_values(child)`` one value for each."""

    def _counters(self) -> tuple:
        raise NotImplementedError

    @staticmethod
    def _values(child) -> tuple:
        raise NotImplementedError

    def describe(self):
        yield from super().describe()
        yield from self._counters()

    def collect(self):
        yield from super().collect()
        families = self._counters()
        for labels, child in self._items():
            for family, value in zip(families, self._values(child)):
                family.add_metric(labels, value)
        yield from families


class IoHistogram(_CountedHistogram):
    """The latency histogram plus ``<prefix>_requests_total`` and ``<prefix>_bytes_total``
    counters of the same children (`IoCounts`); a label set appears once observed."""

    child = IoCounts

    def __init__(self, prefix: str, what: str, labelnames: list[str],
                 registry: CollectorRegistry, const_labels: dict | None = None) -> None:
        self.prefix, self.what = prefix, what
        super().__init__(f"{prefix}_request_seconds",
                         f"{what}: request received to its reply queued (seconds)",
                         labelnames, registry, const_labels)

    def _counters(self):
        return (CounterMetricFamily(f"{self.prefix}_requests", f"{self.what}: requests done",
                                    labels=self._names()),
                CounterMetricFamily(f"{self.prefix}_bytes",
                                    f"{self.what}: bytes the requests named (read, written, "
                                    "trimmed or zeroed)", labels=self._names()))

    @staticmethod
    def _values(child: IoCounts) -> tuple:
        return sum(child.counts), child.bytes

    def _items(self):
        """Only the commands used so far: a scrape costs ~0.2 ms per label set, and most
        VDIs never see a trim or a write_zeroes."""
        return ((labels, child) for labels, child in super()._items() if child.sum or
                any(child.counts))


class PeerHistogram(_CountedHistogram):
    """The round-trip histogram plus ``sheep_peer_requests_total`` (replied or not) and
    ``sheep_peer_errors_total`` (an error reply other than "no such object", or no reply)."""

    child = PeerCounts

    def _counters(self):
        return (CounterMetricFamily("sheep_peer_requests", "peer requests sent whose reply came "
                                    "or never will (timeout, connection lost)",
                                    labels=self._names()),
                CounterMetricFamily("sheep_peer_errors", "peer requests that failed: an error "
                                    "reply (not 'no object'), a timeout or a lost connection",
                                    labels=self._names()))

    @staticmethod
    def _values(child: PeerCounts) -> tuple:
        return sum(child.counts) + child.lost, child.errors + child.lost
