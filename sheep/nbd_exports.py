"""NBD exports of this sheep: VDIs as `nbd_frontend` Exports.

Export ``NAME`` is the working VDI, read-write, and holds the VDI's lock (an
ephemeral znode of this node's session) from attach to detach.  ``NAME@TAG`` or
``NAME@ID`` is a snapshot, read-only, lock-free.  When the lock disappears
while attached (``collie vdi lock unlock`` or a lost session) the export is
revoked at once: every later request fails and the NBD server drops the client.
"""
from __future__ import annotations

import logging

from nbd_frontend.export import HOLE, ZERO
from sheep.errors import Fenced

log = logging.getLogger(__name__)


def split_export_name(name: str) -> tuple[str, str | None]:
    """``"vol@snap"`` -> ("vol", "snap"); ``"vol"`` -> ("vol", None)."""
    base, sep, tag = name.partition("@")
    return base, (tag if sep else None)


class VdiExport:
    def __init__(self, name: str, entry: dict, volume, provider: "VdiExportProvider",
                 locked: bool) -> None:
        self.name = name
        self.entry = entry
        self.volume = volume
        self.size = volume.size
        self.readonly = volume.readonly
        self._provider = provider
        self._locked = locked
        self.revoked = False

    def _check(self) -> None:
        if self.revoked:
            raise Fenced(f"lock of VDI '{self.entry['name']}' was broken; export revoked")

    def read(self, offset: int, length: int) -> bytes:
        self._check()
        return self.volume.read(offset, length)

    def write(self, offset: int, data, fua: bool = False) -> None:
        self._check()
        self.volume.write(offset, data)
        if fua:
            self.volume.flush()

    def flush(self) -> None:
        self._check()
        self.volume.flush()

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self._check()
        self.volume.trim(offset, length)
        if fua:
            self.volume.flush()

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool = False) -> None:
        self._check()
        self.volume.write_zeroes(offset, length, may_trim=may_trim)
        if fua:
            self.volume.flush()

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
        entry = self._entry(name)
        if entry.get("snapshot"):
            return VdiExport(name, entry, self.vdis.open_volume(entry, readonly=True), self,
                             locked=False)
        vid = entry["vid"]
        self.locks.acquire(vid, self.node_id, client_addr)
        try:
            volume = self.vdis.open_volume(entry)
        except BaseException:
            self.locks.release(vid, self.node_id)
            raise
        export = VdiExport(name, entry, volume, self, locked=True)
        self._attached[vid] = export
        self.locks.watch(vid, lambda _vid, e=export: self._revoke(e))
        log.info("vdi=%s vid=%06x attached by %s", entry["name"], vid, client_addr)
        return export

    def _revoke(self, export: VdiExport) -> None:
        if self._attached.get(export.entry["vid"]) is not export:
            return  # already detached normally
        export.revoked = True
        log.warning("vdi=%s lock gone: dropping its NBD client", export.entry["name"])
        if self.server is not None:
            self.server.drop_export_clients(export.name)

    def detached(self, export: VdiExport) -> None:
        if not export._locked:
            return
        vid = export.entry["vid"]
        if self._attached.get(vid) is export:
            del self._attached[vid]
            if not export.revoked:
                try:
                    self.locks.release(vid, self.node_id)
                except Exception as exc:  # the session may be gone: the znode went with it
                    log.info("vdi=%s lock release failed: %s", export.entry["name"], exc)
        log.info("vdi=%s detached", export.entry["name"])

    def attached_vids(self) -> set[int]:
        return set(self._attached)

    def is_attached(self, vid: int) -> bool:
        return vid in self._attached

