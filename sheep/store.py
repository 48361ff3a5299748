"""The local object store: one sparse file per object copy (format: `sheep.objfile`).

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

Durability: no write fsyncs.  ``flush()`` writes the headers of, and fsyncs, every
object mutated since the last flush, then ``obj/`` when entries changed.  An fsync
failure is sticky: the kernel may have dropped the dirty pages, so this copy may have
lost acknowledged writes; every later call raises `Unavailable` and the daemon leaves
the cluster (its replicas are rebuilt elsewhere).
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import pathlib
import random
import shutil
import threading
import time
from array import array
from typing import Callable

from sheep import objfile
from sheep.errors import Corrupt, InvalidRequest, NoObject, NoSpace, Unavailable
from sheep.fdcache import FdCache
from sheep.objfile import BLOCK, DATA_OFFSET, SUMS_OFFSET, ZERO, Version
from sheep.space import SpaceReserve

log = logging.getLogger(__name__)

OID_LIMIT = 1 << 64
STRIPES = 64
NOWAIT = getattr(os, "RWF_NOWAIT", 0)   # Linux >= 4.14 for reads
ANY_TICK = None


def oid_name(oid: int) -> str:
    """The file name of an object: 16 lowercase hex digits."""
    return f"{oid:016x}"


def _parse_oid(name: str) -> int | None:
    if len(name) != 16:
        return None
    try:
        return int(name, 16)
    except ValueError:
        return None


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset``; what lies past the end of the file reads as zeros."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts, got = [data], len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    parts.append(bytes(length - got))
    return b"".join(parts)


def _pwrite_all(fd: int, view, offset: int) -> None:
    view = memoryview(view).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _read_sums(fd: int, first: int, count: int) -> array:
    return array("I", _pread_full(fd, 4 * count, SUMS_OFFSET + 4 * first))


def _merged_sum(fd: int | None, blk: int, offset: int, view: memoryview) -> int:
    """The sum of block ``blk`` once the write (``view`` at ``offset``) covers part of it;
    the rest is the block's current bytes (zeros without ``fd``), checked first: merging into
    a corrupt block would give garbage a valid sum."""
    lo, hi = max(offset, blk * BLOCK), min(offset + view.nbytes, (blk + 1) * BLOCK)
    if fd is None:
        block = bytearray(BLOCK)
    else:
        block = bytearray(_pread_full(fd, BLOCK, DATA_OFFSET + blk * BLOCK))
        (stored,) = _read_sums(fd, blk, 1)
        if objfile.block_sum(block) != stored:
            raise Corrupt(f"block {blk} fails its checksum; repair it before a partial write",
                          blocks=[blk])
    block[lo - blk * BLOCK:hi - blk * BLOCK] = view[lo - offset:hi - offset]
    return objfile.block_sum(block)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_header(target) -> Version | None:
    """The version in a file's header (path or fd); None when unreadable."""
    try:
        if isinstance(target, int):
            raw = os.pread(target, objfile.HEADER_READ_BYTES, 0)
        else:
            with open(target, "rb") as f:
                raw = f.read(objfile.HEADER_READ_BYTES)
    except OSError:
        return None
    return objfile.unpack_header(raw)


class ObjectStore:
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
        self._stale = self.root / "stale"
        created = [d for d in (self._obj, self._tmp, self._stale) if not d.is_dir()]
        for d in created:
            d.mkdir(parents=True, exist_ok=True)
        if created:                 # the new directories' entries survive a crash
            _fsync_dir(str(self.root))
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
        self._failed: str | None = None
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
            oid = _parse_oid(entry.name)
            if oid is None or not entry.is_file(follow_symlinks=False):
                log.warning("ignoring unexpected entry %s in %s", entry.name, self._obj)
                continue
            version = _read_header(entry.path)
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

    def _open_for_read(self, oid: int) -> tuple[int, bool]:
        """(fd, leased): a cached descriptor, else one opened here and offered to the cache
        (kept for this read only when a mutation changed the object meanwhile)."""
        fd = self._fds.lease(oid)
        if fd is not None:
            return fd, True
        tick = self._ticks.get(oid)
        try:
            fd = os.open(self.path_of(oid), os.O_RDWR)
        except FileNotFoundError:
            raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
        if tick is not None and self._fds.adopt(oid, fd, lambda: self._ticks.get(oid) == tick):
            return fd, True
        return fd, False

    def _done_reading(self, fd: int, leased: bool) -> None:
        if leased:
            self._fds.release(fd)
        else:
            os.close(fd)

    # ------------------------------------------------------------ reads

    def read(self, oid: int, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``, verified against their block sums; bytes past
        the data's end read as zeros.  NoObject when missing, InvalidRequest for a bad
        range, Corrupt when a block fails its sum."""
        self._check_usable()
        self._check_range(oid, offset, length)
        if length == 0:
            if not self.exists(oid):
                raise NoObject(f"no object {oid_name(oid)}", oid=oid)
            return b""
        fd, leased = self._open_for_read(oid)
        try:
            data, bad = self._read_verified(fd, offset, length)
        finally:
            self._done_reading(fd, leased)
        if bad:
            data = self._read_again_locked(oid, offset, length)
        return data

    def _read_verified(self, fd: int, offset: int, length: int) -> tuple[bytes, list[int]]:
        first = offset // BLOCK
        last = (offset + length - 1) // BLOCK
        raw = _pread_full(fd, (last - first + 1) * BLOCK, DATA_OFFSET + first * BLOCK)
        bad = objfile.bad_blocks(raw, _read_sums(fd, first, last - first + 1), first)
        skip = offset - first * BLOCK
        return raw[skip:skip + length], bad

    def _read_again_locked(self, oid: int, offset: int, length: int) -> bytes:
        """A read that failed verification, again with no write in between."""
        with self._stripe(oid):
            try:
                fd = os.open(self.path_of(oid), os.O_RDONLY)
            except FileNotFoundError:
                raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
            try:
                data, bad = self._read_verified(fd, offset, length)
            finally:
                os.close(fd)
        if bad:
            self.corrupt_reads += 1
            log.error("oid=%016x corrupt: blocks %s fail their checksums", oid, bad[:8])
            raise Corrupt(f"object {oid_name(oid)}: {len(bad)} block(s) fail their checksum",
                          oid=oid, blocks=bad[:64])
        return data

    def read_cached(self, oid: int, offset: int, length: int):
        """The verified bytes if they can be had without blocking, else None.

        Only for an object whose descriptor is cached, with ``preadv2(RWF_NOWAIT)``:
        the kernel answers from the page cache or says EAGAIN instead of going to
        disk.  So the event loop can serve hot reads itself and leave the rest
        (cold data, short reads near a sparse end, a failed sum, errors) to `read`.
        """
        if not NOWAIT or length <= 0 or self._failed is not None:
            return None
        self._check_range(oid, offset, length)
        fd = self._fds.lease(oid)
        if fd is None:
            return None
        try:
            first = offset // BLOCK
            nblocks = (offset + length - 1) // BLOCK - first + 1
            raw = bytearray(nblocks * BLOCK)
            sums = array("I", bytes(4 * nblocks))
            if (os.preadv(fd, [raw], DATA_OFFSET + first * BLOCK, NOWAIT) != len(raw)
                    or os.preadv(fd, [sums], SUMS_OFFSET + 4 * first, NOWAIT) != 4 * nblocks):
                return None
        except OSError:
            return None
        finally:
            self._fds.release(fd)
        if objfile.bad_blocks(raw, sums, first):
            return None
        skip = offset - first * BLOCK
        return memoryview(raw)[skip:skip + length]

    def read_whole(self, oid: int) -> tuple[Version, bytes]:
        """(version, every byte of the copy), verified: what recovery and repair copy.
        The version is read before the data, so the data has at least its writes."""
        self._check_usable()
        version = self.version_of(oid)
        fd, leased = self._open_for_read(oid)
        try:
            data, bad = self._whole_verified(fd)
        finally:
            self._done_reading(fd, leased)
        if bad:
            with self._stripe(oid):
                version = self.version_of(oid)
                fd = self._fd_locked(oid)
                try:
                    data, bad = self._whole_verified(fd)
                finally:
                    self._fds.release(fd)
            if bad:
                self.corrupt_reads += 1
                raise Corrupt(f"object {oid_name(oid)}: {len(bad)} block(s) fail their "
                              "checksum", oid=oid, blocks=bad[:64])
        return version, data

    @staticmethod
    def _whole_verified(fd: int) -> tuple[bytes, list[int]]:
        size = max(0, os.fstat(fd).st_size - DATA_OFFSET)
        data = _pread_full(fd, size, DATA_OFFSET) if size else b""
        nblocks = -(-size // BLOCK)
        return data, objfile.bad_blocks(data, _read_sums(fd, 0, nblocks))

    # ------------------------------------------------------------ writes

    def _fd_locked(self, oid: int) -> int:
        """A leased cached descriptor (stripe lock held); NoObject when missing."""
        try:
            return self._fds.acquire(oid, self.path_of(oid))
        except FileNotFoundError:
            raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None

    def write(self, oid: int, offset: int, data, version: Version, create: bool = False) -> None:
        """Write ``data`` (bytes-like) at ``offset`` and stamp ``version``.

        An existing copy is written in place.  ``create`` builds a fresh copy instead
        (zeros plus ``data``), replacing any file there.  Raises NoObject (missing,
        not ``create``), InvalidRequest (range), NoSpace (the write would eat into
        the reserve, or the filesystem is full).
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
                    self._write_in_place(oid, offset, view, version)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"store {self.root}: {exc.strerror} writing oid={oid:016x}",
                              oid=oid) from None
            raise
        finally:
            self.space.release(view.nbytes + (BLOCK if create else 0))

    def _write_in_place(self, oid: int, offset: int, view: memoryview, version: Version) -> None:
        fd = self._fd_locked(oid)
        try:
            if view.nbytes:
                sums = self._sums_for_write(fd, offset, view)
                _pwrite_all(fd, view, DATA_OFFSET + offset)
                os.pwrite(fd, sums, SUMS_OFFSET + 4 * (offset // BLOCK))
        finally:
            self._fds.release(fd)
        current = self._versions.get(oid, ZERO)
        self._mutated(oid, version if version > current else current)

    @staticmethod
    def _sums_for_write(fd: int | None, offset: int, view: memoryview) -> array:
        """The new sums of the blocks a write touches; a partly written block is merged
        with its current bytes (zeros when ``fd`` is None: a fresh copy)."""
        end = offset + view.nbytes
        whole_lo, whole_hi = -(-offset // BLOCK) * BLOCK, end // BLOCK * BLOCK
        if whole_lo >= whole_hi:                      # no whole block: one or two partial ones
            return array("I", [_merged_sum(fd, blk, offset, view)
                               for blk in range(offset // BLOCK, (end - 1) // BLOCK + 1)])
        sums = array("I")
        if offset < whole_lo:
            sums.append(_merged_sum(fd, offset // BLOCK, offset, view))
        sums.extend(objfile.sums_of(view[whole_lo - offset:whole_hi - offset]))
        if whole_hi < end:
            sums.append(_merged_sum(fd, whole_hi // BLOCK, offset, view))
        return sums

    def _build(self, oid: int, offset: int, view: memoryview, version: Version) -> None:
        """A fresh copy (zeros plus ``view`` at ``offset``) renamed into place (stripe held)."""
        tmp = self._tmp_path(oid)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                os.pwrite(fd, objfile.pack_header(version), 0)
                if view.nbytes:
                    os.pwrite(fd, self._sums_for_write(None, offset, view),
                              SUMS_OFFSET + 4 * (offset // BLOCK))
                    _pwrite_all(fd, view, DATA_OFFSET + offset)
                blocks = os.fstat(fd).st_blocks
            finally:
                os.close(fd)
            os.rename(tmp, self.path_of(oid))
        except BaseException:
            if os.path.exists(tmp):
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
                self._install_locked(oid, view, version)
                return True
        finally:
            self.space.release(view.nbytes + BLOCK)

    def _install_locked(self, oid: int, view: memoryview, version: Version) -> None:
        tmp = self._tmp_path(oid)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                os.pwrite(fd, objfile.pack_header(version), 0)
                sums = objfile.sums_of(view)
                if view.nbytes:
                    os.pwrite(fd, sums, SUMS_OFFSET)
                for i, pos in enumerate(range(0, view.nbytes, BLOCK)):
                    if sums[i]:             # zero blocks stay holes
                        _pwrite_all(fd, view[pos:pos + BLOCK], DATA_OFFSET + pos)
                os.ftruncate(fd, DATA_OFFSET + view.nbytes)
                blocks = os.fstat(fd).st_blocks
            finally:
                os.close(fd)
            os.rename(tmp, self.path_of(oid))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._mutated(oid, version, blocks)     # the tick changes before the discard
        self._fds.discard(oid)
        self._dir_dirty = True

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
        return _read_header(self.path_of(oid)) or ZERO

    def tick_of(self, oid: int) -> int:
        """The copy's mutation tick; 0 when there is no copy."""
        return self._ticks.get(oid, 0)

    def list_objects(self) -> dict[int, Version]:
        """A snapshot of every copy: oid -> version."""
        return self._versions.copy()

    def info(self, oid: int, verify: bool = True) -> dict:
        """What check and repair compare: version, tick, length, the sums digest and, when
        ``verify``, the blocks whose data fails its sum (reads the whole copy)."""
        self._check_usable()
        tick = self.tick_of(oid)
        version = self.version_of(oid)
        if not os.path.exists(self.path_of(oid)):     # gone behind our back (a lost file)
            with self._stripe(oid):
                if not os.path.exists(self.path_of(oid)):
                    self._forget(oid)
            raise NoObject(f"no object {oid_name(oid)}", oid=oid)
        fd, leased = self._open_for_read(oid)
        try:
            size = max(0, os.fstat(fd).st_size - DATA_OFFSET)
            nblocks = -(-size // BLOCK)
            sums = _read_sums(fd, 0, nblocks)
            bad = []
            if verify and size:
                bad = objfile.bad_blocks(_pread_full(fd, size, DATA_OFFSET), sums)
        finally:
            self._done_reading(fd, leased)
        return {"version": version, "tick": tick, "length": size,
                "digest": objfile.sums_digest(sums), "bad_blocks": bad, "sums": sums.tobytes()}

    def read_blocks(self, oid: int, blocks: list[int]) -> dict[int, bytes]:
        """The verified bytes of whole 4 KiB data blocks (repair donors); Corrupt when one of
        them fails its sum here too."""
        self._check_usable()
        fd, leased = self._open_for_read(oid)
        try:
            out = {}
            for k in blocks:
                data, bad = self._read_verified(fd, k * BLOCK, BLOCK)
                if bad:
                    raise Corrupt(f"object {oid_name(oid)}: block {k} fails its checksum here "
                                  "too", oid=oid, blocks=bad)
                out[k] = data
            return out
        finally:
            self._done_reading(fd, leased)

    def repair_blocks(self, oid: int, blocks: dict[int, tuple[int, bytes]]) -> int:
        """Rewrite corrupt blocks with donor bytes: ``blocks[k] = (expected sum, data)``.
        Under the stripe lock, a block is rewritten only while it still fails its sum and
        its stored sum is still ``expected`` (a write since then wins); the data must
        match the sum.  Returns how many blocks were rewritten."""
        self._check_usable()
        done = 0
        with self._stripe(oid):
            fd = self._fd_locked(oid)
            try:
                for k, (expected, data) in sorted(blocks.items()):
                    if objfile.block_sum(data) != expected:
                        raise InvalidRequest(f"donor block {k} of {oid_name(oid)} does not "
                                             "match the expected sum", oid=oid)
                    (stored,) = _read_sums(fd, k, 1)
                    current = _pread_full(fd, BLOCK, DATA_OFFSET + k * BLOCK)
                    if stored != expected or objfile.block_sum(current) == stored:
                        continue
                    _pwrite_all(fd, memoryview(data)[:BLOCK], DATA_OFFSET + k * BLOCK)
                    done += 1
            finally:
                self._fds.release(fd)
            if done:
                self._ticks[oid] = next(self._ticks_source)
                self._dirty.add(oid)
        if done:
            log.warning("oid=%016x %d corrupt block(s) rewritten from a replica", oid, done)
        return done

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
        obj/ if needed.  Returns how many object files were synced.  Every mutation that
        returned before this call started is on stable storage when it returns."""
        self._check_usable()
        synced = 0
        while True:
            try:
                oid = self._dirty.pop()
            except KeyError:
                break
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
                    pass                        # removed meanwhile
            finally:
                os.close(fd)
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
        try:
            os.fsync(fd)
        except OSError as exc:
            self._failed = f"fsync of {what} failed: {exc.strerror or exc}"
            log.critical("store %s: %s; unsynced writes may be lost: this store serves "
                         "nothing more", self.root, self._failed)
            raise Unavailable(f"store {self.root} failed ({self._failed})") from None

    # ------------------------------------------------------------ stale copies

    def move_to_stale(self, oid: int, epoch: int) -> None:
        """Move an object into ``stale/<epoch>/``; it leaves list_objects().

        The copy keeps its header (version); a copy of the same oid already in that
        directory is replaced.  The version in memory is written to the header first.
        NoObject when missing.
        """
        d = self._stale / str(epoch)
        if not d.is_dir():
            d.mkdir(exist_ok=True)
            self._stale_dirty.add(str(self._stale))
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

    def _stale_epochs(self) -> list[int]:
        epochs = []
        for entry in os.scandir(self._stale):
            if entry.is_dir(follow_symlinks=False) and entry.name.isdigit():
                epochs.append(int(entry.name))
        return sorted(epochs)

    def purge_stale(self, upto_epoch: int) -> int:
        """Delete every ``stale/<epoch>`` with epoch <= upto_epoch; return how many dirs."""
        purged = 0
        for epoch in self._stale_epochs():
            if epoch <= upto_epoch:
                shutil.rmtree(self._stale / str(epoch), ignore_errors=True)
                purged += 1
        if purged:
            _fsync_dir(str(self._stale))    # a purged copy does not come back at a crash
            log.info("purged %d stale epoch dirs up to epoch=%d", purged, upto_epoch)
        return purged

    def _stale_copies(self, oid: int | None = None):
        """(version, path) of stale copies (of one oid, or of all: then (oid, version, path))."""
        for stale_epoch in self._stale_epochs():
            d = os.path.join(self._stale, str(stale_epoch))
            if oid is not None:
                path = os.path.join(d, oid_name(oid))
                if os.path.exists(path):
                    yield oid, _read_header(path) or ZERO, path
                continue
            for entry in os.scandir(d):
                found = _parse_oid(entry.name)
                if found is not None:
                    yield found, _read_header(entry.path) or ZERO, entry.path

    def list_stale(self) -> dict[int, Version]:
        """oid -> the newest version among the stale copies of that oid."""
        out: dict[int, Version] = {}
        for oid, version, _path in self._stale_copies():
            if oid not in out or version > out[oid]:
                out[oid] = version
        return out

    def stale_version_of(self, oid: int) -> Version | None:
        """The newest version among ``oid``'s stale copies; None when there are none."""
        best = None
        for _oid, version, _path in self._stale_copies(oid):
            if best is None or version > best:
                best = version
        return best

    def read_stale(self, oid: int) -> tuple[Version, bytes]:
        """The newest stale copy of ``oid``: (its version, its verified bytes).
        NoObject when no stale copy exists; Corrupt when it fails its sums."""
        best: tuple[Version, str] | None = None
        for _oid, version, path in self._stale_copies(oid):
            if best is None or version >= best[0]:
                best = (version, path)
        if best is not None:
            try:
                fd = os.open(best[1], os.O_RDONLY)
            except FileNotFoundError:
                fd = None   # purged meanwhile
            if fd is not None:
                try:
                    data, bad = self._whole_verified(fd)
                finally:
                    os.close(fd)
                if bad:
                    raise Corrupt(f"stale copy of {oid_name(oid)} fails its checksums",
                                  oid=oid, blocks=bad[:64])
                return best[0], data
        raise NoObject(f"no stale copy of object {oid_name(oid)}", oid=oid)
