"""Per-stage latency, as the components see it: something with ``labels(...).observe(s)``.

The daemon passes prometheus_client histograms (`sheep.admin.metrics.StageMetrics`); a
component built without them (tests, tools) gets `NULL`, which records nothing.  Observe
only from the event loop: prometheus_client's locks are threading locks, which gevent
patches into greenlet locks.
"""
from __future__ import annotations


class _Null:
    __slots__ = ()

    def labels(self, *args, **kwargs) -> "_Null":
        return self

    def observe(self, seconds: float) -> None:
        pass


NULL = _Null()
