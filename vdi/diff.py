"""What changed between two snapshots, and which snapshot a VDI still equals (pure).

Changed objects
---------------
Snapshots are copy-on-write at object granularity: an entry of an object map names the
vid that owns the data object, and every vid a snapshot's map names is itself a
snapshot's (the snapshot's own vid, frozen, or one its map was copied from).  Snapshot
objects never change.  So between two snapshots ``F`` and ``T`` of a VDI, object ``i``
holds the same bytes when ``F.map[i] == T.map[i]``, and may differ otherwise: then it
is *data* in ``T`` when ``T.map[i]`` is set, and *zero* when ``T`` has a hole there (a
trimmed or never-written object reads as zeros, so the range must become zeros, never
keep ``F``'s bytes).  Indexes past the end of ``F`` compare as holes.  Without ``F``
(a full backup) every index counts: data where ``T`` has an object, zero elsewhere.
Equal content written twice (copy-on-write of the same bytes) shows as changed: the
comparison is by object, not by byte.

States
------
A *state* names the content of a snapshot: `snapshot_state` is a digest of the
snapshot's identity in its cluster (cluster creation time, vid, name, creation and
freeze times), or, for a snapshot made by a restore, the state of the snapshot it was
restored from (kept in its catalog entry as ``backup_state``).  Two snapshots with the
same state hold the same bytes, on one cluster or across clusters.

A working VDI *is at* snapshot ``X`` when ``X`` is its parent and its map equals
``X``'s entry for entry (nothing written since it was cloned from ``X``, or since ``X``
was taken or rolled back to): then it holds exactly ``X``'s bytes.  That is what
`base_problem` checks before an incremental restore: two maps, no data read.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

# NBD status flags of the x-sheepdog:diff:FROM meta context
CHANGED = 1 << 0        # differs from FROM (at object granularity)
ZERO = 1 << 1           # ... and reads as zeros now (a hole: trimmed or never written)


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    zero: bool          # True: becomes zeros; False: data to copy


def _entry(objmap, idx: int) -> int:
    return objmap.get(idx) if objmap is not None and idx < len(objmap) else 0


def index_flags(from_map, to_map, idx: int) -> int:
    """0 (same object), CHANGED, or CHANGED | ZERO for object ``idx``."""
    owner = _entry(to_map, idx)
    if from_map is not None and _entry(from_map, idx) == owner:
        return 0
    return CHANGED if owner else CHANGED | ZERO


def changed_extents(from_map, to_map, size: int, object_size: int) -> list[Extent]:
    """The byte ranges of ``[0, size)`` that differ between the snapshots whose maps are
    given (``from_map`` None: everything), adjacent objects of one kind merged."""
    out: list[Extent] = []
    nr = -(-size // object_size)
    for idx in range(nr):
        flags = index_flags(from_map, to_map, idx)
        if not flags:
            continue
        start = idx * object_size
        length = min(object_size, size - start)
        zero = bool(flags & ZERO)
        last = out[-1] if out else None
        if last is not None and last.zero == zero and last.offset + last.length == start:
            out[-1] = Extent(last.offset, last.length + length, zero)
        else:
            out.append(Extent(start, length, zero))
    return out


def diff_status(from_map, to_map, size: int, object_size: int, offset: int,
                length: int) -> list[tuple[int, int]]:
    """``(length, flags)`` runs covering ``[offset, min(offset + length, size))`` for the
    x-sheepdog:diff context (flags as `index_flags`), equal neighbours merged."""
    end = min(offset + length, size)
    runs: list[tuple[int, int]] = []
    pos = offset
    while pos < end:
        idx = pos // object_size
        n = min((idx + 1) * object_size, end) - pos
        flags = index_flags(from_map, to_map, idx)
        if runs and runs[-1][1] == flags:
            runs[-1] = (runs[-1][0] + n, flags)
        else:
            runs.append((n, flags))
        pos += n
    return runs


# -- states -------------------------------------------------------------------------------------

def snapshot_state(entry: dict, cluster_created) -> str:
    """The state a snapshot's content is known by (see the module docstring)."""
    restored = entry.get("backup_state")
    if isinstance(restored, str) and restored:
        return restored
    ident = {"cluster": cluster_created, "vid": entry["vid"], "name": entry["name"],
             "created": entry.get("created"), "snap_created": entry.get("snap_created")}
    raw = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def describe(entry: dict) -> str:
    """``'vm' snapshot 's1'`` (or its id when it has no tag)."""
    tag = entry.get("tag") or entry.get("snap_id")
    return f"'{entry['name']}' snapshot '{tag}'"


def differing(a: Sequence[int], b: Sequence[int]) -> int:
    """How many entries of two maps differ (a shorter map compares as holes)."""
    n = max(len(a), len(b))
    return sum(1 for i in range(n) if (a[i] if i < len(a) else 0) != (b[i] if i < len(b) else 0))


def base_problem(target: dict, target_map, parent: dict | None, parent_map, base: dict,
                 cluster_created) -> str | None:
    """Why working VDI ``target`` is not at the stream's ``base`` (the header's ``from``),
    or None when it is: its parent is a snapshot whose state is the base's, of the
    base's size, and the target's map still equals that snapshot's."""
    want = f"state {base['state'][:12]}, tag '{base.get('tag')}'"
    name = target["name"]
    if parent is None or not parent.get("snapshot"):
        return (f"VDI '{name}' is not at the stream's base ({want}): it was not cloned "
                "from, snapshotted as or rolled back to any snapshot")
    have = snapshot_state(parent, cluster_created)
    if have != base["state"]:
        return (f"VDI '{name}' is not at the stream's base ({want}): it descends from "
                f"{describe(parent)} (state {have[:12]}), a different one")
    if target["size"] != base["size"] or parent["size"] != base["size"]:
        return (f"VDI '{name}' is {target['size']} bytes, the stream's base is "
                f"{base['size']}")
    changed = 0 if target_map == parent_map else differing(target_map.entries(),
                                                               parent_map.entries())
    if changed:
        return (f"VDI '{name}' was written since {describe(parent)} ({changed} objects "
                "differ): a stream applies only onto an unchanged copy of its base "
                f"(collie vdi rollback -s {parent.get('tag') or parent.get('snap_id')} "
                f"{name}, or a new clone)")
    return None
