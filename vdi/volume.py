"""Byte-range I/O on one VDI through an injected gateway.

Theory of operation
-------------------
The volume is split into objects of ``object_size`` bytes; object ``i`` covers
``[i*object_size, (i+1)*object_size)``.  The object map (``vdi.inode``) says who
owns each index: 0 = hole (reads as zeros, no I/O), this vid = our object,
another vid P = a parent snapshot's object shared with us (copy-on-write).

Invariants
~~~~~~~~~~
* A data object is always written before the map entry that points at it, and
  the persisted entry is written before the in-memory one is set; so a crash or
  an error never leaves an entry pointing at a missing object, and a reader
  that sees ``map[i] == vid`` finds the object.
* Changing an entry (allocation, copy-on-write, trim) holds that index's lock,
  so two concurrent first writes to one index never both create the object.
  Writes to an object we already own take no lock.
* Trim sets the entry to 0 (memory, then inode) before removing the object.  A
  write racing it that finds the object gone (``NoObject``) falls back to the
  locked allocation path; a read racing it re-reads the map and sees a hole.

The daemon calls a Volume from many gevent greenlets; ``threading.Lock`` is
cooperative once gevent has monkey-patched, and this module never imports gevent.

* An allocated object (first write, or copy-on-write) is always written
  fresh (``create=True``: zeros plus the bytes, never a leftover file), and if its
  map entry landed in a later epoch than the object itself, the object is written
  once more before the entry is used: recovery judges liveness from the maps, so
  an object must be on the placement of the epoch in which its entry appeared.

Gateway interface (``docs/internals.md``): ``read(oid, offset, length, copies)``,
``write(oid, offset, data, copies, create=False) -> epoch``, ``remove(oid, copies)
-> epoch``, ``flush()``.  ``create=True`` makes a fresh object (zeros plus the data)
whatever was there; a write in place to a missing object raises ``NoObject``; the
epoch returned is the one the mutation completed at.  The contract tests
(``tests/integration/test_gateway_contract.py``) hold the unit fake to it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

from common.errors import InvalidRequest, NoObject, OutOfRange, ReadOnly
from vdi.inode import ObjectMap, entry_record, inode_bytes
from vdi.objects import INODE_HEADER_BYTES, MAX_INDEXES, data_oid, inode_oid, nr_indexes

log = logging.getLogger(__name__)

_READ_RETRIES = 4


class Volume:
    """One open VDI: byte-range read/write/trim/block_status on its objects."""

    def __init__(self, vid: int, size: int, object_size: int, copies: int, gateway,
                 objmap: ObjectMap, readonly: bool = False):
        if object_size <= 0:
            raise InvalidRequest("object size must be positive", object_size=object_size)
        if not 0 <= size <= object_size * MAX_INDEXES:
            raise InvalidRequest("bad volume size", size=size)
        if len(objmap) < nr_indexes(size, object_size):
            raise InvalidRequest("object map shorter than the volume",
                                 nr_indexes=len(objmap), size=size)
        self._vid = vid
        self._size = size
        self.object_size = object_size
        self.copies = copies
        self._gw = gateway
        self._map = objmap
        self._readonly = readonly
        # Another connection may be writing this VDI (this one is attached without the
        # write right): the map in memory can be behind the inode, so every entry that
        # is not this vid's own object is read again from the inode before it is used.
        self.follow = False
        self._guard = threading.Lock()
        self._index_locks: dict[int, list] = {}  # idx -> [Lock, users]

    # -- construction ------------------------------------------------------

    @classmethod
    def open(cls, gateway, vid: int, size: int, object_size: int, copies: int,
             readonly: bool = False) -> "Volume":
        """Load the map entries of the ``ceil(size/object_size)`` indexes from
        the inode object of ``vid``."""
        nr = nr_indexes(size, object_size)
        want = 4 * nr
        buf = gateway.read(inode_oid(vid), INODE_HEADER_BYTES, want, copies) if nr else b""
        if len(buf) < want:  # a sparse inode object may read short
            buf = bytes(buf) + bytes(want - len(buf))
        objmap = ObjectMap.from_bytes(memoryview(buf)[:want])
        return cls(vid, size, object_size, copies, gateway, objmap, readonly)

    @staticmethod
    def create_inode(gateway, vid: int, header: dict, objmap: ObjectMap, copies: int) -> None:
        """Write a new inode object (header + whole map) for ``vid``."""
        gateway.write(inode_oid(vid), 0, inode_bytes(header, objmap), copies, create=True)

    # -- properties ----------------------------------------------------------

    @property
    def vid(self) -> int:
        return self._vid

    @property
    def gateway(self):
        """The gateway this volume does its I/O through."""
        return self._gw

    @property
    def size(self) -> int:
        return self._size

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def objmap(self) -> ObjectMap:
        return self._map

    def __repr__(self) -> str:
        return f"Volume(vid={self._vid:06x}, size={self._size}, readonly={self._readonly})"

    # -- helpers -------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise OutOfRange("request beyond the end of the volume", offset=offset,
                             length=length, size=self._size)

    def _check_writable(self) -> None:
        if self._readonly:
            raise ReadOnly("volume is read-only", vid=self._vid)

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(index, offset in object, offset in request, length) per object touched."""
        osz = self.object_size
        pos, end = offset, offset + length
        while pos < end:
            idx, obj_off = divmod(pos, osz)
            n = min(osz - obj_off, end - pos)
            yield idx, obj_off, pos - offset, n
            pos += n

    def _object_span(self, idx: int) -> int:
        """Bytes of the volume covered by object idx (the last one may be short)."""
        return min(self.object_size, self._size - idx * self.object_size)

    @contextlib.contextmanager
    def _locked(self, idx: int):
        with self._guard:
            entry = self._index_locks.get(idx)
            if entry is None:
                entry = self._index_locks[idx] = [threading.Lock(), 0]
            entry[1] += 1
        entry[0].acquire()
        try:
            yield
        finally:
            entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._index_locks[idx]

    def _read_obj(self, oid: int, offset: int, length: int) -> bytes:
        data = self._gw.read(oid, offset, length, self.copies)
        if len(data) < length:  # sparse object: the tail reads as zeros
            data = bytes(data) + bytes(length - len(data))
        return data

    def _refresh_entry(self, idx: int) -> int:
        """Read map[idx] from the inode again (another writer may have changed it)."""
        self._refresh_entries(idx, idx)
        return self._map.get(idx)

    def _refresh_entries(self, first: int, last: int) -> None:
        """Read map[first..last] from the inode again."""
        off, raw = entry_record(first, 0)
        want = len(raw) * (last - first + 1)
        buf = bytes(self._gw.read(inode_oid(self._vid), off, want, self.copies)).ljust(want, b"\0")
        fresh = ObjectMap.from_bytes(memoryview(buf))
        for i in range(last - first + 1):
            self._map.set(first + i, fresh.get(i))

    def _persist_entry(self, idx: int, owner: int):
        """Persist map[idx] = owner in the inode; returns the epoch the write completed at."""
        off, raw = entry_record(idx, owner)
        return self._gw.write(inode_oid(self._vid), off, raw, self.copies)

    def _set_entry(self, idx: int, owner: int) -> None:
        """Persist map[idx] = owner in the inode, then in memory."""
        self._persist_entry(idx, owner)
        self._map.set(idx, owner)

    # -- read ------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytearray:
        """``length`` bytes at ``offset``; holes read as zeros without I/O.

        A new bytearray the caller owns (nothing else refers to it), not copied into
        ``bytes``: a big NBD READ would otherwise hold its payload twice.  It is not
        hashable; a caller that needs a key or ``bytes`` converts it itself."""
        self._check_range(offset, length)
        out = bytearray(length)
        for idx, obj_off, buf_off, n in self._pieces(offset, length):
            piece = self._read_piece(idx, obj_off, n)
            if piece is not None:
                out[buf_off:buf_off + n] = piece
        return out

    def _read_piece(self, idx: int, obj_off: int, n: int):
        """The bytes of one piece, or None for a hole."""
        for _ in range(_READ_RETRIES):
            owner = self._map.get(idx)
            if self.follow and owner != self._vid:
                owner = self._refresh_entry(idx)
            if owner == 0:
                return None
            try:
                return self._read_obj(data_oid(owner, idx), obj_off, n)
            except NoObject:
                if self.follow:
                    if self._refresh_entry(idx) == owner:
                        raise
                    continue
                if self._map.get(idx) == owner:
                    raise
                # the entry changed under us (trim or copy-on-write): look again
        raise NoObject("object map kept changing during read", vid=self._vid, index=idx)

    # -- write -----------------------------------------------------------------

    def write(self, offset: int, data) -> None:
        """Write ``data`` at ``offset``, allocating or copying objects as needed."""
        self._check_writable()
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        for idx, obj_off, buf_off, n in self._pieces(offset, len(view)):
            self._write_piece(idx, obj_off, view[buf_off:buf_off + n])

    def _write_piece(self, idx: int, obj_off: int, piece) -> None:
        vid = self._vid
        oid = data_oid(vid, idx)
        if self._map.get(idx) == vid:
            try:
                self._gw.write(oid, obj_off, piece, self.copies)
                return
            except NoObject:
                pass  # trimmed under us: allocate again below
        with self._locked(idx):
            owner = self._map.get(idx)
            if owner == vid:
                self._gw.write(oid, obj_off, piece, self.copies)
                return
            if owner == 0:
                log.debug("allocate vid=%06x idx=%d", vid, idx)
                at, content = obj_off, piece
            else:
                log.debug("copy-on-write vid=%06x idx=%d from=%06x", vid, idx, owner)
                if len(piece) == self.object_size:  # overwritten whole: nothing to copy
                    at, content = 0, piece
                else:
                    base = bytearray(self._read_obj(data_oid(owner, idx), 0, self.object_size))
                    base[obj_off:obj_off + len(piece)] = piece
                    at, content = 0, base
            data_epoch = self._gw.write(oid, at, content, self.copies, create=True)
            map_epoch = self._persist_entry(idx, vid)
            if map_epoch > data_epoch:
                # The entry landed in a later epoch than the object: recovery of that
                # epoch may have judged the object unreferenced (and not moved it to the
                # new placement), so write it again, at least that new.
                log.info("vid=%06x idx=%d allocated at epoch %d, mapped at %d: rewritten",
                         vid, idx, data_epoch, map_epoch)
                self._gw.write(oid, at, content, self.copies, create=True)
            self._map.set(idx, vid)

    # -- trim / zeroes -------------------------------------------------------------

    def trim(self, offset: int, length: int) -> None:
        """Discard a range: whole objects become holes (ours are removed), partial
        pieces of allocated objects are overwritten with zeros, holes stay holes."""
        self._check_writable()
        self._check_range(offset, length)
        for idx, obj_off, _, n in self._pieces(offset, length):
            if obj_off == 0 and n == self._object_span(idx):
                self._free_index(idx)
            elif self._map.get(idx) != 0:
                self._write_piece(idx, obj_off, bytes(n))

    def _free_index(self, idx: int) -> None:
        with self._locked(idx):
            owner = self._map.get(idx)
            if owner == 0:
                return
            self._map.set(idx, 0)  # readers see a hole from now on
            try:
                self._set_entry(idx, 0)
            except BaseException:
                self._map.set(idx, owner)
                raise
            if owner == self._vid:
                log.debug("free vid=%06x idx=%d", self._vid, idx)
                try:
                    self._gw.remove(data_oid(owner, idx), self.copies)
                except NoObject:
                    pass

    def write_zeroes(self, offset: int, length: int, may_trim: bool = True) -> None:
        """Zero a range: like trim when ``may_trim``, else zeros are written
        (allocating objects, e.g. NBD_CMD_FLAG_NO_HOLE)."""
        if may_trim:
            self.trim(offset, length)
            return
        self._check_writable()
        self._check_range(offset, length)
        for idx, obj_off, _, n in self._pieces(offset, length):
            self._write_piece(idx, obj_off, bytes(n))

    # -- status ----------------------------------------------------------------------

    def block_status(self, offset: int, length: int) -> list[tuple[int, bool]]:
        """Runs of ``(length, is_hole)`` covering ``[offset, min(offset+length, size))``,
        adjacent runs of the same kind merged."""
        if offset < 0 or length < 0 or offset > self._size:
            raise OutOfRange("block status beyond the end of the volume", offset=offset,
                             length=length, size=self._size)
        length = min(length, self._size - offset)
        runs: list[tuple[int, bool]] = []
        if self.follow and length:
            first, last = offset // self.object_size, (offset + length - 1) // self.object_size
            self._refresh_entries(first, last)
        for idx, _, _, n in self._pieces(offset, length):
            hole = self._map.get(idx) == 0
            if runs and runs[-1][1] == hole:
                runs[-1] = (runs[-1][0] + n, hole)
            else:
                runs.append((n, hole))
        return runs

    # -- misc --------------------------------------------------------------------------

    def flush(self) -> None:
        """Every write acknowledged before is on stable storage on every replica."""
        self._gw.flush()

    def resize(self, new_size: int) -> None:
        """Grow to ``new_size`` (InvalidRequest on shrink or beyond the maximum).
        The new indexes are holes; persisting the size is the caller's job."""
        if new_size < self._size:
            raise InvalidRequest("volumes only grow", size=self._size, new_size=new_size)
        if new_size > self.object_size * MAX_INDEXES:
            raise InvalidRequest("volume too large", new_size=new_size,
                                 max_size=self.object_size * MAX_INDEXES)
        self._map.extend(nr_indexes(new_size, self.object_size))
        self._size = new_size
