"""Snapshots, clones and rollback of VDIs (DESIGN.md section 2).

Theory of operation
-------------------
Every operation builds a new entry the same way: allocate a *hidden* catalog
entry (the vid CAS), write its inode with a copied map, then flip the old entry
with a compare-and-set on its znode version, then publish the new one.  A
hidden entry that ``replaces`` the old working VDI is its name's working VDI as
soon as the flip is done (`vdi.family.visible`), so readers never see two
working VDIs or none; a failure before the flip removes the new entry again.

Snapshot of a VDI attached over NBD (live snapshot)
    Only the node holding the VDI's lock can freeze it: a request reaching
    another sheep is forwarded to the holder's admin API (the lock's
    ``node_id``, looked up in the current members).  The holder's export
    (`sheep.volumes.nbd_exports`) closes its write barrier, waits for in-flight writes,
    takes the lock of the new vid, freezes (the map copied is the export's own,
    which is exactly the state after every acknowledged write: entries are
    persisted before they are set in memory), swaps its Volume to the new vid,
    reopens the barrier and lets go of the old lock.  The client sees a pause.

Snapshot of a detached VDI
    Take the VDI's lock for the duration (no attach can write into the map
    being copied), read the map from the inode, freeze, release.
"""
from __future__ import annotations

import contextlib
import logging
import time

import gevent

from common import errors as E
from common.errors import AlreadyExists, InvalidRequest, Locked, NotFound, Unavailable
from sheep.volumes.service import validate_name
from vdi import family

log = logging.getLogger(__name__)

MAX_TAG_BYTES = 256
MAX_HOPS = 3
LOCK_WAIT_S = 30.0


def validate_tag(tag) -> str:
    if tag is None:
        return ""
    if not isinstance(tag, str):
        raise InvalidRequest("snapshot tag must be a string")
    if len(tag.encode()) > MAX_TAG_BYTES:
        raise InvalidRequest(f"snapshot tag longer than {MAX_TAG_BYTES} bytes")
    if "/" in tag or any(ord(c) < 32 for c in tag):
        raise InvalidRequest(f"invalid snapshot tag {tag!r}: no '/' or control characters")
    return tag


class SnapshotService:
    def __init__(self, vdis, locks, exports, members, node_id: str, forward=None) -> None:
        """``forward(member, request) -> answer`` sends a snapshot request to the node
        holding the VDI's lock (the daemon sends it over the authenticated peer protocol;
        the admin API may listen on loopback only)."""
        self.vdis = vdis
        self.forward = forward
        self.locks = locks
        self.exports = exports          # VdiExportProvider of this node
        self.members = members          # () -> current Members
        self.node_id = node_id

    # -- snapshot ----------------------------------------------------------------
    def snapshot(self, name: str, tag, hops: int = 0) -> dict:
        """Freeze the working VDI ``name`` as snapshot ``tag``; returns
        ``{"snapshot": entry, "working": entry}``."""
        tag = validate_tag(tag)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            working = self.vdis.working(name)
            self._refuse_duplicate(name, tag)
            lock = self.locks.get(working["vid"])
            if lock is None:
                try:
                    writer = self.vdis.take(working, "snapshot")
                except Locked:
                    gevent.sleep(0.01)  # someone attached just now: look again
                    continue
                try:
                    objmap = self.vdis.read_map(working)
                    return self.freeze(working, tag, objmap)
                finally:
                    self.vdis.give_back(writer)
            if lock.get("node_id") == self.node_id:
                done = self.exports.live_snapshot(working["vid"], tag, self.freeze)
                if done is not None:
                    return done
                # held here for a short admin write or another snapshot: wait below
            elif hops < MAX_HOPS:
                member = self._member(lock.get("node_id"))
                if member is not None:
                    return self._forward(member, name, tag, hops + 1)
            if time.monotonic() > deadline:
                raise Locked(f"VDI '{name}' stayed locked by node {lock.get('node_id')} "
                             f"(client {lock.get('client')}); snapshot not taken",
                             holder=lock.get("node_id"))
            gevent.sleep(0.05)

    def _refuse_duplicate(self, name: str, tag: str) -> None:
        if tag and any(e["name"] == name and e.get("snapshot") and e.get("tag") == tag
                       for e in family.visible(self.vdis.all_entries())):
            raise AlreadyExists(f"VDI '{name}' already has a snapshot tagged '{tag}'")

    def freeze(self, working: dict, tag: str, objmap, before_flip=None) -> dict:
        """The catalog change of a snapshot; the caller guarantees no write to ``working``
        runs (lock or quiesced export) and passes its map.  ``before_flip(new_entry)``
        runs after the new inode is written and before the old entry is frozen."""
        current, version = self.vdis.catalog.get_with_version(working["vid"])
        if current.get("deleted") or current.get("snapshot"):
            raise AlreadyExists(f"VDI '{working['name']}' changed meanwhile; retry", conflict=True)
        name = current["name"]
        self._refuse_duplicate(name, tag)
        snap_id = max(int(current.get("snap_id") or 1),
                      family.next_snap_id(self.vdis.all_entries(), name))
        now = time.time()
        new = self.vdis.allocate({
            "name": name, "size": current["size"], "copies": current["copies"], "created": now,
            "snap_id": snap_id + 1, "tag": "", "parent": current["vid"], "snapshot": False,
            "block_size_shift": current["block_size_shift"], "hidden": True,
            "replaces": current["vid"], **_kept(current)})
        try:
            self.vdis.write_inode(new, objmap.copy())
            if before_flip is not None:
                before_flip(new)
            snap = {**current, "snapshot": True, "tag": tag, "snap_id": snap_id,
                    "snap_created": now}
            snap.pop("hidden", None)
            snap.pop("replaces", None)
            self.vdis.catalog.update(current["vid"], snap, expected_version=version)
        except BaseException:
            self.vdis.forget(new)
            raise
        try:
            new = self.vdis.publish(new)
        except E.SheepError as exc:  # still the working VDI by the replaces rule
            log.warning("vdi=%s vid=%06x publish failed: %s", name, new["vid"], exc)
        log.info("vdi=%s snapshot id=%d tag=%r vid=%06x; working vid=%06x", name, snap_id, tag,
                 snap["vid"], new["vid"])
        return {"snapshot": snap, "working": new}

    # -- forwarding ---------------------------------------------------------------
    def _member(self, node_id):
        for m in self.members():
            if m.node_id == node_id:
                return m
        return None

    def _forward(self, member, name: str, tag: str, hops: int) -> dict:
        if self.forward is None:
            raise Unavailable(f"VDI '{name}' is locked by node {member.node_id}: "
                              "take the snapshot there")
        log.info("vdi=%s snapshot forwarded to lock holder %s", name, member.node_id)
        return self.forward(member, {"name": name, "tag": tag, "hops": hops})

    # -- clone and rollback ---------------------------------------------------------
    def clone(self, src: str, tag, dst: str) -> dict:
        """A new working VDI ``dst`` sharing every object of snapshot ``tag`` of ``src``."""
        if tag in (None, ""):
            self.vdis.working(src)       # NotFound first when src does not exist at all
            raise InvalidRequest(f"only snapshots can be cloned: '{src}' is a working VDI; "
                                 "give the snapshot tag or id (-s)")
        validate_name(dst)
        snap = self.vdis.snapshot(src, str(tag))
        if family.working_of(self.vdis.all_entries(), dst) is not None:
            raise AlreadyExists(f"VDI '{dst}' already exists")
        objmap = self.vdis.read_map(snap)
        new = self.vdis.allocate({
            "name": dst, "size": snap["size"], "copies": snap["copies"], "created": time.time(),
            "snap_id": family.next_snap_id(self.vdis.all_entries(), dst), "tag": "",
            "parent": snap["vid"], "snapshot": False, "clone": True,
            "block_size_shift": snap["block_size_shift"], "hidden": True})
        try:
            self.vdis.write_inode(new, objmap.copy())
            new = self.vdis.publish(new)
        except BaseException:
            self.vdis.forget(new)
            raise
        log.info("vdi=%s vid=%06x cloned from %s@%s (vid %06x)", dst, new["vid"], src, tag,
                 snap["vid"])
        return new

    def rollback(self, name: str, tag) -> dict:
        """Replace the working VDI ``name`` by a new one cloned from snapshot ``tag``."""
        if tag in (None, ""):
            raise InvalidRequest("rollback needs a snapshot tag or id (-s)")
        snap = self.vdis.snapshot(name, str(tag))
        try:
            working = self.vdis.working(name)
        except NotFound:
            working = None
        exclusive = (self.vdis.exclusive(working, "roll back", "rollback")
                     if working is not None else contextlib.nullcontext())
        with exclusive:
            objmap = self.vdis.read_map(snap)
            fields = {
                "name": name, "size": snap["size"], "copies": snap["copies"],
                "created": time.time(), "tag": "", "parent": snap["vid"], "snapshot": False,
                "snap_id": max(int((working or {}).get("snap_id") or 1),
                               family.next_snap_id(self.vdis.all_entries(), name)),
                "block_size_shift": snap["block_size_shift"], "hidden": True}
            if working is not None:
                fields["replaces"] = working["vid"]
                fields.update(_kept(working))
            new = self.vdis.allocate(fields)
            try:
                self.vdis.write_inode(new, objmap.copy())
                if working is not None:
                    self.vdis.mark_deleted(working)
            except BaseException:
                self.vdis.forget(new)
                raise
            new = self.vdis.publish(new)
        log.info("vdi=%s rolled back to snapshot %s: working vid=%06x", name, tag, new["vid"])
        self.vdis.reclaimer.run()
        return new


def _kept(working: dict) -> dict:
    """Settings of a working VDI its next working entry keeps (its QoS limits)."""
    return {"qos": working["qos"]} if working.get("qos") else {}
