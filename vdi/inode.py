"""The inode object: a JSON header and the VDI's object map.

Layout (DESIGN.md section 2)::

    [0, INODE_HEADER_BYTES)            JSON header (name, vid, size, block_size_shift,
                                       parent, created, ...), zero padded
    INODE_HEADER_BYTES + 4*idx         little-endian u32: the vid owning data
                                       object idx, 0 = hole (never written)

The map is never rewritten whole once created: one entry is updated by writing
its 4 bytes at ``entry_bytes(idx)``.
"""
from __future__ import annotations

import json
import struct
import sys
from array import array

from common.errors import InvalidRequest
from vdi.objects import ENTRY_BYTES, INODE_HEADER_BYTES, MAX_INDEXES, MAX_VID

_ENTRY = struct.Struct("<I")
_SWAP = sys.byteorder != "little"


def encode_header(header: dict) -> bytes:
    """The header as JSON zero padded to INODE_HEADER_BYTES; InvalidRequest if too large."""
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(raw) > INODE_HEADER_BYTES:
        raise InvalidRequest("inode header too large", bytes=len(raw))
    return raw + bytes(INODE_HEADER_BYTES - len(raw))


def decode_header(buf: bytes) -> dict:
    """Parse a header written by encode_header (extra bytes after it are ignored);
    an all-zero header is ``{}``.  InvalidRequest if it is not a JSON object."""
    raw = bytes(buf[:INODE_HEADER_BYTES]).rstrip(b"\0")
    if not raw:
        return {}
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise InvalidRequest(f"corrupt inode header: {e}") from None
    if not isinstance(header, dict):
        raise InvalidRequest("corrupt inode header: not an object")
    return header


def entry_offset(idx: int) -> int:
    """Byte offset of map entry ``idx`` inside the inode object."""
    return INODE_HEADER_BYTES + ENTRY_BYTES * idx


def entry_record(idx: int, vid: int) -> tuple[int, bytes]:
    """(offset inside the inode object, 4 bytes) that persist map[idx] = vid."""
    return entry_offset(idx), _ENTRY.pack(vid)


class ObjectMap:
    """The owner vid of each data object index of one VDI (0 = hole).

    Pure in-memory value; callers persist changes with ``entry_bytes``.
    """

    __slots__ = ("_entries",)

    def __init__(self, nr_indexes: int, entries=None):
        if not 0 <= nr_indexes <= MAX_INDEXES:
            raise InvalidRequest("too many object indexes", nr_indexes=nr_indexes)
        self._entries = array("I", bytes(4 * nr_indexes)) if entries is None else array("I", entries)
        assert self._entries.itemsize == ENTRY_BYTES
        if len(self._entries) != nr_indexes:
            raise ValueError("entries do not match nr_indexes")

    @classmethod
    def from_bytes(cls, buf) -> "ObjectMap":
        """Decode the map region (little-endian u32 per index; a trailing partial
        entry is ignored)."""
        entries = array("I")
        usable = len(buf) - len(buf) % ENTRY_BYTES
        entries.frombytes(bytes(buf[:usable]))
        if _SWAP:
            entries.byteswap()
        om = cls.__new__(cls)
        if len(entries) > MAX_INDEXES:
            raise InvalidRequest("too many object indexes", nr_indexes=len(entries))
        om._entries = entries
        return om

    def to_bytes(self) -> bytes:
        """The map region as stored in the inode object."""
        if _SWAP:
            e = array("I", self._entries)
            e.byteswap()
            return e.tobytes()
        return self._entries.tobytes()

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectMap) and self._entries == other._entries

    def __repr__(self) -> str:
        return f"ObjectMap(nr_indexes={len(self)}, allocated={self.allocated()})"

    def get(self, idx: int) -> int:
        return self._entries[idx]

    def set(self, idx: int, vid: int) -> None:
        if not 0 <= vid <= MAX_VID:
            raise ValueError(f"vid out of range: {vid!r}")
        if not 0 <= idx < len(self._entries):
            raise IndexError(idx)
        self._entries[idx] = vid

    def entry_bytes(self, idx: int) -> tuple[int, bytes]:
        """(offset inside the inode object, the 4 bytes to write there) for entry idx."""
        return entry_record(idx, self._entries[idx])

    def allocated_items(self):
        """(index, owner vid) of each non-hole entry, in index order."""
        return ((idx, vid) for idx, vid in enumerate(self._entries) if vid)

    def allocated(self) -> int:
        """Number of non-hole entries."""
        return len(self._entries) - self._entries.count(0)

    def owned_by(self, vid: int) -> int:
        """Number of entries owned by ``vid``."""
        return self._entries.count(vid)

    def copy(self) -> "ObjectMap":
        """An independent copy (snapshot and clone start from one)."""
        return ObjectMap(len(self._entries), self._entries)

    def extend(self, nr_indexes: int) -> None:
        """Grow to ``nr_indexes`` entries; the new ones are holes.  Never shrinks."""
        if nr_indexes > MAX_INDEXES:
            raise InvalidRequest("too many object indexes", nr_indexes=nr_indexes)
        if nr_indexes > len(self._entries):
            self._entries.frombytes(bytes(4 * (nr_indexes - len(self._entries))))

    def entries(self) -> array:
        """A copy of the raw entries."""
        return array("I", self._entries)


def inode_bytes(header: dict, objmap: ObjectMap) -> bytes:
    """A whole new inode object: header then map."""
    return encode_header(header) + objmap.to_bytes()
