"""VDI operations of one sheep: the catalog in ZooKeeper plus volumes on the gateway.

A catalog entry (``/vdis/<vid>``) is the VDI's identity: name, vid, size,
copies, creation time, snapshot id, and for snapshots their tag.  The object
map lives in the inode object, a replicated object like any other.  The vid of
a new entry is the first free slot of the name's linear-probing run; creating
the catalog znode is the compare-and-set that settles races between gateways.

Which entries users see, and when a deleted entry's objects can go, are the
pure rules of `vdi.family`; snapshots, clones and rollback are in
`sheep.volumes.snapshots`, reclaim in `sheep.volumes.reclaim`.

A working VDI's ``snap_id`` is the id its next snapshot will get (1 for a new
VDI), as in Sheepdog.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

from common.errors import (
    AlreadyExists,
    InvalidRequest,
    Locked,
    NoObject,
    NoSpace,
    NotFound,
    NotReady,
    Unavailable,
)
from sheep.volumes.fencing import VdiFencing
from sheep.volumes.reclaim import Reclaimer
from sheep.volumes.writer import VdiWriter
from vdi import family, objects
from vdi.inode import ObjectMap
from vdi.vid import first_free
from vdi.volume import Volume

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 256
INTERNAL_FIELDS = ("hidden", "replaces")


def validate_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidRequest("VDI name must not be empty")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest(f"VDI name longer than {MAX_NAME_BYTES} bytes")
    if any(c in name for c in "/@") or any(ord(c) < 32 or c.isspace() for c in name):
        raise InvalidRequest(f"invalid VDI name {name!r}: no '/', '@', spaces or control characters")


class VdiService:
    def __init__(self, catalog, gateway, cluster_format: Callable[[], dict | None], *,
                 locks=None, attachments=None, node_id: str = "",
                 session: Callable[[], int] = lambda: 0) -> None:
        self.catalog = catalog
        self.gateway = gateway
        self.locks = locks
        self.attachments = attachments      # coordinator.attachments.Attachments, or None
        self.node_id = node_id
        self.session = session              # this node's ZooKeeper session generation
        self._cluster_format = cluster_format
        self.fencing = VdiFencing(locks, gateway, node_id) if locks is not None else None
        self.reclaimer = Reclaimer(self)

    # -- the write right ---------------------------------------------------------
    def take(self, entry: dict, client: str) -> VdiWriter:
        """Lock ``entry`` for writing (fenced, resynced: `sheep.volumes.fencing`); returns the
        writer its mutations must go through.  Locked when someone holds it."""
        session = self.session()   # read before the lock: a loss in between fails writes
        if self.fencing is None:
            return VdiWriter(self.gateway, entry["vid"], self.generation(entry["vid"]), None)
        lock = self.fencing.take(entry["vid"], int(entry["copies"]), client)
        return VdiWriter(self.gateway, entry["vid"], lock["generation"], session, lock)

    def settle_if_unclean(self, entry: dict, client: str) -> None:
        """Before a connection reads a VDI nobody holds: if its last holder let go
        uncleanly (crashed, lost its session, its lock was broken), take and give back
        the lock, which resyncs the objects that holder may have left apart."""
        if self.fencing is None or self.locks.state(entry["vid"]).get("clean", True):
            return
        try:
            writer = self.take(entry, client)
        except Locked:
            return                  # someone holds it now: they resynced
        self.give_back(writer)

    def give_back(self, writer: VdiWriter, clean: bool | None = None) -> None:
        if self.fencing is not None:
            self.fencing.give_back(writer.vid, writer, clean)

    @contextlib.contextmanager
    def taken(self, entry: dict, client: str):
        """The write right for the duration of a short operation."""
        writer = self.take(entry, client)
        try:
            yield writer
        finally:
            self.give_back(writer)

    @contextlib.contextmanager
    def exclusive(self, entry: dict, what: str, client: str):
        """The write right for an operation that replaces or rewrites a VDI (delete,
        restore, rollback, alter-copy): refused with one `Locked` saying what could not
        be done while anyone holds or attaches it, checked again once the lock is held
        (attaching does not take the lock)."""
        self.refuse_if_locked(entry, what)
        try:
            writer = self.take(entry, client)
        except Locked as exc:
            raise Locked(f"cannot {what} VDI '{entry['name']}': it is locked ({exc.message})",
                         holder=exc.data.get("holder")) from None
        try:
            self.refuse_if_attached(entry, what)
            yield writer
        finally:
            self.give_back(writer)

    def holds(self, writer: VdiWriter) -> bool:
        """Whether ``writer``'s lock is still this node's, at its generation (not broken,
        not lost with the session and taken again by someone)."""
        if self.locks is None or writer.lock is None:
            return True
        lock = self.locks.get(writer.vid)
        return lock is not None and lock.get("node_id") == self.node_id \
            and lock.get("generation") == writer.generation

    def generation(self, vid: int) -> int:
        """The current lock generation of ``vid`` (for writes without the lock: the inode of
        a new entry, reclaim of a deleted one)."""
        return self.locks.generation(vid) if self.locks is not None else 0

    def unlocked_writer(self, vid: int) -> VdiWriter:
        """A writer for a vid nobody can attach (hidden while created, or deleted)."""
        return VdiWriter(self.gateway, vid, self.generation(vid), None)

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
    def all_entries(self) -> list[dict]:
        """Every catalog entry, deleted and hidden ones included."""
        self.format()
        return self.catalog.list()

    def entries(self) -> list[dict]:
        """The entries users see (`vdi.family.visible`), by name then snapshot id."""
        return sorted(family.visible(self.all_entries()),
                      key=lambda e: (e["name"], not e.get("snapshot"), e.get("snap_id", 0)))

    def working(self, name: str) -> dict:
        validate_name(name)
        found = family.working_of(self.all_entries(), name)
        if found is None:
            raise NotFound(f"VDI '{name}' not found")
        return found

    def snapshot(self, name: str, tag: str, vid: int | None = None) -> dict:
        """A snapshot of ``name`` by its tag or its snapshot id; with ``vid``, NotFound
        unless it is that entry (the tag was deleted and made again meanwhile)."""
        validate_name(name)
        found = family.find_snapshot(self.all_entries(), name, str(tag))
        if found is None:
            raise NotFound(f"snapshot '{tag}' of VDI '{name}' not found")
        if vid is not None and found["vid"] != vid:
            raise NotFound(f"snapshot '{tag}' of VDI '{name}' is vid {found['vid']:06x} now, "
                           f"not {vid:06x}: it was deleted and made again meanwhile")
        return found

    def liveness(self, with_maps: bool = True) -> family.Liveness:
        """Which objects live VDIs reference, from one consistent catalog listing (and the
        maps of its live entries when ``with_maps``): what recovery follows."""
        fmt = self.format()
        for _attempt in range(20):
            entries = self.catalog.list()
            maps = None
            if with_maps:
                maps = {}
                for e in entries:
                    if not family.is_live(e):
                        continue
                    try:
                        maps[e["vid"]] = self.read_map(e)
                    except NotFound:
                        if e.get("hidden"):   # being created: its map copies live ones
                            maps[e["vid"]] = ObjectMap(0)
                            continue
                        raise Unavailable(f"inode of live VDI '{e['name']}' "
                                          f"({e['vid']:06x}) unreadable") from None
                if self.catalog.list() != entries:
                    continue
            return family.Liveness(entries, maps, default_copies=int(fmt["copies"]))
        raise Unavailable("the catalog kept changing while it was read")

    def check_size(self, size: int) -> int:
        """InvalidRequest unless ``size`` is a VDI size this cluster allows."""
        return self._check_size(size)

    def _check_size(self, size: int) -> int:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidRequest(f"invalid VDI size {size!r}: must be a positive number of bytes")
        if size > self.max_size():
            raise InvalidRequest(f"VDI size {size} exceeds the maximum {self.max_size()}")
        return size

    def allocate(self, fields: dict) -> dict:
        """Create a catalog entry with the first free vid of its name's run; returns it."""
        for _attempt in range(16):
            vid = first_free(fields["name"], family.used_vids(self.catalog.list()))
            entry = {**fields, "vid": vid}
            try:
                self.catalog.create(vid, entry)
            except AlreadyExists:
                continue  # another gateway took that slot first: look again
            return entry
        raise AlreadyExists(f"could not allocate a VDI id for '{fields['name']}' (too much contention)")

    def create(self, name: str, size: int, copies: int | None = None) -> dict:
        validate_name(name)
        fmt = self.format()
        self._check_size(size)
        copies = int(copies or fmt["copies"])
        if not 1 <= copies <= 31:
            raise InvalidRequest(f"invalid number of copies {copies}")
        entries = self.catalog.list()
        if family.working_of(entries, name) is not None:
            raise AlreadyExists(f"VDI '{name}' already exists")
        entry = self.allocate({
            "name": name, "size": size, "copies": copies, "created": time.time(),
            "snap_id": family.next_snap_id(entries, name), "tag": "", "parent": 0,
            "snapshot": False, "block_size_shift": int(fmt["block_size_shift"]), "hidden": True})
        try:
            self.write_inode(entry, ObjectMap(self.nr_indexes(entry)))
            entry = self.publish(entry)
        except BaseException:
            self.forget(entry)
            raise
        log.info("vdi=%s vid=%06x created size=%d copies=%d", name, entry["vid"], size, copies)
        return entry

    def publish(self, entry: dict) -> dict:
        """Make a hidden entry an ordinary one; if another working VDI of the same name
        appeared meanwhile (a racing create or clone), give ours up: AlreadyExists."""
        rivals = [e for e in family.visible(self.catalog.list())
                  if e["name"] == entry["name"] and not e.get("snapshot") and e["vid"] != entry["vid"]
                  and not e.get("hidden") and not entry.get("replaces")]
        if rivals:
            raise AlreadyExists(f"VDI '{entry['name']}' already exists")
        entry = {k: v for k, v in entry.items() if k not in INTERNAL_FIELDS}
        self.catalog.update(entry["vid"], entry)
        return entry

    def forget(self, entry: dict) -> None:
        """Undo an ``allocate`` whose entry never became visible (best effort)."""
        try:
            self.unlocked_writer(entry["vid"]).remove(objects.inode_oid(entry["vid"]),
                                                      entry["copies"])
        except Exception as exc:
            log.warning("vid=%06x inode cleanup failed: %s", entry["vid"], exc)
        try:
            self.catalog.delete(entry["vid"])
        except NotFound:
            pass

    def nr_indexes(self, entry: dict) -> int:
        return objects.nr_indexes(entry["size"], 1 << entry["block_size_shift"])

    def write_inode(self, entry: dict, objmap: ObjectMap) -> None:
        """The inode of a new (hidden) entry: nobody can attach it yet."""
        header = {k: entry.get(k) for k in ("name", "vid", "size", "block_size_shift", "parent",
                                              "created")}
        Volume.create_inode(self.unlocked_writer(entry["vid"]), entry["vid"], header, objmap,
                            entry["copies"])

    def read_map(self, entry: dict) -> ObjectMap:
        """The persisted object map of ``entry`` (NotFound when its inode is missing)."""
        return self.open_volume(entry, readonly=True).objmap

    def mark_deleted(self, entry: dict) -> None:
        """The entry is no longer live (CAS against a concurrent change), then reclaim."""
        current, version = self.catalog.get_with_version(entry["vid"])
        if current.get("deleted"):
            raise NotFound(f"VDI '{entry['name']}' is already deleted")
        if bool(current.get("snapshot")) != bool(entry.get("snapshot")):
            raise AlreadyExists(f"VDI '{entry['name']}' changed meanwhile (snapshot taken); retry",
                                conflict=True)
        self.catalog.update(entry["vid"], {**current, "deleted": True, "deleted_at": time.time()},
                            expected_version=version)

    def delete(self, name: str) -> None:
        """Delete the working VDI of ``name``; objects its snapshots or clones share stay."""
        entry = self.working(name)
        with self.exclusive(entry, "delete", "delete"):   # no write slips in meanwhile
            self.mark_deleted(entry)
        log.info("vdi=%s vid=%06x deleted", name, entry["vid"])
        self.reclaimer.run()

    def delete_snapshot(self, name: str, tag: str) -> dict:
        entry = self.snapshot(name, tag)
        self.mark_deleted(entry)
        log.info("vdi=%s snapshot=%s vid=%06x deleted", name, tag, entry["vid"])
        self.reclaimer.run()
        return entry

    def resize(self, name: str, size: int) -> dict:
        entry = self.working(name)
        self._check_size(size)
        if size < entry["size"]:
            raise InvalidRequest(f"VDI '{name}' can only grow ({size} < {entry['size']})")
        entry = {**entry, "size": size}
        self.catalog.update(entry["vid"], entry)
        return entry

    def refuse_if_locked(self, entry: dict, what: str = "change") -> None:
        if self.locks is None:
            return
        lock = self.locks.get(entry["vid"])
        if lock is not None:
            client = str(lock.get("client"))
            how = (f"attached by node {lock.get('node_id')} (client {client})" if ":" in client
                   else f"locked by node {lock.get('node_id')} for '{client}'")  # an operation
            raise Locked(f"cannot {what} VDI '{entry['name']}': it is {how}",
                         holder=lock.get("node_id"))
        self.refuse_if_attached(entry, what)

    def refuse_if_attached(self, entry: dict, what: str = "change") -> None:
        """Locked when any NBD connection has the VDI attached (with the write right or
        not); call it again with the lock held: attaching does not take the lock."""
        attached = self.attachments.of(entry["vid"]) if self.attachments is not None else []
        if attached:
            first = attached[0]
            raise Locked(f"cannot {what} VDI '{entry['name']}': it is attached by "
                         f"{len(attached)} client(s) (node {first.get('node_id')}, client "
                         f"{first.get('client')})", holder=first.get("node_id"))

    # -- data ------------------------------------------------------------------
    def open_volume(self, entry: dict, readonly: bool = False, gateway=None) -> Volume:
        """The VDI's volume; ``gateway`` replaces the node's (e.g. a session-bound one)."""
        try:
            return Volume.open(gateway or self.gateway, entry["vid"], entry["size"],
                               1 << entry["block_size_shift"], entry["copies"],
                               readonly=readonly or bool(entry.get("snapshot")))
        except NoObject:
            raise NotFound(f"inode of VDI '{entry['name']}' is missing") from None

    def usage(self, entry: dict) -> dict:
        """``used_bytes`` (objects this VDI owns) and ``shared_bytes`` (objects it shares)."""
        try:
            owners = self.read_map(entry).entries()
        except NotFound:
            owners = ()
        used, shared = family.usage(entry["vid"], owners, 1 << entry["block_size_shift"])
        return {"used_bytes": used, "shared_bytes": shared}

    def used_bytes(self, entry: dict) -> int:
        return self.usage(entry)["used_bytes"]

    def read(self, name: str, offset: int, length: int) -> bytes:
        return self.open_volume(self.working(name), readonly=True).read(offset, length)

    def check_writable(self) -> None:
        """Fenced (this node lost its ZooKeeper session): refuse at once, before any
        ZooKeeper call that would only block until the session comes back."""
        self.gateway.guard.check()

    def write(self, name: str, offset: int, data) -> None:
        self.check_writable()
        entry = self.working(name)
        if offset < 0:
            raise InvalidRequest(f"negative offset {offset}")
        if offset + len(data) > entry["size"]:
            raise NoSpace(f"write of {len(data)} bytes at {offset} is past the end of VDI "
                          f"'{name}' ({entry['size']} bytes)")
        with self.taken(entry, "admin-api") as writer:
            self._write(self.open_volume(entry, gateway=writer), offset, data)
            writer.flush()

    def _write(self, volume: Volume, offset: int, data) -> None:
        with self.reclaimer.watching(volume, offset, len(data)):
            volume.write(offset, data)
