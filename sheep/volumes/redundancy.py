"""Changing a VDI's redundancy (``collie vdi alter-copy NAME -c N``).

Theory of operation
-------------------
The copies of a VDI are a field of its catalog entry; every path that places an object
(gateway I/O, recovery, check, reclaim) reads it from there, by the object's owning vid.
A change therefore reaches every node through the catalog, and its replicas are made or
retired by a recovery pass: after updating the entries the service asks the leader for a
new epoch with the same members (``Coordinator.bump_placement``).  That pass reads the
catalog after its barrier, so it places with the new copies: a raise makes the ring's new
holders pull (history mode is off for an epoch that changed placement, which would take
them for continuous), a lower moves the copies beyond the ring's first N to the stale area,
purged once every member finished.  Lowering loses nothing: the first N already hold the
newest copy.

Transition rule: the change is refused while the VDI is attached or locked, and it holds the
VDI's write right until this node has the new epoch, so no write straddles the change; a
write after it reaches the new placement (a replica still missing the object pulls it
first).  Reads in between fall back to the other replicas when a new holder has no copy yet.
It is also refused while recovery is unfinished, so a lower's surplus copies are retired
before a raise could mistake them for current.

Reporting: each changed entry records ``copies_from`` (the old count) and ``copies_epoch``
(the epoch whose recovery makes the new placement); until every member has finished that
epoch, ``GET /vdis`` marks the entry ``copies_recovering`` and ``vdi list`` shows
``OLD->NEW``: a raise is not reported as reached before its replicas exist.

Family: the working VDI and all its snapshots (the entries of the name) change together.
Objects a clone shares with its base belong to the base's vid and keep the base's copies;
the clone's own objects follow the clone's entry.
"""
from __future__ import annotations

import logging

from common.errors import InvalidRequest, NotReady
from vdi import family

log = logging.getLogger(__name__)

MAX_COPIES = 31


def family_of(entries: list[dict], name: str) -> list[dict]:
    """The visible entries of ``name``: its working VDI and its snapshots."""
    return [e for e in family.visible(entries) if e["name"] == name]


def alter_copies(vdis, coordinator, epochs, name: str, copies: int, client: str,
                 timeout_s: float = 30.0) -> dict:
    """Set the copies of ``name`` and its snapshots; returns ``{"name", "copies",
    "old_copies", "changed", "epoch"}`` (``epoch``: the epoch whose recovery makes them)."""
    if isinstance(copies, bool) or not isinstance(copies, int) or not 1 <= copies <= MAX_COPIES:
        raise InvalidRequest(f"invalid number of copies {copies!r} (1..{MAX_COPIES})")
    entry = vdis.working(name)
    old = int(entry["copies"])
    if copies == old:
        return {"name": name, "copies": copies, "old_copies": old, "changed": 0,
                "epoch": epochs.epoch}
    latest = coordinator.latest_epoch()
    if latest is not None and coordinator.complete_epoch(before=latest["epoch"] + 1) \
            != latest["epoch"]:
        raise NotReady(f"recovery of epoch {latest['epoch']} is not finished: change the "
                       "copies once 'collie node recovery' shows it complete")
    with vdis.exclusive(entry, "change the copies of", client):
        family_vids = [e["vid"] for e in family_of(vdis.all_entries(), name)]
        # until the placement epoch is known, the next epoch number stands for it
        soonest = (latest["epoch"] if latest is not None else 0) + 1
        changed = []
        for vid in family_vids:
            current, version = vdis.catalog.get_with_version(vid)
            if int(current["copies"]) != copies:
                vdis.catalog.update(vid, {**current, "copies": copies,
                                          "copies_from": int(current["copies"]),
                                          "copies_epoch": soonest}, expected_version=version)
                changed.append(vid)
        epoch = coordinator.bump_placement(timeout_s)["epoch"]
        for vid in changed if epoch != soonest else ():
            current, version = vdis.catalog.get_with_version(vid)
            vdis.catalog.update(vid, {**current, "copies_epoch": epoch}, expected_version=version)
        changed = len(changed)
        if not epochs.wait_for(epoch, timeout_s):
            log.warning("vdi=%s copies %d -> %d: epoch %d not seen here yet", name, old,
                        copies, epoch)
    log.warning("vdi=%s copies %d -> %d (%d entries) at epoch %d", name, old, copies,
                changed, epoch)
    return {"name": name, "copies": copies, "old_copies": old, "changed": changed,
            "epoch": epoch}


class CopiesReport:
    """Marks entries whose copies change is still being recovered (``copies_recovering``).
    ``complete_epoch()``: the newest epoch every member finished (None: unknown); asked
    only while some entry's ``copies_epoch`` is newer than the newest complete one seen."""

    def __init__(self, complete_epoch) -> None:
        self._complete_epoch = complete_epoch
        self._complete = 0

    def annotate(self, entries: list[dict]) -> list[dict]:
        pending = max((int(e.get("copies_epoch") or 0) for e in entries), default=0)
        if pending > self._complete:
            self._complete = max(self._complete, self._complete_epoch() or 0)
        return [{**e, "copies_recovering": int(e.get("copies_epoch") or 0) > self._complete}
                for e in entries]
