"""Catalog rules of the volume model: which entries are visible, snapshot ids, reclaim.

Pure functions over catalog entries (dicts as stored under ``/vdis/<vid>``) and
object maps; no I/O.

Entry states
~~~~~~~~~~~~
* live working VDI: ``snapshot`` false, not ``deleted``, not ``hidden``;
* snapshot: ``snapshot`` true (read-only, never changes again);
* hidden: being created (snapshot, clone, rollback).  A hidden entry with
  ``replaces = V`` becomes the name's working VDI as soon as entry ``V`` is no
  longer a live working VDI (it was frozen as a snapshot or marked deleted):
  the catalog has no multi-znode transaction, so this rule makes the switch
  atomic for readers.  A hidden entry without ``replaces`` stays invisible until
  it is updated;
* deleted: no longer live, kept only while some live map still points at its
  objects (so its vid is not reused while they exist).

Reclaim
~~~~~~~
Maps only ever point at the entry's own vid or at vids whose maps they were
copied from, and a map entry only changes from a foreign vid to the own vid or
to 0.  So data object ``(vid, idx)`` is needed exactly while some non-deleted
entry (hidden ones included) has ``map[idx] == vid``; a deleted entry's objects
that no live map points at can be removed, and once none is left the entry
itself (inode and catalog znode) goes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from vdi import objects


def is_live(entry: dict) -> bool:
    """Not deleted (hidden entries being created are live: their maps hold references)."""
    return not entry.get("deleted")


def _is_working(entry: dict) -> bool:
    return is_live(entry) and not entry.get("snapshot") and not entry.get("hidden")


def visible(entries: Iterable[dict]) -> list[dict]:
    """The entries users see: live ones, hidden ones only once what they replace is gone."""
    entries = list(entries)
    by_vid = {e["vid"]: e for e in entries}
    out = []
    for e in entries:
        if not is_live(e):
            continue
        if e.get("hidden"):
            old = by_vid.get(e.get("replaces") or 0)
            if not e.get("replaces") or (old is not None and _is_working(old)):
                continue
        out.append(e)
    return out


def working_of(entries: Iterable[dict], name: str) -> dict | None:
    """The working VDI of ``name`` among ``visible`` entries, or None."""
    found = [e for e in visible(entries) if e["name"] == name and not e.get("snapshot")]
    if not found:
        return None
    # a replacement that became visible wins over anything still marked working
    return max(found, key=lambda e: (bool(e.get("hidden")), e.get("created", 0)))


def find_snapshot(entries: Iterable[dict], name: str, tag: str) -> dict | None:
    """Snapshot of ``name`` by exact tag first, else by snapshot id (``"3"``)."""
    snaps = [e for e in visible(entries) if e["name"] == name and e.get("snapshot")]
    for e in snaps:
        if e.get("tag") and e.get("tag") == tag:
            return e
    for e in snaps:
        if str(e.get("snap_id")) == str(tag):
            return e
    return None


def next_snap_id(entries: Iterable[dict], name: str) -> int:
    """1 + the highest snapshot id ever given under ``name`` that the catalog still knows."""
    ids = [int(e.get("snap_id") or 0) for e in entries
           if e["name"] == name and e.get("snapshot")]
    return max(ids, default=0) + 1


def used_vids(entries: Iterable[dict]) -> set[int]:
    """Vids that must not be given to a new entry (every catalog entry, deleted ones too)."""
    return {e["vid"] for e in entries}


def usage(vid: int, owners: Sequence[int], object_size: int) -> tuple[int, int]:
    """(used, shared) bytes of one map: objects it owns, objects it shares with others."""
    used = shared = 0
    for owner in owners:
        if owner == vid:
            used += 1
        elif owner:
            shared += 1
    return used * object_size, shared * object_size


@dataclass
class ReclaimPlan:
    """What one reclaim pass removes."""
    free: dict[int, list[int]] = field(default_factory=dict)   # deleted vid -> indexes to remove
    drop: list[int] = field(default_factory=list)              # deleted vids to forget entirely

    def __bool__(self) -> bool:
        return bool(self.free or self.drop)


def plan_reclaim(entries: Iterable[dict], maps: Mapping[int, Sequence[int]]) -> ReclaimPlan:
    """Objects of deleted entries that no live map references, and deleted entries left empty.

    ``maps[vid]`` is the object map (owner per index) of every entry; a live entry
    without a map is a caller error (KeyError): the caller must not guess.
    """
    entries = list(entries)
    referenced: dict[int, set[int]] = {}
    for e in entries:
        if not is_live(e):
            continue
        for idx, owner in enumerate(maps[e["vid"]]):
            if owner:
                referenced.setdefault(owner, set()).add(idx)
    plan = ReclaimPlan()
    for e in entries:
        if is_live(e):
            continue
        vid = e["vid"]
        refs = referenced.get(vid, set())
        owned = [idx for idx, owner in enumerate(maps.get(vid, ())) if owner == vid]
        free = [idx for idx in owned if idx not in refs]
        if free:
            plan.free[vid] = free
        if not refs:
            plan.drop.append(vid)
    return plan


def runs(indexes: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indexes as (first, count) runs of consecutive values."""
    out: list[tuple[int, int]] = []
    for idx in sorted(indexes):
        if out and out[-1][0] + out[-1][1] == idx:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((idx, 1))
    return out


class Liveness:
    """Which objects some VDI still needs, from one consistent catalog listing and the
    maps of its live entries (the authority recovery follows: a copy nobody references
    is never pulled or re-replicated, however old or new its stamp).

    * an inode object is live while its vid has a catalog entry (deleted ones too: reclaim
      still reads their maps);
    * data object ``(vid, idx)`` is live while some live entry's ``map[idx] == vid``.

    ``maps[vid]`` needs ``get(idx)`` and ``len()`` (an `ObjectMap`) for every live entry.
    ``copies_of(oid)`` is the copies of the oid's VDI, ``default_copies`` for a vid the
    catalog does not know.
    """

    def __init__(self, entries: Iterable[dict], maps: Mapping[int, Sequence[int]] | None,
                 default_copies: int = 1) -> None:
        self.entries = {e["vid"]: e for e in entries}
        self._maps = maps
        self._live = [e["vid"] for e in self.entries.values() if is_live(e)]
        self.default_copies = default_copies

    def copies_of(self, oid: int) -> int:
        entry = self.entries.get(objects.oid_vid(oid))
        return int(entry["copies"]) if entry is not None else self.default_copies

    def max_copies(self) -> int:
        """The most copies any VDI has (the default's for an empty catalog)."""
        return max([self.default_copies, *(int(e["copies"]) for e in self.entries.values())])

    def live_objects(self):
        """Every live object as (oid, copies of its VDI): the inode of each catalog entry,
        and each data object some live entry's map points at (once each)."""
        seen: set[int] = set()
        for vid, entry in self.entries.items():
            yield objects.inode_oid(vid), int(entry["copies"])
        if self._maps is None:
            raise ValueError("Liveness built without maps cannot list data objects")
        for live in self._live:
            for idx, owner in self._maps[live].allocated_items():
                oid = objects.data_oid(owner, idx)
                if oid not in seen:
                    seen.add(oid)
                    yield oid, self.copies_of(oid)

    def is_live(self, oid: int) -> bool:
        vid = objects.oid_vid(oid)
        if objects.is_inode(oid):
            return vid in self.entries
        if self._maps is None:
            raise ValueError("Liveness built without maps cannot judge data objects")
        idx = objects.oid_index(oid)
        for live in self._live:
            objmap = self._maps[live]
            if idx < len(objmap) and objmap.get(idx) == vid:
                return True
        return False
