"""Per-stage latency, as the components see it: something with ``labels(...).observe(s)``.

The daemon passes its histograms (`sheep.admin.metrics.StageMetrics`, exposed through
prometheus_client); a component built without them (tests, tools) gets `NULL`, which
records nothing.  Observe only from the event loop: the counts are plain lists, kept by
one thread.
"""
from __future__ import annotations


class _Null:
    __slots__ = ()

    def labels(self, *args, **kwargs) -> "_Null":
        return self

    def observe(self, seconds: float) -> None:
        pass

    def error(self) -> None:
        pass

    def unanswered(self) -> None:
        pass


NULL = _Null()
