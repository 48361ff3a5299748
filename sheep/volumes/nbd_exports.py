"""NBD exports of this sheep: VDIs as `nbd_frontend` Exports.

Export ``NAME`` is the working VDI, read-write, and holds the VDI's lock (an
ephemeral znode of this node's session) from attach to detach, taken through
`VdiService.take` (fenced, resynced after an unclean hand-over: `sheep.volumes.fencing`);
its Volume writes through the `VdiWriter` of that lock, and a write refused as coming
from a superseded generation revokes the export.  At detach the lock is given back
"clean" when every write reached every replica.  ``NAME@TAG`` or
``NAME@ID`` is a snapshot, read-only, lock-free.  When the lock disappears
while attached (``collie vdi lock unlock`` or a lost session) the export is
revoked at once: every later request fails and the NBD server drops the client.

Live snapshot: a working export has a write barrier.  Writes, trims and zeroes
pass it and count themselves in flight; `VdiExport.quiesced` closes it, waits
until nothing is in flight, and reopens it afterwards.  While it is closed the
provider freezes the VDI (`sheep.volumes.snapshots.SnapshotService.freeze`) with the
export's own map, takes the new vid's lock, swaps the export's Volume to the
new working vid and releases the old lock.  Reads are not held: both volumes
read the same bytes while no write runs.
"""
from __future__ import annotations

import contextlib
import logging

from gevent.event import Event
from gevent.lock import Semaphore

from common.errors import Fenced, Locked, StaleGeneration, Unavailable
from nbd_frontend.export import HOLE, ZERO
from vdi.volume import Volume

QUIESCE_TIMEOUT_S = 30.0

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
                 locked: bool, client: str = "", writer=None) -> None:
        self.name = name
        self.entry = entry
        self.volume = volume
        self.writer = writer        # VdiWriter of the lock this export holds, or None
        self.size = volume.size
        self.readonly = volume.readonly
        self.client = client
        self._provider = provider
        self._locked = locked
        self.revoked = False
        self.closed = False
        self._open = Event()        # the write barrier: set = writes may start
        self._open.set()
        self._idle = Event()        # set = no write in flight
        self._idle.set()
        self._in_flight = 0
        self._snapshotting = Semaphore()

    def _check(self) -> None:
        if self.revoked:
            raise Fenced(f"lock of VDI '{self.entry['name']}' was broken; export revoked")

    def _mutate(self, offset: int, length: int, fn, fua: bool) -> None:
        """One write/trim/zeroes: ``fn(volume)`` once past the barrier, counted in flight,
        with reclaim told when it dropped a reference to a shared object (no context
        managers: this is the hot path of every NBD write)."""
        self._check()
        while not self._open.is_set():
            self._open.wait()
        self._check()
        self._in_flight += 1
        self._idle.clear()
        try:
            volume = self.volume
            reclaimer = self._provider.reclaimer
            shared = reclaimer.shared_before(volume, offset, length)
            try:
                fn(volume)
                if fua:
                    volume.flush()
            finally:
                reclaimer.after(volume, shared)
        except StaleGeneration:
            # a newer holder took the VDI (our lock was broken or our session lost)
            self._provider.revoke(self)
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

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

    def read(self, offset: int, length: int) -> bytes:
        self._check()
        return self.volume.read(offset, length)

    def write(self, offset: int, data, fua: bool = False) -> None:
        self._mutate(offset, len(data), lambda v: v.write(offset, data), fua)

    def flush(self) -> None:
        self._check()
        self.volume.flush()

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self._mutate(offset, length, lambda v: v.trim(offset, length), fua)

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool = False) -> None:
        self._mutate(offset, length,
                     lambda v: v.write_zeroes(offset, length, may_trim=may_trim), fua)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check()
        return [(n, HOLE | ZERO if hole else 0)
                for n, hole in self.volume.block_status(offset, length)]

    def close(self) -> None:
        self._provider.detached(self)


class VdiExportProvider:
    """ExportProvider over the VDI service and the lock table."""

    def __init__(self, vdis, locks, node_id: str) -> None:
        self.vdis = vdis
        self.locks = locks
        self.node_id = node_id
        self.server = None                  # the NbdServer, set by the daemon
        self._attached: dict[int, VdiExport] = {}

    @property
    def reclaimer(self):
        return self.vdis.reclaimer

    def list_exports(self) -> list[str]:
        out = []
        for e in self.vdis.entries():
            if e.get("snapshot"):
                out.append(f"{e['name']}@{e.get('tag') or e.get('snap_id')}")
            else:
                out.append(e["name"])
        return out

    def _entry(self, name: str) -> dict:
        base, tag = split_export_name(name)
        if tag is None:
            return self.vdis.working(base)
        return self.vdis.snapshot(base, tag)

    def describe(self, name: str) -> tuple[int, bool]:
        entry = self._entry(name)
        return entry["size"], bool(entry.get("snapshot"))

    def open_export(self, name: str, client_addr: str) -> VdiExport:
        if split_export_name(name)[1] is None:
            self.vdis.check_writable()   # a read-write attach needs the session
        entry = self._entry(name)
        if entry.get("snapshot"):
            return VdiExport(name, entry, self.vdis.open_volume(entry, readonly=True), self,
                             locked=False)
        vid = entry["vid"]
        try:
            writer = self.vdis.take(entry, client_addr)
        except Locked as exc:
            raise Locked(f"VDI '{entry['name']}' is attached elsewhere: {exc.message}",
                         **exc.data) from None
        try:
            volume = self.vdis.open_volume(entry, gateway=writer)
        except BaseException:
            self.vdis.give_back(writer)
            raise
        export = VdiExport(name, entry, volume, self, locked=True, client=client_addr,
                           writer=writer)
        self._attached[vid] = export
        self.locks.watch(vid, lambda gone, e=export: self._revoke(e, gone))
        log.info("vdi=%s vid=%06x attached by %s", entry["name"], vid, client_addr)
        return export

    def live_snapshot(self, vid: int, tag: str, freeze):
        """Snapshot the VDI ``vid`` attached here, if it is; None when it is not.

        ``freeze(entry, tag, objmap, before_flip)`` is the catalog change
        (`SnapshotService.freeze`); it runs with the export quiesced.
        """
        export = self._attached.get(vid)
        if export is None:
            return None
        with export.quiesced():
            if export.closed or export.revoked or export.entry["vid"] != vid:
                return None         # detached or already moved on: the caller looks again
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
            export.volume = Volume(new["vid"], volume.size, volume.object_size, volume.copies,
                                   export.writer, objmap, readonly=False)
            export.entry = new
            self._attached.pop(vid, None)
            self._attached[new["vid"]] = export
        # the old lock's watch fires on release; _revoke ignores it (the export moved on)
        self.locks.watch(new["vid"], lambda gone, e=export: self._revoke(e, gone))
        self.vdis.give_back(old_writer)
        if export.closed:           # the client left during the snapshot
            self._attached.pop(new["vid"], None)
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
        if self._attached.get(export.entry["vid"]) is not export:
            return  # already detached normally
        export.revoked = True
        log.warning("vdi=%s lock gone: dropping its NBD client", export.entry["name"])
        if self.server is not None:
            self.server.drop_export_clients(export.name)

    def detached(self, export: VdiExport) -> None:
        export.closed = True
        if not export._locked:
            return
        vid = export.entry["vid"]
        if self._attached.get(vid) is export:
            del self._attached[vid]
            if not export.revoked:
                try:
                    self.vdis.give_back(export.writer)
                except Exception as exc:  # the session may be gone: the znode went with it
                    log.info("vdi=%s lock release failed: %s", export.entry["name"], exc)
        log.info("vdi=%s detached", export.entry["name"])

    def attached_vids(self) -> set[int]:
        return set(self._attached)

    def is_attached(self, vid: int) -> bool:
        return vid in self._attached

