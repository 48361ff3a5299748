"""The local object store: one sparse file per object.

Layout under ``root``::

    obj/<oid as 16 lowercase hex digits>   one sparse file per object
    tmp/                                   objects being created (cleaned at start)
    stale/<epoch>/<oid hex>                copies no longer placed here (recovery)

Each object file carries the epoch of its last write in the xattr
``user.sheep.epoch`` (ASCII decimal); the store caches every epoch in memory
(filled by a scan of ``obj/`` at start).

Theory of operation
-------------------
The daemon calls this class from gevent's threadpool, several OS threads at
once.  gevent monkey-patches ``threading`` locks, and a patched lock used across
real threads is slow, so this module takes no locks at all:

* every shared in-memory structure is a dict or set touched only by single
  GIL-atomic operations (``d[k] = v``, ``d.pop(k)``, ``s.add(x)``, ``s.pop()``,
  ``d.copy()``);
* the filesystem settles races: a new object is written completely in ``tmp/``
  and ``os.link``-ed into place, so no reader ever sees a partial object and
  exactly one of several concurrent creators wins; the losers (``EEXIST``)
  write their bytes into the winner's file instead.

The filesystem is the truth for existence (reads and writes open the file);
the caches (epochs, allocated blocks) follow it.  Concurrent ``write`` and
``remove`` of the same oid are not ordered: the caller (the gateway) never
issues them together.

Durability: no write fsyncs.  ``flush()`` fsyncs every object written since the
last flush, then ``obj/`` when objects were created or removed; that is the
only place this module calls fsync.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import pathlib
import shutil
import threading
import time
from typing import Callable

from sheep.errors import InvalidRequest, NoObject, NoSpace
from sheep.fdcache import FdCache

log = logging.getLogger(__name__)

EPOCH_XATTR = "user.sheep.epoch"
OID_LIMIT = 1 << 64
SPACE_CHECK_INTERVAL_S = 0.5
SPACE_CHECK_BYTES = 64 << 20
SPACE_UNIT = 4096   # filesystems allocate whole blocks: a 520-byte inode costs 4 KiB
NOWAIT = getattr(os, "RWF_NOWAIT", 0)   # Linux >= 4.14 for reads


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


def _read_epoch(target) -> int | None:
    """The epoch xattr of a path or fd; None when missing or corrupt."""
    try:
        return int(os.getxattr(target, EPOCH_XATTR).decode("ascii"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class ObjectStore:
    """Blocking, lock-free, thread-safe store of fixed-maximum-size objects.

    ``max_object_bytes`` bounds every offset + length; a write that would leave
    the filesystem with less than ``reserve_bytes`` free raises ``NoSpace``.
    ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(self, root: pathlib.Path, max_object_bytes: int,
                 reserve_bytes: int = 64 << 20,
                 clock: Callable[[], float] = time.monotonic, space_lock=None) -> None:
        self.root = pathlib.Path(root)
        self.max_object_bytes = max_object_bytes
        self.reserve_bytes = reserve_bytes
        self._clock = clock
        self._obj = self.root / "obj"
        self._tmp = self.root / "tmp"
        self._stale = self.root / "stale"
        for d in (self._obj, self._tmp, self._stale):
            d.mkdir(parents=True, exist_ok=True)
        self._obj_dir = str(self._obj)
        self._fds = FdCache()
        self._tmp_counter = itertools.count()  # next() is atomic under the GIL
        self._epochs: dict[int, int] = {}
        self._blocks: dict[int, int] = {}      # oid -> st_blocks (512-byte units)
        self._dirty: set[int] = set()          # written since the last flush
        self._dir_dirty = False                # obj/ entries changed since flush
        # Free-space cache: (checked_at, free_bytes) plus the bytes written
        # since; see _check_space.
        self._space: tuple[float, int] = (float("-inf"), 0)
        self._written_since_check = 0
        # Bytes of writes that passed the check and have not finished: statvfs may not
        # see them yet, so a fresh reading subtracts them (else N writes in flight in
        # the pool could each pass on the same reading and eat into the reserve).
        self._pending = 0
        # Several OS threads take this lock: the daemon passes a real OS lock (gevent's
        # monkey-patched threading.Lock is a greenlet lock, slow across threads).
        self._space_lock = space_lock if space_lock is not None else threading.Lock()
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
            epoch = _read_epoch(entry.path)
            if epoch is None:
                log.warning("object oid=%016x has no readable epoch xattr; assuming 0", oid)
                epoch = 0
            self._epochs[oid] = epoch
            self._blocks[oid] = entry.stat(follow_symlinks=False).st_blocks
        log.info("store %s: %d objects", self.root, len(self._epochs))

    # ------------------------------------------------------------ helpers

    def path_of(self, oid: int) -> str:
        """The path of an object's file (it may not exist)."""
        return os.path.join(self._obj_dir, oid_name(oid))

    def _check_range(self, oid: int, offset: int, length: int) -> None:
        if not 0 <= oid < OID_LIMIT:
            raise InvalidRequest(f"bad oid {oid}", oid=oid)
        if offset < 0 or length < 0:
            raise InvalidRequest(f"negative offset {offset} or length {length}", oid=oid)
        if offset + length > self.max_object_bytes:
            raise InvalidRequest(
                f"range {offset}+{length} exceeds object size {self.max_object_bytes}",
                oid=oid)

    def _check_space(self, nbytes: int) -> None:
        """Raise NoSpace if writing ``nbytes`` would eat into the reserve.

        statvfs runs at most every SPACE_CHECK_INTERVAL_S seconds or every
        SPACE_CHECK_BYTES written; in between, free space is estimated as the
        last reading minus the bytes written since (overwrites make this
        pessimistic, so a refusal is always confirmed by a fresh statvfs).
        A write that passes is pending until ``_release_space``; a fresh reading
        subtracts the pending bytes.  One short lock (the statvfs runs under it
        at most every SPACE_CHECK_INTERVAL_S).
        """
        nbytes = -(-nbytes // SPACE_UNIT) * SPACE_UNIT
        with self._space_lock:
            checked_at, free = self._space
            written = self._written_since_check + nbytes
            now = self._clock()
            stale = (now - checked_at >= SPACE_CHECK_INTERVAL_S
                     or written >= SPACE_CHECK_BYTES)
            if stale or free - written < self.reserve_bytes:
                free = self._refresh_space(now)
                written = nbytes    # this write is not in the fresh reading: count it
                if free - nbytes < self.reserve_bytes:
                    raise NoSpace(
                        f"store {self.root}: {free} bytes free, writing {nbytes} would "
                        f"drop below the reserve of {self.reserve_bytes}",
                        free_bytes=free, reserve_bytes=self.reserve_bytes)
            self._written_since_check = written
            self._pending += nbytes

    def _release_space(self, nbytes: int) -> None:
        """A write that passed `_check_space` finished (or failed)."""
        with self._space_lock:
            self._pending -= -(-nbytes // SPACE_UNIT) * SPACE_UNIT

    def _refresh_space(self, now: float) -> int:
        """Free bytes now, less the writes in flight (call with ``_space_lock`` held)."""
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize - self._pending
        self._written_since_check = 0
        self._space = (now, free)
        return free

    @staticmethod
    def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    # ------------------------------------------------------------ I/O

    def read(self, oid: int, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; bytes past the file's end read as zeros.

        Raises NoObject when the object is missing, InvalidRequest when the range
        is negative or goes past ``max_object_bytes``.
        """
        self._check_range(oid, offset, length)
        fd = self._fd(oid)
        data = os.pread(fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            chunk = os.pread(fd, length - got, offset + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        parts.append(bytes(length - got))
        return b"".join(parts)

    def read_cached(self, oid: int, offset: int, length: int):
        """The bytes if they can be had without blocking, else None.

        Only for an object whose descriptor is cached, with ``preadv2(RWF_NOWAIT)``:
        the kernel answers from the page cache or says EAGAIN instead of going to
        disk.  So the event loop can serve hot reads itself and leave the rest
        (cold data, short reads near a sparse end, errors) to `read` in the pool.
        """
        fd = self._fds.peek(oid)
        if fd is None or not NOWAIT or length <= 0:
            return None
        self._check_range(oid, offset, length)
        buf = bytearray(length)
        try:
            n = os.preadv(fd, [buf], offset, NOWAIT)
        except OSError:
            return None
        return buf if n == length else None

    def _fd(self, oid: int) -> int:
        """The cached descriptor of an existing object; NoObject when missing."""
        try:
            return self._fds.get(oid, self.path_of(oid))
        except FileNotFoundError:
            raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None

    def write(self, oid: int, offset: int, data, epoch: int, create: bool = False) -> None:
        """Write ``data`` (bytes-like) at ``offset`` and record ``epoch``.

        An existing object is written in place.  A missing one is created when
        ``create`` (sparse: everything not written reads as zeros), atomically:
        readers see either no object or the whole first write.  Concurrent
        creators of one oid all succeed and all their bytes land in one file.
        Raises NoObject (missing, not ``create``), InvalidRequest (range),
        NoSpace (the write would eat into the reserve).
        """
        view = memoryview(data).cast("B")
        self._check_range(oid, offset, view.nbytes)
        self._check_space(view.nbytes)
        try:
            while True:
                if self._write_existing(oid, offset, view, epoch):
                    return
                if not create:
                    raise NoObject(f"no object {oid_name(oid)}", oid=oid)
                if self._create(oid, offset, view, epoch):
                    return
                # Lost the creation race and the winner vanished (removed)
                # before we could write into it: start over.
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"store {self.root}: {exc.strerror} writing oid={oid:016x}",
                              oid=oid) from None
            raise
        finally:
            self._release_space(view.nbytes)

    def _write_existing(self, oid: int, offset: int, view: memoryview, epoch: int) -> bool:
        try:
            fd = self._fds.get(oid, self.path_of(oid))
        except FileNotFoundError:
            return False
        self._pwrite_all(fd, view, offset)
        if self._epochs.get(oid) != epoch:
            os.setxattr(fd, EPOCH_XATTR, str(epoch).encode("ascii"))
            self._epochs[oid] = epoch
        self._dirty.add(oid)
        return True

    def _create(self, oid: int, offset: int, view: memoryview, epoch: int) -> bool:
        """Create the object from a tmp file; False if it must be retried."""
        tmp = os.path.join(self._tmp, f"{oid_name(oid)}.{os.getpid()}."
                                      f"{threading.get_ident()}.{next(self._tmp_counter)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                self._pwrite_all(fd, view, offset)
                os.setxattr(fd, EPOCH_XATTR, str(epoch).encode("ascii"))
                blocks = os.fstat(fd).st_blocks
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path_of(oid))
            except FileExistsError:
                log.debug("create race on oid=%016x: writing into the winner", oid)
                return self._write_existing(oid, offset, view, epoch)
            self._epochs[oid] = epoch
            self._blocks[oid] = blocks
            self._dirty.add(oid)
            self._dir_dirty = True
            return True
        finally:
            os.unlink(tmp)

    def read_whole(self, oid: int) -> tuple[int, bytes]:
        """(last-write epoch, the object's bytes up to its file size): what recovery copies."""
        fd = self._fd(oid)
        epoch = _read_epoch(fd)
        size = os.fstat(fd).st_size
        parts, got = [], 0
        while got < size:
            chunk = os.pread(fd, size - got, got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return (epoch if epoch is not None else 0), b"".join(parts)

    def replace(self, oid: int, data, epoch: int) -> None:
        """Atomically install a whole new copy of an object (recovery).

        Readers see the old copy or the new one, never a mix.  All-zero 4 KiB
        blocks are left as holes so recovered objects stay sparse.
        """
        view = memoryview(data).cast("B")
        self._check_range(oid, 0, view.nbytes)
        self._check_space(view.nbytes)
        try:
            self._replace_checked(oid, view, epoch)
        finally:
            self._release_space(view.nbytes)

    def _replace_checked(self, oid: int, view: memoryview, epoch: int) -> None:
        tmp = os.path.join(self._tmp, f"{oid_name(oid)}.{os.getpid()}."
                                      f"{threading.get_ident()}.{next(self._tmp_counter)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            block = 4096
            zero = bytes(block)
            for pos in range(0, view.nbytes, block):
                piece = view[pos:pos + block]
                if piece != zero[:len(piece)]:
                    self._pwrite_all(fd, piece, pos)
            os.ftruncate(fd, view.nbytes)
            os.setxattr(fd, EPOCH_XATTR, str(epoch).encode("ascii"))
            blocks = os.fstat(fd).st_blocks
            os.close(fd)
            fd = -1
            os.rename(tmp, self.path_of(oid))
            self._fds.discard(oid)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._epochs[oid] = epoch
        self._blocks[oid] = blocks
        self._dirty.add(oid)
        self._dir_dirty = True

    def close(self) -> None:
        """Close every cached descriptor (at shutdown, with no I/O in flight)."""
        self._fds.close_all()

    def remove(self, oid: int) -> None:
        """Delete an object; NoObject when missing."""
        try:
            os.unlink(self.path_of(oid))
        except FileNotFoundError:
            raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
        self._forget(oid)
        self._dir_dirty = True

    def _forget(self, oid: int) -> None:
        self._fds.discard(oid)
        self._epochs.pop(oid, None)
        self._blocks.pop(oid, None)
        self._dirty.discard(oid)

    # ------------------------------------------------------------ metadata

    def exists(self, oid: int) -> bool:
        return oid in self._epochs or os.path.exists(self.path_of(oid))

    def epoch_of(self, oid: int) -> int:
        """The epoch of the object's last write; NoObject when missing."""
        epoch = self._epochs.get(oid)
        if epoch is not None:
            return epoch
        path = self.path_of(oid)
        if not os.path.exists(path):
            raise NoObject(f"no object {oid_name(oid)}", oid=oid)
        epoch = _read_epoch(path)
        return 0 if epoch is None else epoch

    def set_epoch(self, oid: int, epoch: int) -> None:
        """Record ``epoch`` as the object's last-write epoch; NoObject when missing."""
        try:
            os.setxattr(self.path_of(oid), EPOCH_XATTR, str(epoch).encode("ascii"))
        except FileNotFoundError:
            raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
        self._epochs[oid] = epoch

    def list_objects(self) -> dict[int, int]:
        """A snapshot of every object: oid -> last-write epoch."""
        return self._epochs.copy()

    def checksum(self, oid: int) -> str:
        """sha1 hex of the object's content with trailing zero bytes stripped.

        Stripping makes a sparse copy, a copy with explicit zeros and a copy
        with a different (zero) tail length compare equal: they all read alike.
        """
        try:
            with open(self.path_of(oid), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
        return hashlib.sha1(data.rstrip(b"\0")).hexdigest()

    def usage(self) -> dict:
        """objects, used_bytes (allocated, a running estimate), capacity and free bytes, and
        dirty_objects (written since the last flush: not yet on stable storage)."""
        st = os.statvfs(self.root)
        return {
            "objects": len(self._epochs),
            "dirty_objects": len(self._dirty),
            "used_bytes": sum(self._blocks.copy().values()) * 512,
            "capacity_bytes": st.f_blocks * st.f_frsize,
            "free_bytes": st.f_bavail * st.f_frsize,
        }

    # ------------------------------------------------------------ durability

    def flush(self) -> int:
        """fsync every object written since the last flush, then obj/ if needed.

        Returns how many object files were synced.  Every write that returned
        before this call started is on stable storage when it returns.
        """
        synced = 0
        while True:
            try:
                oid = self._dirty.pop()
            except KeyError:
                break
            try:
                fd = self._fds.get(oid, self.path_of(oid))
            except FileNotFoundError:
                continue  # removed or moved to stale since its write
            os.fsync(fd)
            self._blocks[oid] = os.fstat(fd).st_blocks
            synced += 1
        if self._dir_dirty:
            # Cleared before the fsync: an entry changed after this line is
            # either covered by the fsync below or re-marks the flag.
            self._dir_dirty = False
            fd = os.open(self._obj_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        log.debug("flush: %d objects synced", synced)
        return synced

    # ------------------------------------------------------------ stale copies

    def move_to_stale(self, oid: int, epoch: int) -> None:
        """Move an object into ``stale/<epoch>/``; it leaves list_objects().

        The copy keeps its last-write epoch xattr; a copy of the same oid already
        in that directory is replaced.  NoObject when missing.
        """
        d = self._stale / str(epoch)
        d.mkdir(exist_ok=True)
        try:
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
            log.info("purged %d stale epoch dirs up to epoch=%d", purged, upto_epoch)
        return purged

    def list_stale(self) -> dict[int, int]:
        """oid -> the newest last-write epoch among the stale copies of that oid."""
        out: dict[int, int] = {}
        for stale_epoch in self._stale_epochs():
            for entry in os.scandir(self._stale / str(stale_epoch)):
                oid = _parse_oid(entry.name)
                if oid is None:
                    continue
                epoch = _read_epoch(entry.path)
                epoch = stale_epoch if epoch is None else epoch
                if epoch > out.get(oid, -1):
                    out[oid] = epoch
        return out

    def stale_epoch_of(self, oid: int) -> int:
        """The newest last-write epoch among ``oid``'s stale copies; -1 when there are none."""
        best = -1
        for stale_epoch in self._stale_epochs():
            path = self._stale / str(stale_epoch) / oid_name(oid)
            if path.exists():
                epoch = _read_epoch(path)
                best = max(best, stale_epoch if epoch is None else epoch)
        return best

    def read_stale(self, oid: int) -> tuple[int, bytes]:
        """The newest stale copy of ``oid``: (its last-write epoch, its bytes).

        "Newest" is the highest last-write epoch (xattr) among the stale dirs;
        the bytes are the file's content (zero tail not included).  NoObject
        when no stale copy exists.
        """
        best: tuple[int, str] | None = None
        for stale_epoch in self._stale_epochs():
            path = os.path.join(self._stale, str(stale_epoch), oid_name(oid))
            if not os.path.exists(path):
                continue
            epoch = _read_epoch(path)
            epoch = stale_epoch if epoch is None else epoch
            if best is None or epoch >= best[0]:
                best = (epoch, path)
        if best is not None:
            try:
                with open(best[1], "rb") as f:
                    return best[0], f.read()
            except FileNotFoundError:
                pass  # purged meanwhile
        raise NoObject(f"no stale copy of object {oid_name(oid)}", oid=oid)
