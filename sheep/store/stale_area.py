"""The files of the stale area: ``stale/<epoch>/<oid hex>``, copies no longer placed here.

The store moves copies in (`ObjectStore.move_to_stale`, under the object's lock); this
class lists, reads and purges them.  What the stale area is for, and when it is purged:
`sheep.recovery.stale`.
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil

from common.errors import Corrupt, NoObject
from sheep.store.objfile import ZERO, Version
from sheep.store.objio import fsync_dir, oid_name, parse_oid, read_header, whole_verified

log = logging.getLogger(__name__)


class StaleArea:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def epochs(self) -> list[int]:
        out = []
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False) and entry.name.isdigit():
                out.append(int(entry.name))
        return sorted(out)

    def dir_for(self, epoch: int) -> tuple[pathlib.Path, bool]:
        """``stale/<epoch>`` (created when missing: then True)."""
        d = self.root / str(epoch)
        if d.is_dir():
            return d, False
        d.mkdir(exist_ok=True)
        return d, True

    def copies(self, oid: int | None = None):
        """(oid, version, path) of the stale copies of ``oid``, or of every oid."""
        for stale_epoch in self.epochs():
            d = os.path.join(self.root, str(stale_epoch))
            if oid is not None:
                path = os.path.join(d, oid_name(oid))
                if os.path.exists(path):
                    yield oid, read_header(path) or ZERO, path
                continue
            for entry in os.scandir(d):
                found = parse_oid(entry.name)
                if found is not None:
                    yield found, read_header(entry.path) or ZERO, entry.path

    def list(self) -> dict[int, Version]:
        """oid -> the newest version among the stale copies of that oid."""
        out: dict[int, Version] = {}
        for oid, version, _path in self.copies():
            if oid not in out or version > out[oid]:
                out[oid] = version
        return out

    def version_of(self, oid: int) -> Version | None:
        """The newest version among ``oid``'s stale copies; None when there are none."""
        best = None
        for _oid, version, _path in self.copies(oid):
            if best is None or version > best:
                best = version
        return best

    def read(self, oid: int) -> tuple[Version, bytes]:
        """The newest stale copy of ``oid``: (its version, its verified bytes).
        NoObject when no stale copy exists; Corrupt when it fails its sums."""
        best: tuple[Version, str] | None = None
        for _oid, version, path in self.copies(oid):
            if best is None or version >= best[0]:
                best = (version, path)
        if best is not None:
            try:
                fd = os.open(best[1], os.O_RDONLY)
            except FileNotFoundError:
                fd = None   # purged meanwhile
            if fd is not None:
                try:
                    data, bad = whole_verified(fd)
                finally:
                    os.close(fd)
                if bad:
                    raise Corrupt(f"stale copy of {oid_name(oid)} fails its checksums",
                                  oid=oid, blocks=bad[:64])
                return best[0], data
        raise NoObject(f"no stale copy of object {oid_name(oid)}", oid=oid)

    def purge(self, upto_epoch: int) -> int:
        """Delete every ``stale/<epoch>`` with epoch <= upto_epoch (durably: a purged copy
        does not come back at a crash); returns how many dirs."""
        purged = 0
        for epoch in self.epochs():
            if epoch <= upto_epoch:
                shutil.rmtree(self.root / str(epoch), ignore_errors=True)
                purged += 1
        if purged:
            fsync_dir(str(self.root))
            log.info("purged %d stale epoch dirs up to epoch=%d", purged, upto_epoch)
        return purged
