"""The local object store: one sparse file per object copy (format: `sheep.store.objfile`).

Layout under ``root``::

    obj/<oid as 16 lowercase hex digits>   one file per object: header, block sums, data
    tmp/                                   copies being built (cleaned at start)
    stale/<epoch>/<oid hex>                copies no longer placed here (recovery)

Theory of operation
-------------------
The daemon calls this class from gevent's thread pool, several OS threads at once.

* Every mutation of an object (write, fresh create, install, remove, move to the
  stale area) holds that object's *stripe lock* (one of `STRIPES` real OS locks,
  chosen by oid), so mutations of one object are ordered and a conditional
  install (`install`) compares and replaces atomically.  Reads take no lock.
* A first write (``create=True``) always builds a *fresh* copy, zeros plus the
  written bytes (or the copy-on-write source the caller sends), in ``tmp/`` and
  renames it over whatever file is there: a leftover copy of a deleted or trimmed
  object never shows through a new one.  ``install`` (recovery, repair) does the
  same with a whole copy.  Readers see the old file or the new one, never a mix.
* Every copy carries a `Version`: a write stamps the highest version it has seen
  (writes may arrive out of order).  Versions are kept in memory and written to the
  header at `flush`, before the fsync, so version and data become durable together.
* Every 4 KiB block has a checksum in the file; writes update the sums of the blocks
  they touch (reading the rest of a partly written block).  Reads verify the blocks
  they return: a mismatch is read again under the stripe lock (a write may have been
  between the data and its sum), and if it persists the read raises `Corrupt`.
* ``remove`` leaves a *tombstone* (the version of the removal, in memory) so that a
  recovery pull racing the removal cannot install the removed copy again.
* Each mutation also sets the object's *tick*, a number that changes with every
  mutation in this process: a repair that must not undo a write it did not see
  installs only if the tick is still the one it read (``expect_tick``).

Durability: no write fsyncs; ``flush()`` does (headers, files, directories).  A failed
fsync, or a disk refusing a write (EIO, read-only), is sticky: this copy may lack
acknowledged writes, every later call raises `Unavailable`, the daemon leaves the cluster.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import pathlib
import random
import threading
import time
from typing import Callable

from common.errors import InvalidRequest, NoObject, NoSpace, Unavailable
from common.stages import NULL
from sheep.store import objfile
from sheep.store.fdcache import FdCache
from sheep.store.objfile import BLOCK, ZERO, Version
from sheep.store.objio import (build_copy, fsync_dir, oid_name, parse_oid, read_header,
                               write_in_place)
from sheep.store.space import SpaceReserve
from sheep.store.stale_area import StaleArea
from sheep.store.reads import ReadMixin
from sheep.store.verify import VerifyMixin

log = logging.getLogger(__name__)

OID_LIMIT = 1 << 64
STRIPES = 64
ANY_TICK = None


class ObjectStore(ReadMixin, VerifyMixin):
    """Blocking, thread-safe store of object copies of at most ``max_object_bytes``.

    A write that would leave the filesystem with less than ``reserve_bytes`` free
    raises ``NoSpace``.  ``clock`` (monotonic seconds) is injectable for tests;
    ``lock_factory`` makes the OS locks (the daemon passes the unpatched one).
    """

    def __init__(self, root: pathlib.Path, max_object_bytes: int,
                 reserve_bytes: int = 64 << 20,
                 clock: Callable[[], float] = time.monotonic,
                 lock_factory: Callable = threading.Lock) -> None:
        if max_object_bytes > objfile.MAX_DATA_BYTES:
            raise InvalidRequest(f"objects larger than {objfile.MAX_DATA_BYTES} bytes")
        self.root = pathlib.Path(root)
        self.max_object_bytes = max_object_bytes
        self.reserve_bytes = reserve_bytes
        self.space = SpaceReserve(self.root, reserve_bytes, clock, lock_factory())
        self._obj = self.root / "obj"
        self._tmp = self.root / "tmp"
        created = [d for d in (self._obj, self._tmp, self.root / "stale") if not d.is_dir()]
        for d in created:
            d.mkdir(parents=True, exist_ok=True)
        if created:                 # the new directories' entries survive a crash
            fsync_dir(str(self.root))
        self.stale = StaleArea(self.root / "stale")
        self._obj_dir = str(self._obj)
        self._stripes = [lock_factory() for _ in range(STRIPES)]
        self._fds = FdCache(lock=lock_factory())
        self._tmp_counter = itertools.count()
        self._ticks_source = itertools.count(random.getrandbits(48) << 8)
        self._versions: dict[int, Version] = {}
        self._ticks: dict[int, int] = {}
        self._blocks: dict[int, int] = {}      # oid -> st_blocks (512-byte units)
        self._dirty: set[int] = set()          # mutated since the last flush
        self._dir_dirty = False                # obj/ entries changed since flush
        self._stale_dirty: set[str] = set()    # stale dirs whose entries changed since flush
        self._tombstones: dict[int, Version] = {}
        self.corrupt_reads = 0                 # reads that found a block failing its sum
        self.fsync_timing = NULL               # .observe(s) per fsync (the daemon's histogram)
        self._failed: str | None = None
        self._flush_lock = lock_factory()      # one flush at a time (see flush)
        self._clean_tmp()
        self._scan()

    # ------------------------------------------------------------ start-up

    def _clean_tmp(self) -> None:
        for entry in os.scandir(self._tmp):
            try:
                os.unlink(entry.path)
            except OSError as exc:
                log.warning("cannot remove leftover tmp file %s: %s", entry.path, exc)

    def _scan(self) -> None:
        for entry in os.scandir(self._obj):
            oid = parse_oid(entry.name)
            if oid is None or not entry.is_file(follow_symlinks=False):
                log.warning("ignoring unexpected entry %s in %s", entry.name, self._obj)
                continue
            version = read_header(entry.path)
            if version is None:
                log.warning("object oid=%016x has no valid header; treating it as oldest", oid)
                version = ZERO
            self._versions[oid] = version
            self._ticks[oid] = next(self._ticks_source)
            self._blocks[oid] = entry.stat(follow_symlinks=False).st_blocks
        log.info("store %s: %d objects", self.root, len(self._versions))

    # ------------------------------------------------------------ helpers

    def path_of(self, oid: int) -> str:
        """The path of an object's file (it may not exist)."""
        return os.path.join(self._obj_dir, oid_name(oid))

    def _stripe(self, oid: int):
        return self._stripes[(oid ^ (oid >> 32)) % STRIPES]

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise Unavailable(f"store {self.root} failed ({self._failed}); this node leaves "
                              "the cluster")

    @property
    def failed(self) -> str | None:
        """Why the store stopped serving (a failed fsync), or None."""
        return self._failed

    def _check_range(self, oid: int, offset: int, length: int) -> None:
        if not 0 <= oid < OID_LIMIT:
            raise InvalidRequest(f"bad oid {oid}", oid=oid)
        if offset < 0 or length < 0:
            raise InvalidRequest(f"negative offset {offset} or length {length}", oid=oid)
        if offset + length > self.max_object_bytes:
            raise InvalidRequest(
                f"range {offset}+{length} exceeds object size {self.max_object_bytes}",
                oid=oid)

    def _tmp_path(self, oid: int) -> str:
        return os.path.join(self._tmp, f"{oid_name(oid)}.{os.getpid()}."
                                       f"{threading.get_ident()}.{next(self._tmp_counter)}")

    def _mutated(self, oid: int, version: Version, blocks: int | None = None) -> None:
        self._versions[oid] = version
        self._ticks[oid] = next(self._ticks_source)
        if blocks is not None:
            self._blocks[oid] = blocks
        self._dirty.add(oid)

    def _forget(self, oid: int) -> None:
        self._ticks.pop(oid, None)              # before the discard (see FdCache.adopt)
        self._fds.discard(oid)
        self._versions.pop(oid, None)
        self._blocks.pop(oid, None)
        self._dirty.discard(oid)

    # ------------------------------------------------------------ writes

    def _fd_locked(self, oid: int) -> int:
        """A leased cached descriptor (stripe lock held); NoObject when missing."""
        try:
            return self._fds.acquire(oid, self.path_of(oid))
        except FileNotFoundError:
            raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None

    def write(self, oid: int, offset: int, data, version: Version, create: bool = False,
              sums=None) -> None:
        """Write ``data`` (bytes-like) at ``offset`` and stamp ``version``.

        An existing copy is written in place.  ``create`` builds a fresh copy instead
        (zeros plus ``data``), replacing any file there.  Raises NoObject (missing,
        not ``create``), InvalidRequest (range), NoSpace (the write would eat into
        the reserve, or the filesystem is full).  ``sums``: the block sums of a
        block-aligned in-place write, from its gateway (`objio.write_in_place`).
        """
        self._check_usable()
        view = memoryview(data).cast("B")
        self._check_range(oid, offset, view.nbytes)
        self.space.claim(view.nbytes + (BLOCK if create else 0))
        try:
            with self._stripe(oid):
                if create:
                    self._build(oid, offset, view, version)
                else:
                    self._write_in_place(oid, offset, view, version, sums)
        except OSError as exc:
            self._io_error(exc, oid, "writing")
        finally:
            self.space.release(view.nbytes + (BLOCK if create else 0))

    def write_cached(self, oid: int, offset: int, data, version: Version, sums=None) -> bool:
        """A write in place done now, on the caller's thread, if it cannot wait on another
        thread: the descriptor is cached and the object's stripe lock is free at once.
        False: nothing was written (use `write` in the pool).  Raises what `write` raises.

        The event loop calls this for buffered writes (the page cache answers them in
        microseconds; a pool trip costs more than the write).  A writeback stall could
        still block it: the caller measures and backs off (`sheep.replication.replica`).
        """
        view = memoryview(data).cast("B")
        if self._failed is not None or not view.nbytes or oid not in self._ticks:
            return False
        stripe = self._stripe(oid)
        if not stripe.acquire(False):
            return False
        try:
            fd = self._fds.lease(oid)
            if fd is None:
                return False
            self._check_range(oid, offset, view.nbytes)
            self.space.claim(view.nbytes)
            try:
                write_in_place(fd, offset, view, sums)
            except OSError as exc:
                self._io_error(exc, oid, "writing")
            finally:
                self.space.release(view.nbytes)
                self._fds.release(fd)
            current = self._versions.get(oid, ZERO)
            self._mutated(oid, version if version > current else current)
            return True
        finally:
            stripe.release()

    def _write_in_place(self, oid: int, offset: int, view: memoryview, version: Version,
                        sums=None) -> None:
        fd = self._fd_locked(oid)
        try:
            write_in_place(fd, offset, view, sums)
        finally:
            self._fds.release(fd)
        current = self._versions.get(oid, ZERO)
        self._mutated(oid, version if version > current else current)

    def _build(self, oid: int, offset: int, view: memoryview, version: Version,
               whole: bool = False) -> None:
        """A new copy built in tmp/ and renamed into place (stripe lock held)."""
        tmp = self._tmp_path(oid)
        blocks = build_copy(tmp, version, view, offset, whole)
        try:
            os.rename(tmp, self.path_of(oid))
        except BaseException:
            os.unlink(tmp)
            raise
        self._mutated(oid, version, blocks)     # the tick changes before the discard
        self._fds.discard(oid)
        self._dir_dirty = True

    def install(self, oid: int, data, version: Version, *, only_if_newer: bool = False,
                expect_tick=ANY_TICK) -> bool:
        """Atomically replace the copy with a whole new one (recovery, repair); True when
        installed.  ``only_if_newer``: only when ``version`` is newer than this copy and
        than its tombstone.  ``expect_tick``: only when the copy's tick is still that one
        (0: only when there is no copy).  All-zero blocks stay holes."""
        self._check_usable()
        view = memoryview(data).cast("B")
        self._check_range(oid, 0, view.nbytes)
        self.space.claim(view.nbytes + BLOCK)
        try:
            with self._stripe(oid):
                if only_if_newer:
                    floor = max(self._versions.get(oid, ZERO) if oid in self._versions
                                else Version(-1), self._tombstones.get(oid, Version(-1)))
                    if version <= floor:
                        return False
                if expect_tick is not ANY_TICK and self._ticks.get(oid, 0) != expect_tick:
                    return False
                tombstone = self._tombstones.get(oid)
                if oid not in self._versions and tombstone is not None and version <= tombstone:
                    return False    # removed since that copy was made: do not bring it back
                self._build(oid, 0, view, version, whole=True)
                return True
        except OSError as exc:
            self._io_error(exc, oid, "installing")
        finally:
            self.space.release(view.nbytes + BLOCK)

    def remove(self, oid: int, version: Version | None = None) -> None:
        """Delete a copy, leaving a tombstone at ``version``; NoObject when missing (the
        tombstone is left all the same)."""
        self._check_usable()
        with self._stripe(oid):
            if version is not None and version > self._tombstones.get(oid, ZERO):
                self._tombstones[oid] = version
            try:
                os.unlink(self.path_of(oid))
            except FileNotFoundError:
                raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
            except OSError as exc:
                self._io_error(exc, oid, "removing")
            self._forget(oid)
            self._dir_dirty = True

    def tombstone_of(self, oid: int) -> Version | None:
        return self._tombstones.get(oid)

    def drop_tombstones(self, below_epoch: int) -> int:
        """Forget tombstones of removals older than ``below_epoch``; how many."""
        old = [oid for oid, v in self._tombstones.copy().items() if v.epoch < below_epoch]
        for oid in old:
            self._tombstones.pop(oid, None)
        return len(old)

    def close(self) -> None:
        """Close every cached descriptor (at shutdown, with no I/O in flight)."""
        self._fds.close_all()

    # ------------------------------------------------------------ metadata

    def exists(self, oid: int) -> bool:
        return oid in self._versions or os.path.exists(self.path_of(oid))

    def version_of(self, oid: int) -> Version:
        """The copy's version; NoObject when missing."""
        version = self._versions.get(oid)
        if version is not None:
            return version
        if not os.path.exists(self.path_of(oid)):
            raise NoObject(f"no object {oid_name(oid)}", oid=oid)
        return read_header(self.path_of(oid)) or ZERO

    def tick_of(self, oid: int) -> int:
        """The copy's mutation tick; 0 when there is no copy."""
        return self._ticks.get(oid, 0)

    def list_objects(self) -> dict[int, Version]:
        """A snapshot of every copy: oid -> version."""
        return self._versions.copy()

    def usage(self) -> dict:
        """objects, used_bytes (allocated, a running estimate), capacity and free bytes, and
        dirty_objects (mutated since the last flush: not yet on stable storage)."""
        st = os.statvfs(self.root)
        return {
            "objects": len(self._versions),
            "dirty_objects": len(self._dirty),
            "used_bytes": sum(self._blocks.copy().values()) * 512,
            "capacity_bytes": st.f_blocks * st.f_frsize,
            "free_bytes": st.f_bavail * st.f_frsize,
            "corrupt_reads": self.corrupt_reads,
            "failed": self._failed,
        }

    # ------------------------------------------------------------ durability

    def flush(self) -> int:
        """Write the header of, and fsync, every object mutated since the last flush, then
        the changed directories.  Returns how many object files were synced.  Every
        mutation that returned before this call started is on stable storage when it
        returns: flushes run one at a time (a second one must not find the dirty set
        empty and return while the first is still fsyncing what it took from it), and an
        object whose sync failed goes back into the dirty set."""
        self._check_usable()
        with self._flush_lock:
            self._check_usable()
            return self._flush_locked()

    def _flush_locked(self) -> int:
        synced = 0
        while True:
            try:
                oid = self._dirty.pop()
            except KeyError:
                break
            try:
                try:
                    fd = os.open(self.path_of(oid), os.O_RDWR)
                except FileNotFoundError:
                    continue  # removed or moved to stale since its write
                try:
                    version = self._versions.get(oid)
                    if version is not None:
                        os.pwrite(fd, objfile.pack_header(version), 0)
                    self._fsync(fd, f"oid={oid:016x}")
                    try:
                        self._blocks[oid] = os.fstat(fd).st_blocks
                    except OSError:
                        pass                    # removed meanwhile
                finally:
                    os.close(fd)
            except BaseException as exc:
                self._dirty.add(oid)            # not synced: the next flush must try again
                if isinstance(exc, OSError):
                    self._fail(f"flush of oid={oid:016x} failed: {exc.strerror or exc}")
                raise
            synced += 1
        while self._stale_dirty:                # copies moved aside keep their entries too
            d = self._stale_dirty.pop()
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue                        # purged since
            try:
                self._fsync(fd, d)
            finally:
                os.close(fd)
        if self._dir_dirty:
            # Cleared before the fsync: an entry changed after this line is
            # either covered by the fsync below or re-marks the flag.
            self._dir_dirty = False
            fd = os.open(self._obj_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._fsync(fd, "obj/")
            finally:
                os.close(fd)
        log.debug("flush: %d objects synced", synced)
        return synced

    def _fsync(self, fd: int, what: str) -> None:
        started = time.monotonic()
        try:
            os.fsync(fd)
        except OSError as exc:
            self._fail(f"fsync of {what} failed: {exc.strerror or exc}")
        self.fsync_timing.observe(time.monotonic() - started)   # under the flush lock

    def _fail(self, why: str):
        """The disk lost or refused what it was given (a failed fsync, EIO, a filesystem
        gone read-only): this copy may lack acknowledged writes, so the store serves
        nothing more and the node leaves the cluster.  Raises Unavailable."""
        if self._failed is None:
            self._failed = why
            log.critical("store %s: %s; unsynced writes may be lost: this store serves "
                         "nothing more", self.root, why)
        raise Unavailable(f"store {self.root} failed ({self._failed})") from None

    def _io_error(self, exc: OSError, oid: int, what: str):
        """An OSError from a mutation: NoSpace for a full disk, else a failed store."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"store {self.root}: {exc.strerror} {what} oid={oid:016x}",
                          oid=oid) from None
        self._fail(f"{what} oid={oid:016x} failed: {exc.strerror or exc}")

    # ------------------------------------------------------------ stale copies

    def move_to_stale(self, oid: int, epoch: int) -> None:
        """Move an object into ``stale/<epoch>/``; it leaves list_objects().

        The copy keeps its header (version); a copy of the same oid already in that
        directory is replaced.  The version in memory is written to the header first.
        NoObject when missing.
        """
        d, created = self.stale.dir_for(epoch)
        if created:
            self._stale_dirty.add(str(self.stale.root))
        self._stale_dirty.add(str(d))
        with self._stripe(oid):
            version = self._versions.get(oid)
            try:
                if version is not None:
                    fd = os.open(self.path_of(oid), os.O_WRONLY)
                    try:
                        os.pwrite(fd, objfile.pack_header(version), 0)
                    finally:
                        os.close(fd)
                os.rename(self.path_of(oid), d / oid_name(oid))
            except FileNotFoundError:
                raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
            self._forget(oid)
            self._dir_dirty = True
        log.debug("oid=%016x moved to stale epoch=%d", oid, epoch)
