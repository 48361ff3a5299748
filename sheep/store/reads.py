"""Reads of a copy: verified against its block sums, from the thread pool or, when the page
cache has the bytes, straight from the event loop.

A mixin of `sheep.store.objects.ObjectStore` (it uses the store's descriptor cache, stripe
locks and bookkeeping, under the same rules: see that module's theory of operation).
"""
from __future__ import annotations

import logging
import os
from array import array

from common.errors import Corrupt, NoObject
from sheep.store import objfile
from sheep.store.objfile import BLOCK, DATA_OFFSET, SUMS_OFFSET, Version
from sheep.store.objio import oid_name, read_verified, whole_verified

log = logging.getLogger(__name__)

NOWAIT = getattr(os, "RWF_NOWAIT", 0)   # Linux >= 4.14 for reads


class ReadMixin:
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
            data, bad = read_verified(fd, offset, length)
        finally:
            self._done_reading(fd, leased)
        if bad:
            data = self._read_again_locked(oid, offset, length)
        return data

    def _read_again_locked(self, oid: int, offset: int, length: int) -> bytes:
        """A read that failed verification, again with no write in between."""
        with self._stripe(oid):
            try:
                fd = os.open(self.path_of(oid), os.O_RDONLY)
            except FileNotFoundError:
                raise NoObject(f"no object {oid_name(oid)}", oid=oid) from None
            try:
                data, bad = read_verified(fd, offset, length)
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
            data, bad = whole_verified(fd)
        finally:
            self._done_reading(fd, leased)
        if bad:
            with self._stripe(oid):
                version = self.version_of(oid)
                fd = self._fd_locked(oid)
                try:
                    data, bad = whole_verified(fd)
                finally:
                    self._fds.release(fd)
            if bad:
                self.corrupt_reads += 1
                raise Corrupt(f"object {oid_name(oid)}: {len(bad)} block(s) fail their "
                              "checksum", oid=oid, blocks=bad[:64])
        return version, data
