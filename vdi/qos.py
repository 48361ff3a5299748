"""Per-VDI QoS: limits as a catalog value, and token buckets over an injected clock (pure).

librbd's semantics (`rbd_qos_*`): six independent buckets, ``iops``, ``read_iops``,
``write_iops``, ``bps``, ``read_bps``, ``write_bps``; 0 or absent = no limit.  A read is
dispatched once ``iops``, ``read_iops``, ``bps`` and ``read_bps`` all grant it, a write
(trim and write-zeroes count as writes) once the total and ``write_*`` buckets do.  An
I/O costs one IOPS token whatever its size and its length in bps tokens.

Theory of operation.  A bucket refills at ``rate`` tokens per second up to its capacity
``max(burst, rate) * burst_seconds`` and starts full, so an idle VDI may burst.  A
request waits until every bucket it needs holds its cost, or is full when the cost is
more than the capacity (a 4 MiB write under a 1 MiB/s limit still passes: it empties the
bucket and leaves it in debt, which the following requests wait out), then takes its
cost from each.  Over any window of T seconds at most ``capacity + rate * T`` tokens
(plus one request's cost) are taken.  A rate change applies at once: the bucket is
refilled up to now at the old rate, then continues at the new one; a waiter that asks
``delay`` again sees the new rate.

`QosLimits.parse` validates what users send (the admin API); `QosLimits.from_entry`
reads a catalog entry leniently (what a gateway enforces must never fail).
"""
from __future__ import annotations

from dataclasses import dataclass, field

READ, WRITE = "read", "write"
LIMITS = ("iops", "read_iops", "write_iops", "bps", "read_bps", "write_bps")
BURSTS = tuple(f"{k}_burst" for k in LIMITS)
BURST_SECONDS = "burst_seconds"
FIELDS = LIMITS + BURSTS + (BURST_SECONDS,)
MAX_VALUE = 1 << 50
MAX_BURST_SECONDS = 3600
EPSILON = 1e-6

# the buckets one request of each kind needs
NEEDS = {READ: (("iops", False), ("read_iops", False), ("bps", True), ("read_bps", True)),
         WRITE: (("iops", False), ("write_iops", False), ("bps", True), ("write_bps", True))}


class QosError(ValueError):
    """Limits a user sent that cannot be applied (the message says why)."""


@dataclass(frozen=True)
class QosLimits:
    """The stored form: only the fields set (non-zero), e.g. ``{"iops": 500}``."""
    values: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, fields: dict, base: dict | None = None) -> "QosLimits":
        """``base`` updated by ``fields`` (0 removes a field); QosError when a value is not
        a non-negative integer, a field is unknown, or a burst is below its limit or has
        no limit (librbd and qemu refuse both)."""
        if not isinstance(fields, dict):
            raise QosError("QoS limits must be an object of field: integer")
        values = dict(cls.from_entry({"qos": base or {}}).values)
        for key, value in fields.items():
            if key not in FIELDS:
                raise QosError(f"unknown QoS field {key!r} (known: {', '.join(FIELDS)})")
            if isinstance(value, bool) or not isinstance(value, int) or not \
                    0 <= value <= (MAX_BURST_SECONDS if key == BURST_SECONDS else MAX_VALUE):
                raise QosError(f"invalid QoS {key} {value!r}: expected an integer >= 0"
                               + (f" and <= {MAX_BURST_SECONDS}" if key == BURST_SECONDS else ""))
            if value:
                values[key] = value
            else:
                values.pop(key, None)
        for limit in LIMITS:
            burst = values.get(f"{limit}_burst")
            if burst is None:
                continue
            if limit not in values:
                raise QosError(f"{limit}_burst needs a {limit} limit")
            if burst < values[limit]:
                raise QosError(f"{limit}_burst {burst} is below the {limit} limit "
                               f"{values[limit]}")
        return cls(values)

    @classmethod
    def from_entry(cls, entry: dict | None) -> "QosLimits":
        """The limits a catalog entry carries (its ``qos`` field); what is not a positive
        integer of a known field is ignored."""
        raw = (entry or {}).get("qos")
        if not isinstance(raw, dict):
            return cls({})
        return cls({k: v for k, v in raw.items() if k in FIELDS and isinstance(v, int)
                    and not isinstance(v, bool) and v > 0})

    @property
    def enabled(self) -> bool:
        return any(k in self.values for k in LIMITS)

    def to_dict(self) -> dict:
        return dict(self.values)

    def bucket_shapes(self) -> dict[str, tuple[float, float]]:
        """``limit -> (rate per second, capacity)`` for every limit set."""
        seconds = max(1, self.values.get(BURST_SECONDS, 1))
        return {k: (float(self.values[k]),
                    float(max(self.values.get(f"{k}_burst", 0), self.values[k]) * seconds))
                for k in LIMITS if k in self.values}


class TokenBucket:
    """``rate`` tokens per second up to ``capacity``; starts full at ``now``."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens = capacity
        self._stamp = now

    def refill(self, now: float) -> None:
        if now > self._stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def delay(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` may be taken (0: now); a cost above the capacity needs
        a full bucket."""
        self.refill(now)
        need = min(cost, self.capacity)
        # a tolerance: float refills may fall short of a whole token by 1e-15
        return 0.0 if self.tokens >= need - EPSILON else (need - self.tokens) / self.rate

    def take(self, cost: float, now: float) -> None:
        self.refill(now)
        self.tokens -= cost

    def reshape(self, rate: float, capacity: float, now: float) -> None:
        self.refill(now)
        self.rate, self.capacity = rate, capacity
        self.tokens = min(self.tokens, capacity)


class Throttle:
    """The buckets of one VDI: ``delay(kind, nbytes, now)`` then ``take(kind, nbytes, now)``.

    ``set_limits`` keeps the level of a bucket whose limit stays (changed or not) and
    starts a new limit's bucket full."""

    def __init__(self, limits: QosLimits, now: float) -> None:
        self.limits = QosLimits()
        self.buckets: dict[str, TokenBucket] = {}
        self.set_limits(limits, now)

    def set_limits(self, limits: QosLimits, now: float) -> None:
        shapes = limits.bucket_shapes()
        buckets = {}
        for key, (rate, capacity) in shapes.items():
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(rate, capacity, now)
            else:
                bucket.reshape(rate, capacity, now)
            buckets[key] = bucket
        self.buckets, self.limits = buckets, limits

    @property
    def enabled(self) -> bool:
        return bool(self.buckets)

    def delay(self, kind: str, nbytes: int, now: float) -> float:
        wait = 0.0
        for key, by_bytes in NEEDS[kind]:
            bucket = self.buckets.get(key)
            if bucket is not None:
                wait = max(wait, bucket.delay(nbytes if by_bytes else 1, now))
        return wait

    def take(self, kind: str, nbytes: int, now: float) -> None:
        for key, by_bytes in NEEDS[kind]:
            bucket = self.buckets.get(key)
            if bucket is not None:
                bucket.take(nbytes if by_bytes else 1, now)
