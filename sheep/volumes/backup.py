"""Incremental backup and restore of VDIs: the changed ranges between two snapshots, and
applying a backup stream (`vdi.backup`) onto a VDI.

Backup
    ``diff(name, to, from)`` compares two snapshots' maps (`vdi.diff.changed_extents`)
    and answers the ranges and the stream's header; collie reads the data of the
    ranges through the snapshot data route and writes the stream.  Snapshots never
    change, so nothing is locked.

Restore (theory of operation)
    A stream is applied onto the working VDI ``W`` of ``NAME`` and the result becomes
    snapshot ``TAG`` of ``NAME`` plus a working VDI equal to it; ``W`` itself is never
    written, so a stream that turns out corrupt (or any failure half-way) leaves
    ``NAME`` exactly as it was:

    1. the header is read and checked: for an incremental stream ``W`` must be at the
       stream's base (`vdi.diff.base_problem`: its parent snapshot has the base's state
       and ``W``'s map still equals that snapshot's); a full stream needs ``W`` no
       larger than the result and, unless forced, holding no objects of its own (data
       written since it was created or last snapshotted, which the restore discards);
    2. ``W``'s write right is taken for the whole restore (no attach can write it, no
       snapshot or rollback can change it), and the checks run again under it;
    3. a new *hidden* entry ``N`` is made with a copy of ``W``'s map (the vid CAS, as a
       snapshot makes one); it has no ``replaces``, so nothing ever shows it;
    4. the records are written into ``N`` as they arrive (zero ranges are trimmed:
       whole objects become holes, partial ones are written with zeros);
    5. only when the decoder reached the end, the checksum matched, the body ended right
       there (nothing may follow the checksum) and ``N`` is flushed, ``N`` is flipped into snapshot ``TAG`` of ``NAME`` (its ``backup_state``
       the stream's ``to`` state, so a later increment can check its base), and ``W`` is
       replaced by a clone of it as a rollback would (a new hidden entry that replaces
       ``W``, then ``W`` marked deleted: ``W`` owned nothing when the check passed);
    6. on any failure before step 5, ``N`` is marked deleted and reclaimed.

    ``W``'s write right is checked again before step 5 and before ``W`` is replaced, and
    ``N`` is flipped with a CAS that refuses an ``N`` no longer hidden by this restore: a
    restore whose lock was broken (or lost with its session) fails instead of
    committing over a client that attached ``W`` since, or resurrecting a discarded ``N``.

    A sheep that dies during step 4 leaves ``N`` hidden (invisible, but its objects
    stay); such leftovers (``restoring`` entries) are deleted by `discard_orphans` when
    their node is no member any more (the next restore of the name; a change of epoch)
    and by the sheep itself when it starts again (`Sheep._discard_restore_leftovers`);
    reclaim counts one without an inode as empty (`sheep.volumes.reclaim`).
"""
from __future__ import annotations

import logging
import time

import gevent
from gevent.pool import Pool

from common.errors import AlreadyExists, InvalidRequest, Locked, NotFound, SheepError
from sheep.volumes.snapshots import validate_tag
from vdi import backup, diff, family, objects
from vdi.volume import Volume

log = logging.getLogger(__name__)

READ_BYTES = 1 << 20            # one read of the request body
WRITERS = 4                     # records written at once
READ_IDLE_S = 60.0              # a body read bringing nothing for this long: the upload stalled


class BackupService:
    def __init__(self, vdis, node_id: str = "", members=None) -> None:
        self.vdis = vdis
        self.node_id = node_id
        self.members = members          # () -> the live members (None: unknown, none live)
        self.marker = node_id or True   # the ``restoring`` value of this node's entries

    def cluster_id(self):
        """What makes this cluster's snapshot states its own: its format's creation time."""
        return self.vdis.format().get("created")

    def ident(self, entry: dict) -> dict:
        """A snapshot as a stream's header names it (``state`` decides; the rest informs)."""
        return {"name": entry["name"], "tag": entry.get("tag") or "",
                "snap_id": entry.get("snap_id"), "vid": entry["vid"], "size": entry["size"],
                "created": entry.get("snap_created") or entry.get("created"),
                "state": diff.snapshot_state(entry, self.cluster_id())}

    # -- backup ------------------------------------------------------------------------------
    def diff(self, name: str, to_tag: str, from_tag: str | None = None) -> dict:
        """The ranges of snapshot ``to_tag`` that differ from snapshot ``from_tag`` (all of
        them without one), and the header of the stream that carries them."""
        to = self.vdis.snapshot(name, to_tag)
        base = self.vdis.snapshot(name, from_tag) if from_tag not in (None, "") else None
        if base is not None and base["size"] > to["size"]:
            raise InvalidRequest(f"{diff.describe(base)} is larger than {diff.describe(to)}: "
                                 "a stream only goes from a smaller or equal size to a larger")
        object_size = 1 << to["block_size_shift"]
        to_map = self.vdis.read_map(to)
        from_map = self.vdis.read_map(base) if base is not None else None
        extents = diff.changed_extents(from_map, to_map, to["size"], object_size)
        header = {"format": backup.FORMAT, "name": name, "size": to["size"],
                  "object_size": object_size, "created": time.time(), "to": self.ident(to),
                  "from": self.ident(base) if base is not None else None}
        return {"header": backup.check_header(header),
                "extents": [[e.offset, e.length, "zero" if e.zero else "data"] for e in extents],
                "data_bytes": sum(e.length for e in extents if not e.zero),
                "zero_bytes": sum(e.length for e in extents if e.zero)}

    # -- restore: checks ---------------------------------------------------------------------
    def check(self, name: str, tag, header, force: bool = False) -> dict:
        """What ``restore`` would refuse before reading any data: the same error, or
        ``{"target", "base"}``."""
        tag = self._tag(tag)
        header = backup.check_header(header)
        working = self.vdis.working(name)
        self.vdis.refuse_if_locked(working, "restore")
        self._check_target(working, tag, header, force)
        return {"target": working, "base": header.get("from")}

    @staticmethod
    def _tag(tag) -> str:
        tag = validate_tag(tag)
        if not tag:
            raise InvalidRequest("restore needs the tag of the snapshot it makes (-s TAG)")
        return tag

    def _check_target(self, working: dict, tag: str, header: dict, force: bool):
        """Refuse a target the stream cannot be applied to; returns the target's map."""
        name = working["name"]
        self.vdis.check_size(header["size"])        # before any lock or allocation
        if any(e["name"] == name and e.get("snapshot") and e.get("tag") == tag
               for e in family.visible(self.vdis.all_entries())):
            raise AlreadyExists(f"VDI '{name}' already has a snapshot tagged '{tag}'")
        target_map = self.vdis.read_map(working)
        base = header.get("from")
        if base is None:
            if working["size"] > header["size"]:
                raise InvalidRequest(f"VDI '{name}' ({working['size']} bytes) is larger than "
                                     f"the backup ({header['size']} bytes): volumes only grow")
            own = target_map.owned_by(working["vid"])
            if own and not force:
                raise InvalidRequest(f"VDI '{name}' holds {own} objects written since it was "
                                     "created or last snapshotted; a full restore discards "
                                     "them (pass -f to go ahead)")
            return target_map
        parent, parent_map = self._parent(working)
        problem = diff.base_problem(working, target_map, parent, parent_map, base,
                                    self.cluster_id())
        if problem:
            raise InvalidRequest(problem)
        return target_map

    def _parent(self, working: dict):
        if not working.get("parent"):
            return None, None
        try:
            parent = self.vdis.catalog.get(working["parent"])
            return parent, self.vdis.read_map(parent)
        except NotFound:
            return None, None

    # -- restore -----------------------------------------------------------------------------
    def restore(self, name: str, tag, read, force: bool = False) -> dict:
        """Apply the stream ``read(n)`` returns (b"" at its end) onto VDI ``name`` and make
        the result snapshot ``tag``; returns ``{"snapshot", "working", "records",
        "data_bytes", "zero_bytes"}``.  StreamError for a bad stream (nothing visible
        changed), InvalidRequest when the target is not the stream's base."""
        tag = self._tag(tag)
        decoder = backup.StreamDecoder()
        try:
            return self._restore(name, tag, decoder, read, force)
        except backup.StreamError as exc:
            raise backup.StreamError(f"{exc.message}; nothing was restored") from None

    def _restore(self, name: str, tag: str, decoder, read, force: bool) -> dict:
        header, pending = _read_header(decoder, read)
        working = self.vdis.working(name)
        self.vdis.refuse_if_locked(working, "restore")
        self._check_target(working, tag, header, force)
        try:
            with self.vdis.exclusive(working, "restore", "restore") as writer:
                self._abandon_leftovers(name)
                target_map = self._check_target(working, tag, header, force)
                result = self._restore_locked(working, writer, target_map, tag, header,
                                              decoder, pending, read)
        finally:
            self.vdis.reclaimer.kick()      # the replaced VDI, or a discarded attempt
        log.info("vdi=%s restored from %s stream (%d records, %d data bytes): snapshot %r "
                 "vid=%06x", name, "a full" if backup.is_full(header) else "an incremental",
                 result["records"], result["data_bytes"], tag, result["snapshot"]["vid"])
        return result

    def _restore_locked(self, working, writer, target_map, tag, header, decoder, pending,
                        read):
        size = header["size"]
        object_size = 1 << working["block_size_shift"]
        new = self.vdis.allocate({
            "name": working["name"], "size": size, "copies": working["copies"],
            "created": time.time(), "snap_id": working.get("snap_id"), "tag": "",
            "parent": working.get("parent") or 0, "snapshot": False,
            "block_size_shift": working["block_size_shift"], "hidden": True,
            "restoring": self.marker})
        committed = False
        try:
            objmap = target_map.copy()
            objmap.extend(objects.nr_indexes(size, object_size))
            self.vdis.write_inode(new, objmap)
            volume = Volume(new["vid"], size, object_size, int(working["copies"]),
                            self.vdis.unlocked_writer(new["vid"]), objmap)
            end = _apply(decoder, pending, read, volume)
            volume.flush()
            self._check_held(working, writer)
            snapshot = self._freeze(working, new, tag, header)
            committed = True
        finally:
            if not committed:
                self._discard(new)
        return {"snapshot": snapshot,
                "working": self._switch(working, writer, snapshot, objmap),
                "records": end.records, "data_bytes": end.data_bytes,
                "zero_bytes": end.zero_bytes}

    def _check_held(self, working: dict, writer) -> None:
        """Locked unless ``W``'s write right is still ours: once it was broken or lost with
        the session, a client may have attached and written ``W``, or another restore may
        have discarded ``N``."""
        if not self.vdis.holds(writer):
            raise Locked(f"cannot restore VDI '{working['name']}': its write right was lost "
                         "meanwhile (lock broken or session expired)")

    def _freeze(self, working: dict, new: dict, tag: str, header: dict) -> dict:
        """The restored entry becomes snapshot ``tag`` of the name (visible from now on):
        a CAS on ``N`` as it was made, so an ``N`` discarded meanwhile stays discarded."""
        current, version = self.vdis.catalog.get_with_version(new["vid"])
        if current.get("deleted") or current.get("restoring") != self.marker:
            raise Locked(f"cannot restore VDI '{working['name']}': the entry being restored "
                         f"(vid {new['vid']:06x}) was discarded meanwhile")
        entries = self.vdis.all_entries()
        if any(e["name"] == working["name"] and e.get("snapshot") and e.get("tag") == tag
               for e in family.visible(entries)):
            raise AlreadyExists(f"VDI '{working['name']}' already has a snapshot tagged "
                                f"'{tag}'")
        snap_id = max(int(working.get("snap_id") or 1),
                      family.next_snap_id(entries, working["name"]))
        now = time.time()
        snap = {k: v for k, v in current.items() if k not in ("hidden", "replaces",
                                                                "restoring")}
        snap.update({"snapshot": True, "tag": tag, "snap_id": snap_id, "snap_created": now,
                     "backup_state": header["to"]["state"],
                     "restored": {"from": (header.get("from") or {}).get("state"),
                                  "source": header["name"], "tag": header["to"].get("tag"),
                                  "at": now}})
        try:
            self.vdis.catalog.update(new["vid"], snap, expected_version=version)
        except AlreadyExists:
            raise Locked(f"cannot restore VDI '{working['name']}': the entry being restored "
                         f"(vid {new['vid']:06x}) changed meanwhile") from None
        return snap

    def _switch(self, working: dict, writer, snap: dict, objmap) -> dict:
        """Replace the working VDI by a clone of the restored snapshot (a rollback to it)."""
        name = working["name"]
        try:
            self._check_held(working, writer)       # W may be attached and written now
            new = self.vdis.allocate({
                "name": name, "size": snap["size"], "copies": snap["copies"],
                "created": time.time(), "tag": "", "parent": snap["vid"], "snapshot": False,
                "snap_id": int(snap["snap_id"]) + 1,
                "block_size_shift": snap["block_size_shift"], "hidden": True,
                "replaces": working["vid"]})
            try:
                self.vdis.write_inode(new, objmap.copy())
                self.vdis.mark_deleted(working)
            except BaseException:
                self.vdis.forget(new)
                raise
            return self.vdis.publish(new)
        except SheepError as exc:
            raise type(exc)(f"VDI '{name}' was restored as snapshot '{snap['tag']}', but its "
                            f"working VDI was not switched to it ({exc.message}): run collie "
                            f"vdi rollback -s {snap['tag']} {name}") from None

    def _discard(self, entry: dict) -> None:
        try:
            self.vdis.mark_deleted(entry)
        except Exception as exc:    # the next restore of this name deletes it
            log.warning("vdi=%s vid=%06x: discarding a failed restore failed: %s",
                        entry["name"], entry["vid"], exc)

    def _abandon_leftovers(self, name: str) -> None:
        """Hidden entries of earlier restores of ``name`` that can no longer finish."""
        self.discard_orphans(name)

    def discard_orphans(self, name: str | None = None, at_start: bool = False) -> int:
        """Mark deleted the hidden entries of restores (of ``name``, or of any VDI) whose
        node is not a member any more, and, when this sheep starts (``at_start``), its own;
        returns how many.  An entry of a live node is left alone: if that restore lost its
        write right it fails by itself at its commit (`_check_held`, `_freeze`)."""
        live = {m.node_id for m in self.members()} if self.members is not None else set()
        count = 0
        for e in self.vdis.all_entries():
            node = e.get("restoring")
            if not node or not e.get("hidden") or not family.is_live(e) \
                    or (name is not None and e["name"] != name):
                continue
            if node in live and not (at_start and node == self.marker):
                continue
            log.warning("vdi=%s vid=%06x: deleting the leftover of a restore that did not "
                        "finish (node %s)", e["name"], e["vid"], node)
            self._discard(e)
            count += 1
        return count

def read_idle(read, n: int) -> bytes:
    """``read(n)``, or StreamError when it brings nothing for `READ_IDLE_S`: a stalled
    upload must not hold the write right (the restore's clean-up runs on the error)."""
    timeout = gevent.Timeout(READ_IDLE_S)
    timeout.start()
    try:
        return read(n)
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        raise backup.StreamError(f"the upload stalled (no data for {READ_IDLE_S:g} s)") from None
    finally:
        timeout.close()


def _read_header(decoder: backup.StreamDecoder, read) -> tuple[dict, list]:
    """Feed the decoder until the header is decoded; (header, the events after it)."""
    while True:
        chunk = read_idle(read, READ_BYTES)
        if not chunk:
            decoder.close()                 # raises: the stream ended in its header
        events = decoder.feed(chunk)
        if events:
            first, rest = events[0], events[1:]
            return first.header, rest


def _apply(decoder: backup.StreamDecoder, pending: list, read, volume: Volume) -> backup.End:
    """Write the records into ``volume`` (a few at once) until the end of the stream;
    returns the `End` event.  On any error the writes in flight finish first, so
    nothing is written after this returns or raises."""
    pool = Pool(WRITERS)
    jobs: list = []

    def submit(fn, *args) -> None:
        for job in jobs:
            if job.ready() and job.exception is not None:
                raise job.exception
        jobs[:] = [j for j in jobs if not j.ready()]
        jobs.append(pool.spawn(fn, *args))

    try:
        events = list(pending)
        while True:
            for event in events:
                if isinstance(event, backup.Data):
                    submit(volume.write, event.offset, event.data)
                elif isinstance(event, backup.Zero):
                    submit(volume.trim, event.offset, event.length)
                elif isinstance(event, backup.End):
                    gevent.joinall(jobs, raise_error=True)
                    _require_eof(decoder, read)
                    return event
            chunk = read_idle(read, READ_BYTES)
            if not chunk:
                decoder.close()             # raises: the stream ended before its end record
            events = decoder.feed(chunk)
    finally:
        pool.join()


def _require_eof(decoder: backup.StreamDecoder, read) -> None:
    """Nothing may follow the checksum: the body must end right after it (the decoder
    refuses any bytes fed after its end)."""
    chunk = read_idle(read, READ_BYTES)
    if chunk:
        decoder.feed(chunk)                 # raises: bytes after the end of the stream
