"""The consistent-hash ring: where each object's replicas live in one epoch.

A :class:`Ring` is a pure, immutable value computed from one epoch's member list.
It never reads a clock or a socket, so every node that knows the same epoch
computes the same placement.

Theory of operation
-------------------
* Every member with weight ``w`` owns ``vnodes_per_weight * w`` virtual nodes.
  Virtual node ``i`` of member ``n`` sits at ``mix64(fnv1a64(f"{n}/{i}"))``.
* An object's position is ``h = fnv1a64(oid as 8 bytes little-endian)``.
* Its replicas are found by walking clockwise (from several probes, see 2.
  below) and taking each member whose zone is not used yet, until ``copies_for(copies)``
  members are found.  The first one is the primary.  A member with zone ``""``
  is its own zone.  Members with weight 0 (gateway-only) own no virtual nodes
  and never hold data.

Two changes from the plain picture in DESIGN.md section 4, both made because a
measurement said the plain picture was wrong:

1. **Final avalanche mix.**  Plain FNV-1a gives a very poor spread here: oids of
   one VDI differ only in their low bytes and virtual-node keys only in their last
   characters, so the hashes cluster (up to 145% off the mean share with 3..20
   nodes).  Every ring position therefore goes through ``mix64`` (murmur3's
   ``fmix64``) after FNV-1a.
2. **Multi-probe walk** (after Appleton & O'Reilly, "Multi-probe consistent
   hashing", 2015).  Even with good hashing, 128 random virtual nodes per member
   leave each member's arc share with a ~9% standard deviation, i.e. up to ~26%
   off the mean with 20 members.  So an object is hashed to ``PROBES`` positions
   ``mix64(h ^ j * GOLDEN)`` (``j = 0..PROBES-1``) and one clockwise walker
   starts at each; the walks are merged by distance from their own probe, and
   members are taken in the order they are first met (skipping used zones).
   Equivalently: members are ranked by ``d(m) = min over probes of the clockwise
   distance from the probe to m's nearest virtual node``.  With 4 probes every
   member of 3..20 equal members stays within ~9% of the mean share as primary
   and ~6% as any replica (100k oids).  With ``PROBES = 1`` this is exactly the
   plain ring walk.

Both changes keep the consistent-hashing guarantee: ``d(m)`` depends only on m's
own virtual nodes, so when a member joins, the others keep their relative rank
and the newcomer is inserted somewhere.  An object's replica set therefore
either stays the same or the new member takes exactly one slot (about
``copies / (N+1)`` of the replica sets change, moving about ``1 / (N+1)`` of the
stored copies, all onto the new member).  A leave is the mirror image.

``replicas()`` runs on every I/O: it costs ``PROBES`` bisections over a
precomputed sorted position array plus a short heap merge (~6 us in CPython).
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import asdict, dataclass, fields
from typing import Iterable

_MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / phi: spreads the probe seeds
MEMO_ENTRIES = 1 << 16     # placements remembered per ring
PROBES = 4                   # part of the placement: every node must agree


@dataclass(frozen=True)
class Member:
    """One sheep as seen by the ring and the membership (``/members/<node_id>``)."""

    node_id: str
    addr: str
    port: int
    admin_port: int
    nbd_port: int
    zone: str = ""
    weight: int = 1
    started: float = 0.0

    @property
    def gateway(self) -> bool:
        """A gateway-only member (``sheep --gateway``): no store, no vnodes, never in an epoch."""
        return self.weight == 0

    @property
    def role(self) -> str:
        return "gateway" if self.gateway else "storage"

    @property
    def zone_key(self) -> str:
        """The zone this member counts as: its own node_id when zone is ``""``."""
        return self.zone if self.zone else "node:" + self.node_id

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Member":
        """Build from a dict; keys that are not fields (e.g. ``store``) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def fnv1a64(data: bytes) -> int:
    """Standard 64-bit FNV-1a of ``data``."""
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & _MASK64
    return h


def mix64(k: int) -> int:
    """murmur3 ``fmix64``: a 64-bit bijection with full avalanche."""
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK64
    k ^= k >> 33
    return k


_PROBE_SEEDS = tuple((j * GOLDEN) & _MASK64 for j in range(PROBES))


class Ring:
    """Placement for one epoch's member list (immutable).

    ``members`` is sorted by node_id; the input order never matters.  Raises
    ``ValueError`` on duplicate node ids or negative weights.
    """

    def __init__(self, members: Iterable[Member], vnodes_per_weight: int = 128):
        self.members: tuple[Member, ...] = tuple(sorted(members, key=lambda m: m.node_id))
        ids = [m.node_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate node_id in ring members")
        if any(m.weight < 0 for m in self.members):
            raise ValueError("negative member weight")
        self.vnodes_per_weight = vnodes_per_weight
        zone_ids: dict[str, int] = {}
        points: list[tuple[int, int]] = []
        for idx, m in enumerate(self.members):
            nr = vnodes_per_weight * m.weight
            if nr <= 0:
                continue
            zone_ids.setdefault(m.zone_key, len(zone_ids))
            for i in range(nr):
                points.append((mix64(fnv1a64(f"{m.node_id}/{i}".encode())), idx))
        points.sort()  # ties broken by member index: still order independent
        self._positions: list[int] = [p for p, _ in points]
        self._owner: list[int] = [i for _, i in points]
        self._zone_of: list[int] = [zone_ids.get(m.zone_key, -1) for m in self.members]
        self._nr_zones = len(zone_ids)
        self._memo: dict[tuple[int, int], tuple[Member, ...]] = {}

    def __repr__(self) -> str:
        return f"Ring({[m.node_id for m in self.members]!r}, vnodes={len(self._positions)})"

    def zones(self) -> int:
        """Number of distinct zones among members that hold data (weight > 0)."""
        return self._nr_zones

    def copies_for(self, copies: int) -> int:
        """How many replicas an object with ``copies`` wanted gets: min(copies, zones)."""
        return max(0, min(copies, self._nr_zones))

    def replicas(self, oid: int, copies: int) -> list[Member]:
        """The members holding ``oid``: ``copies_for(copies)`` of them, distinct
        zones, primary first.  Empty when no member holds data.  Remembered per ring
        (it is a pure function of an immutable value; a busy VDI asks for the same
        objects again and again)."""
        key = (oid, copies)
        hit = self._memo.get(key)
        if hit is not None:
            return list(hit)
        found = self._replicas(oid, copies)
        if len(self._memo) >= MEMO_ENTRIES:
            self._memo.clear()
        self._memo[key] = tuple(found)
        return found

    def _replicas(self, oid: int, copies: int) -> list[Member]:
        want = self.copies_for(copies)
        if want == 0:
            return []
        positions = self._positions
        owner = self._owner
        zone_of = self._zone_of
        nr = len(positions)
        h = FNV_OFFSET
        for byte in oid.to_bytes(8, "little"):
            h = ((h ^ byte) * FNV_PRIME) & _MASK64
        # One clockwise walker per probe, merged by distance from its probe.
        heap = []
        for j, seed in enumerate(_PROBE_SEEDS):
            k = h ^ seed
            # inline mix64: this is the hot path
            k ^= k >> 33
            k = (k * 0xFF51AFD7ED558CCD) & _MASK64
            k ^= k >> 33
            k = (k * 0xC4CEB9FE1A85EC53) & _MASK64
            k ^= k >> 33
            i = bisect.bisect_left(positions, k)
            if i == nr:
                i = 0
            heap.append(((positions[i] - k) & _MASK64, j, i, k))
        heapq.heapify(heap)
        out: list[Member] = []
        used_zones: set[int] = set()
        for _ in range(nr * PROBES):
            _, j, i, k = heap[0]
            m = owner[i]
            z = zone_of[m]
            if z not in used_zones:
                used_zones.add(z)
                out.append(self.members[m])
                if len(out) == want:
                    break
            i += 1
            if i == nr:
                i = 0
            # No walker ever wraps past its probe: one circle of any walker
            # sees every zone, so the loop stops before that.
            heapq.heapreplace(heap, ((positions[i] - k) & _MASK64, j, i, k))
        return out

    def primary(self, oid: int) -> Member | None:
        """The first replica of ``oid`` (None when no member holds data)."""
        r = self.replicas(oid, 1)
        return r[0] if r else None
