"""NBD exports of this sheep: VDIs as `nbd_frontend` Exports.

Export ``NAME`` is the working VDI, read-write.  Attaching it is not the right to
write it: any number of connections may attach (each registers an attachment,
`coordinator.attachments`) and read.  The right to write is the VDI's lock, taken
through `VdiService.take` (fenced, resynced after an unclean hand-over:
`sheep.volumes.fencing`) at a connection's first write, trim or zeroes, after which
the Volume is opened again (the inode re-read: an earlier holder may have allocated)
and writes through the `VdiWriter` of that lock.  While another connection holds it,
the first mutation files a hand-off request and waits (`sheep.volumes.handoff`): the
holder gives the lock up once it is quiescent and clean, never while dirty.  A holder
that handed over keeps reading and flushing (a no-op), but its writes fail with EPERM.
A write refused as coming from a superseded generation revokes the export.  At detach
the lock is given back "clean" when every write reached every replica.  ``NAME@TAG`` or
``NAME@ID`` is a snapshot, read-only, lock-free; besides ``base:allocation`` it offers
the meta context ``x-sheepdog:diff:FROM`` for every other snapshot ``FROM`` of ``NAME``
(`vdi.diff`: which objects differ from ``FROM``; ``FROM``'s map is read once per
connection, at its first BLOCK_STATUS).  When the lock disappears while held
(``collie vdi lock unlock`` or a lost session) the export is revoked at once: every
later request fails and the NBD server drops that client.

Live snapshot: a working export has a write barrier.  Writes, trims and zeroes
pass it and count themselves in flight; `VdiExport.quiesced` closes it, waits
until nothing is in flight, and reopens it afterwards.  While it is closed the
provider freezes the VDI (`sheep.volumes.snapshots.SnapshotService.freeze`) with the
export's own map, takes the new vid's lock, swaps the export's Volume to the
new working vid and releases the old lock.  Reads are not held: both volumes
read the same bytes while no write runs.  A hand-off closes the same barrier.

Handshakes look names up in a cached catalog (`sheep.volumes.catalog_cache`): a
LIST or INFO answers from a listing at most a second old, an unknown name is
looked up once more in a fresh listing, and attaching confirms the one entry it
attaches by a ZooKeeper read of it that started after the lookup, so it never
attaches a stale one (`VdiExportProvider._current_entry`).
"""
from __future__ import annotations

import contextlib
import logging

from gevent.event import Event
from gevent.lock import Semaphore

from common.errors import Fenced, InvalidRequest, NotFound, ReadOnly, StaleGeneration, Unavailable
from nbd_frontend.export import HOLE, ZERO
from sheep.volumes.catalog_cache import CatalogCache
from sheep.volumes.handoff import HandoffPolicy, WriteState
from sheep.volumes.qos import QosRegistry
from sheep.volumes.service import validate_name
from vdi import diff, family
from vdi.qos import READ, WRITE
from sheep.volumes.write_right import WriteRightMixin
from vdi.volume import Volume

QUIESCE_TIMEOUT_S = 30.0
DIFF_CONTEXT = "x-sheepdog:diff:"   # + a snapshot's tag (its id when it has none)
ATTACH_TRIES = 3            # lookups of an export's entry before attaching gives up

log = logging.getLogger(__name__)


def split_export_name(name: str) -> tuple[str, str | None]:
    """``"vol@snap"`` -> ("vol", "snap"); ``"vol"`` -> ("vol", None)."""
    base, sep, tag = name.partition("@")
    return base, (tag if sep else None)


class VdiExport:
    # write/trim/write_zeroes with fua=True flush before returning, so the NBD
    # server must not send a second cluster-wide flush after them.
    handles_fua = True

    def __init__(self, name: str, entry: dict, volume, provider: "VdiExportProvider",
                 working: bool, client: str = "") -> None:
        self.name = name
        self.entry = entry
        self.volume = volume
        self.writer = None          # VdiWriter of the lock while this export holds it
        self.size = volume.size
        self.readonly = volume.readonly
        self.client = client
        self.working = working      # the working VDI (may take the write right)
        self.attachment: str | None = None
        self.qos = None             # its VDI's VdiThrottle while it has limits (sheep.volumes.qos)
        self.handed_over = False    # gave the write right to another connection
        self.handing_over = False   # releasing the lock for a hand-off right now
        self.moved = False          # the catalog entry changed (a snapshot): look again
        self._provider = provider
        self.revoked = False
        self.closed = False
        self.state = WriteState()
        self._open = Event()        # the write barrier: set = writes may start
        self._open.set()
        self._idle = Event()        # set = no write in flight
        self._idle.set()
        self._snapshotting = Semaphore()
        self._taking = Semaphore()  # one acquisition of the write right at a time
        self._arriving = 0          # mutations started but not yet counted in flight
        self.waiting = 0            # mutations waiting for the write right
        self.taking_since: float | None = None   # when the oldest of them began to wait
        self.diff_bases: dict = {}  # meta context -> the map of its FROM snapshot

    def _check(self) -> None:
        if self.revoked:
            raise Fenced(f"lock of VDI '{self.entry['name']}' was broken; export revoked")

    def _check_write_right(self) -> None:
        if self.handed_over:
            raise ReadOnly(f"VDI '{self.entry['name']}': this connection handed the write "
                           "right over to another attachment; it may still read and flush")

    def _mutate(self, offset: int, length: int, fn, fua: bool) -> None:
        """One write/trim/zeroes: ``fn(volume)`` once past the barrier, counted in flight,
        with reclaim told when it dropped a reference to a shared object (no context
        managers: this is the hot path of every NBD write)."""
        self._check()
        self._check_write_right()
        if self.qos is not None:
            self.qos.admit(WRITE, length)
        self._arriving += 1             # a hand-off must wait for this one
        try:
            if self.writer is None:
                self._provider.take_write_right(self)
            while not self._open.is_set():
                self._open.wait()
            self._check()
            self._check_write_right()
            state = self.state
            state.started()
            self._idle.clear()
        finally:
            self._arriving -= 1
        try:
            volume = self.volume
            reclaimer = self._provider.reclaimer
            try:
                shared = reclaimer.shared_before(volume, offset, length)
                try:
                    fn(volume)
                finally:
                    reclaimer.after(volume, shared)
            finally:
                state.finished()
                if state.in_flight == 0:
                    self._idle.set()
            if fua:
                self._flush_writer()
        except StaleGeneration:
            # a newer holder took the VDI (our lock was broken or our session lost)
            self._provider.revoke(self)
            raise

    @contextlib.contextmanager
    def quiesced(self, timeout_s: float = QUIESCE_TIMEOUT_S):
        """Hold new writes at the barrier and wait for those in flight; one at a time."""
        with self._snapshotting:
            self._open.clear()
            try:
                if not self._idle.wait(timeout_s):
                    raise Unavailable(f"VDI '{self.entry['name']}': writes in flight did not "
                                      f"finish within {timeout_s:.0f}s; snapshot not taken")
                yield
            finally:
                self._open.set()

    def _follow(self) -> None:
        if self.moved and self.writer is None:
            self._provider.follow_working(self)

    def read(self, offset: int, length: int) -> bytearray:
        self._check()
        if self.qos is not None:
            self.qos.admit(READ, length)
        self._follow()
        return self.volume.read(offset, length)

    def write(self, offset: int, data, fua: bool = False) -> None:
        self._mutate(offset, len(data), lambda v: v.write(offset, data), fua)

    def flush(self) -> None:
        """Durable on every replica: what this connection wrote.  A connection that handed
        the write right over had flushed everything it wrote: its FLUSH succeeds at once
        (qemu flushes an inactive migration source at quit).  One that never wrote
        flushes the cluster (as any FLUSH does), without the write right."""
        self._check()
        if self.handed_over:
            return
        if self.writer is None:
            self._follow()
            self.volume.flush()
            return
        self._flush_writer()

    def _flush_writer(self) -> None:
        mark = self.state.flush_started()
        self.volume.flush()
        self.state.flush_finished(mark)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self._mutate(offset, length, lambda v: v.trim(offset, length), fua)

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool = False) -> None:
        self._mutate(offset, length,
                     lambda v: v.write_zeroes(offset, length, may_trim=may_trim), fua)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check()
        self._follow()
        return [(n, HOLE | ZERO if hole else 0)
                for n, hole in self.volume.block_status(offset, length)]

    def context_status(self, context: str, offset: int, length: int) -> list[tuple[int, int]]:
        """x-sheepdog:diff:FROM: CHANGED (1) where an object differs from snapshot FROM,
        | ZERO (2) where it is a hole now, 0 where it is the same object."""
        self._check()
        base = self._provider.diff_base(self, context)
        volume = self.volume
        return diff.diff_status(base, volume.objmap, volume.size, volume.object_size,
                                offset, length)

    def may_hand_over(self, policy: HandoffPolicy) -> bool:
        """Quiescent and clean: holding the right, nothing arriving or in flight, every
        finished mutation flushed, idle for the policy's time.  (A mutation that failed
        counts too once flushed: the lock is then given back unclean and the next holder
        resyncs what it may have left apart.)"""
        return (self.writer is not None and self._arriving == 0 and self._idle.is_set()
                and self.state.may_hand_over(policy))

    def close(self) -> None:
        self._provider.detached(self)


class VdiExportProvider(WriteRightMixin):
    """ExportProvider over the VDI service, the lock table and the attachments."""

    def __init__(self, vdis, locks, node_id: str, attachments=None,
                 policy: HandoffPolicy = HandoffPolicy()) -> None:
        self.vdis = vdis
        self.locks = locks
        self.attachments = attachments
        self.node_id = node_id
        self.policy = policy
        self.server = None                  # the NbdServer, set by the daemon
        self._attached: dict[int, VdiExport] = {}   # vid -> the export holding its lock
        self._working: set[VdiExport] = set()       # every attached working export here
        self._request_counts: dict[int, int] = {}   # vid -> writers waiting (watched vids)
        self._serving: set[int] = set()             # vids whose hand-off loop runs
        self._followers: dict[int, set] = {}        # vid -> exports told when its entry changes
        self.catalog_cache = CatalogCache(vdis.entries)   # what handshakes look up
        self.qos = QosRegistry(vdis.catalog)

    @property
    def reclaimer(self):
        return self.vdis.reclaimer

    def list_exports(self) -> list[str]:
        out = []
        for e in self.catalog_cache.entries():
            if e.get("snapshot"):
                out.append(f"{e['name']}@{e.get('tag') or e.get('snap_id')}")
            else:
                out.append(e["name"])
        return out

    def _entry(self, name: str) -> dict:
        """The entry export ``name`` names, from the cached catalog; NotFound if none."""
        base, tag = split_export_name(name)
        validate_name(base)
        if tag is None:
            found = self.catalog_cache.find(lambda entries: family.working_of(entries, base))
            if found is None:
                raise NotFound(f"VDI '{base}' not found")
        else:
            found = self.catalog_cache.find(
                lambda entries: family.find_snapshot(entries, base, tag))
            if found is None:
                raise NotFound(f"snapshot '{tag}' of VDI '{base}' not found")
        return found

    def _current_entry(self, name: str) -> dict:
        """The entry export ``name`` names, confirmed by ZooKeeper: ``_entry``'s answer
        only once a read of that vid, started after the answer, returns it unchanged
        (one read when the cache is right).  On a mismatch the cache is invalidated and
        the name looked up again in a listing that started after the mismatch was seen
        (never one already in flight, which may predate the change); Unavailable when the
        entry keeps changing for ``ATTACH_TRIES`` lookups."""
        for _ in range(ATTACH_TRIES):
            entry = self._entry(name)
            try:
                current = self.vdis.catalog.get(entry["vid"])
            except NotFound:
                current = None
            if current == entry:
                return current      # a copy of its own: the cached one stays untouched
            self.catalog_cache.invalidate()
        raise Unavailable(f"export '{name}': its catalog entry kept changing while it was "
                          "attached; try again")

    def meta_contexts(self, name: str) -> list[str]:
        """Extra meta contexts of export ``name``: a snapshot export offers
        ``x-sheepdog:diff:FROM`` for each other snapshot of its VDI; others none."""
        base, tag = split_export_name(name)
        if tag is None:
            return []
        try:
            this = self._entry(name)
        except (NotFound, InvalidRequest):
            return []
        return [DIFF_CONTEXT + str(e.get("tag") or e.get("snap_id"))
                for e in self.catalog_cache.entries()
                if e["name"] == base and e.get("snapshot") and e["vid"] != this["vid"]]

    def diff_base(self, export: VdiExport, context: str):
        """The object map of the FROM snapshot of ``context`` (read once per export)."""
        found = export.diff_bases.get(context)
        if found is None:
            if export.working or not context.startswith(DIFF_CONTEXT):
                raise InvalidRequest(f"export '{export.name}' has no meta context '{context}'")
            entry = self._entry(f"{export.entry['name']}@{context[len(DIFF_CONTEXT):]}")
            found = export.diff_bases[context] = self.vdis.read_map(entry)
        return found

    def describe(self, name: str) -> tuple[int, bool]:
        entry = self._entry(name)
        return entry["size"], bool(entry.get("snapshot"))

    def open_export(self, name: str, client_addr: str) -> VdiExport:
        if split_export_name(name)[1] is None:
            self.vdis.check_writable()   # a read-write attach needs the session
        entry = self._current_entry(name)
        if entry.get("snapshot"):
            return VdiExport(name, entry, self.vdis.open_volume(entry, readonly=True), self,
                             working=False)
        # a holder that vanished uncleanly may have left replicas apart: bring them
        # together before anyone reads (nobody holds the lock then)
        self.vdis.settle_if_unclean(entry, client_addr)
        volume = self.vdis.open_volume(entry)
        volume.follow = True                # someone else may be writing it
        export = VdiExport(name, entry, volume, self, working=True, client=client_addr)
        if self.attachments is not None:
            export.attachment = self.attachments.attach(entry["vid"], self.node_id,
                                                        client_addr)
        self._working.add(export)
        self._watch_entry(export)
        self._quietly(self.qos.attach, export)
        log.info("vdi=%s vid=%06x attached by %s", entry["name"], entry["vid"], client_addr)
        return export

    # -- following the working vid (a snapshot moves it) ----------------------------------
    def _watch_entry(self, export: VdiExport) -> None:
        """Tell ``export`` when its catalog entry changes (one watch per vid at a time)."""
        vid = export.entry["vid"]
        followers = self._followers.get(vid)
        if followers is None:
            followers = self._followers[vid] = set()
            try:
                self.vdis.catalog.watch(vid, self._entry_changed)
            except Exception as exc:
                del self._followers[vid]
                log.info("vid=%06x: no catalog watch: %s", vid, exc)
                return
        followers.add(export)

    def _entry_changed(self, vid: int) -> None:
        for export in self._followers.pop(vid, ()):
            if export.closed or export.entry["vid"] != vid:
                continue
            export.moved = True
            if export.writer is None:
                self._quietly(self.follow_working, export)
            else:
                self._watch_entry(export)   # a holder: its live snapshot moves it

    def follow_working(self, export: VdiExport) -> None:
        """A connection without the write right: after a snapshot moved the VDI to a new
        working vid, read (and be attached to) that one."""
        if not export.moved or export.writer is not None or export.closed:
            return
        export.moved = False
        entry = self.vdis.working(export.entry["name"])
        if entry["vid"] != export.entry["vid"]:
            volume = self.vdis.open_volume(entry)
            volume.follow = True
            self._move_attachment(export, entry["vid"])
            export.entry, export.volume = entry, volume
            log.info("vdi=%s: %s now follows vid=%06x", entry["name"], export.client,
                     entry["vid"])
        self._watch_entry(export)

    def _move_attachment(self, export: VdiExport, vid: int) -> None:
        if self.attachments is None or export.attachment is None:
            return
        old, export.attachment = export.attachment, self.attachments.attach(
            vid, self.node_id, export.client)
        self._quietly(self.attachments.detach, old)

    def reattach(self) -> None:
        """After a new ZooKeeper session: the attachments went with the old one."""
        if self.attachments is None:
            return
        for export in list(self._working):
            if not export.closed:
                try:
                    export.attachment = self.attachments.attach(
                        export.entry["vid"], self.node_id, export.client)
                except Exception as exc:
                    log.warning("vdi=%s: attachment of %s not re-created: %s",
                                export.entry["name"], export.client, exc)

    def live_snapshot(self, vid: int, tag: str, freeze):
        """Snapshot the VDI ``vid`` whose lock an export here holds; None when none does.

        ``freeze(entry, tag, objmap, before_flip)`` is the catalog change
        (`SnapshotService.freeze`); it runs with the export quiesced.
        """
        export = self._attached.get(vid)
        if export is None:
            return None
        old_writer = None
        try:
            with export.quiesced():
                if export.closed or export.revoked or export.writer is None \
                        or export.entry["vid"] != vid:
                    return None     # detached or already moved on: the caller looks again
                volume = export.volume
                objmap = volume.objmap.copy()
                taken: list = []

                def lock_new(new: dict) -> None:
                    taken.append(self.vdis.take(new, export.client))
                try:
                    result = freeze(export.entry, tag, objmap, before_flip=lock_new)
                except BaseException:
                    for writer in taken:
                        self.vdis.give_back(writer)
                    raise
                new = result["working"]
                old_writer, export.writer = export.writer, taken[0]
                export.volume = Volume(new["vid"], volume.size, volume.object_size,
                                       volume.copies, export.writer, objmap, readonly=False)
                export.entry = new
                export.moved = False
                self._not_holding(vid)
                # the old lock's watch fires on release; _revoke ignores it (moved on)
                self._holding(export)
                self._quietly(self._move_attachment, export, new["vid"])
                self._watch_entry(export)
        finally:
            if old_writer is not None:
                self.vdis.give_back(old_writer)
        if export.closed:           # the client left during the snapshot
            self._not_holding(new["vid"])
            self.vdis.give_back(export.writer)
        log.info("vdi=%s live snapshot %r: export moved from vid=%06x to vid=%06x",
                 new["name"], tag, vid, new["vid"])
        return result

    def revoke(self, export: VdiExport) -> None:
        """The export lost the write right (a mutation was refused as stale): drop it."""
        self._revoke(export, export.entry["vid"])

    def _revoke(self, export: VdiExport, vid: int | None = None) -> None:
        if vid is not None and export.entry["vid"] != vid:
            return  # the lock of a vid this export left behind (live snapshot)
        if self._attached.get(export.entry["vid"]) is not export or export.handing_over:
            return  # already detached normally, or being handed over
        self._not_holding(export.entry["vid"])
        export.revoked = True
        log.warning("vdi=%s lock gone: dropping its NBD client %s", export.entry["name"],
                    export.client)
        if self.server is not None:
            self.server.drop_export(export)

    def detached(self, export: VdiExport) -> None:
        export.closed = True
        if not export.working:
            return
        self._working.discard(export)
        self.qos.detach(export)
        self._followers.get(export.entry["vid"], set()).discard(export)
        vid = export.entry["vid"]
        if self._attached.get(vid) is export:
            self._not_holding(vid)
            if not export.revoked and export.writer is not None:
                self._quietly(self.vdis.give_back, export.writer)
        if export.attachment is not None:
            self._quietly(self.attachments.detach, export.attachment)
        log.info("vdi=%s detached by %s", export.entry["name"], export.client)

    @staticmethod
    def _quietly(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:    # the session may be gone: its znodes went with it
            log.info("%s failed: %s", getattr(fn, "__name__", fn), exc)

    def attached_vids(self) -> set[int]:
        return set(self._attached)

    def is_attached(self, vid: int) -> bool:
        return vid in self._attached
