"""VDI operations of one sheep: the catalog in ZooKeeper plus volumes on the gateway.

A catalog entry (``/vdis/<vid>``) is the VDI's identity: name, vid, size,
copies, creation time, and for snapshots their tag and id.  The object map
lives in the inode object, a replicated object like any other.  The vid of a
new name is the first free slot of the name's linear-probing run; creating the
catalog znode is the compare-and-set that settles races between gateways.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from sheep.errors import (AlreadyExists, InvalidRequest, Locked, NoObject, NoSpace, NotFound,
                          NotReady)
from vdi import objects
from vdi.inode import ObjectMap
from vdi.vid import probe
from vdi.volume import Volume

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 256


def validate_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidRequest("VDI name must not be empty")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest(f"VDI name longer than {MAX_NAME_BYTES} bytes")
    if any(c in name for c in "/@") or any(ord(c) < 32 or c.isspace() for c in name):
        raise InvalidRequest(f"invalid VDI name {name!r}: no '/', '@', spaces or control characters")


class VdiService:
    def __init__(self, catalog, gateway, cluster_format: Callable[[], dict | None], *,
                 locks=None, node_id: str = "") -> None:
        self.catalog = catalog
        self.gateway = gateway
        self.locks = locks
        self.node_id = node_id
        self._cluster_format = cluster_format

    # -- cluster facts ---------------------------------------------------------
    def format(self) -> dict:
        fmt = self._cluster_format()
        if not fmt:
            raise NotReady("cluster is not formatted (run: collie cluster format --copies N)")
        return fmt

    def object_size(self) -> int:
        return 1 << int(self.format()["block_size_shift"])

    def max_size(self) -> int:
        return self.object_size() * objects.MAX_INDEXES

    # -- catalog ---------------------------------------------------------------
    def entries(self) -> list[dict]:
        self.format()
        return sorted((e for e in self.catalog.list() if not e.get("deleted")),
                      key=lambda e: (e["name"], e.get("snap_id", 0)))

    def working(self, name: str) -> dict:
        validate_name(name)
        for e in self.entries():
            if e["name"] == name and not e.get("snapshot"):
                return e
        raise NotFound(f"VDI '{name}' not found")

    def snapshot(self, name: str, tag: str) -> dict:
        """A snapshot of ``name`` by its tag or its snapshot id."""
        validate_name(name)
        for e in self.entries():
            if e["name"] == name and e.get("snapshot") and (
                    e.get("tag") == tag or str(e.get("snap_id")) == tag):
                return e
        raise NotFound(f"snapshot '{tag}' of VDI '{name}' not found")

    def _check_size(self, size: int) -> int:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidRequest(f"invalid VDI size {size!r}: must be a positive number of bytes")
        if size > self.max_size():
            raise InvalidRequest(f"VDI size {size} exceeds the maximum {self.max_size()}")
        return size

    def create(self, name: str, size: int, copies: int | None = None) -> dict:
        validate_name(name)
        fmt = self.format()
        self._check_size(size)
        copies = int(copies or fmt["copies"])
        if not 1 <= copies <= 31:
            raise InvalidRequest(f"invalid number of copies {copies}")
        entry = {"name": name, "size": size, "copies": copies, "created": time.time(),
                 "snap_id": 0, "tag": "", "parent": 0, "snapshot": False,
                 "block_size_shift": int(fmt["block_size_shift"])}
        for _attempt in range(16):
            existing = {e["vid"]: e for e in self.catalog.list()}
            for vid in probe(name):
                other = existing.get(vid)
                if other is None:
                    break
                if other["name"] == name and not other.get("snapshot") and not other.get("deleted"):
                    raise AlreadyExists(f"VDI '{name}' already exists")
            entry["vid"] = vid
            try:
                self.catalog.create(vid, entry)
            except AlreadyExists:
                continue  # another gateway took that slot first: look again
            self._write_new_inode(entry, ObjectMap(self._nr_indexes(entry)))
            log.info("vdi=%s vid=%06x created size=%d copies=%d", name, vid, size, copies)
            return entry
        raise AlreadyExists(f"could not allocate a VDI id for '{name}' (too much contention)")

    def _nr_indexes(self, entry: dict) -> int:
        osz = 1 << entry["block_size_shift"]
        return (entry["size"] + osz - 1) // osz

    def _write_new_inode(self, entry: dict, objmap: ObjectMap) -> None:
        header = {k: entry[k] for k in ("name", "vid", "size", "block_size_shift", "parent",
                                          "created")}
        Volume.create_inode(self.gateway, entry["vid"], header, objmap, entry["copies"])

    def delete(self, name: str) -> None:
        entry = self.working(name)
        self._refuse_if_locked(entry)
        vol = self.open_volume(entry)
        vid, copies = entry["vid"], entry["copies"]
        for idx in range(self._nr_indexes(entry)):
            if vol.objmap.get(idx) == vid:
                self.gateway.remove(objects.data_oid(vid, idx), copies)
        self.gateway.remove(objects.inode_oid(vid), copies)
        self.catalog.delete(vid)
        log.info("vdi=%s vid=%06x deleted", name, vid)

    def resize(self, name: str, size: int) -> dict:
        entry = self.working(name)
        self._check_size(size)
        if size < entry["size"]:
            raise InvalidRequest(f"VDI '{name}' can only grow ({size} < {entry['size']})")
        entry = {**entry, "size": size}
        self.catalog.update(entry["vid"], entry)
        return entry

    def _refuse_if_locked(self, entry: dict) -> None:
        if self.locks is None:
            return
        for lock in self.locks.list():
            if lock.get("vid") == entry["vid"]:
                raise Locked(f"VDI '{entry['name']}' is attached by node {lock.get('node_id')} "
                             f"(client {lock.get('client')})", holder=lock.get("node_id"))

    # -- data ------------------------------------------------------------------
    def open_volume(self, entry: dict, readonly: bool = False) -> Volume:
        try:
            return Volume.open(self.gateway, entry["vid"], entry["size"],
                               1 << entry["block_size_shift"], entry["copies"],
                               readonly=readonly or bool(entry.get("snapshot")))
        except NoObject:
            raise NotFound(f"inode of VDI '{entry['name']}' is missing") from None

    def used_bytes(self, entry: dict) -> int:
        try:
            vol = self.open_volume(entry, readonly=True)
        except NotFound:
            return 0
        return vol.objmap.owned_by(entry["vid"]) * (1 << entry["block_size_shift"])

    def read(self, name: str, offset: int, length: int) -> bytes:
        return self.open_volume(self.working(name), readonly=True).read(offset, length)

    def write(self, name: str, offset: int, data) -> None:
        entry = self.working(name)
        if offset < 0:
            raise InvalidRequest(f"negative offset {offset}")
        if offset + len(data) > entry["size"]:
            raise NoSpace(f"write of {len(data)} bytes at {offset} is past the end of VDI "
                          f"'{name}' ({entry['size']} bytes)")
        if self.locks is None:
            self.open_volume(entry).write(offset, data)
            return
        self.locks.acquire(entry["vid"], self.node_id, "admin-api")
        try:
            self.open_volume(entry).write(offset, data)
        finally:
            self.locks.release(entry["vid"], self.node_id)
