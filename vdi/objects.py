"""Object ids and sizes of the volume model (DESIGN.md section 2).

* data object ``vid << 32 | index`` (index < ``MAX_INDEXES``),
* inode object ``1 << 63 | vid << 32``,
* vids are 24 bits; 0 is never a vid (it marks a hole in the object map).
"""
from __future__ import annotations

VID_BITS = 24
VID_MASK = (1 << VID_BITS) - 1
MAX_VID = VID_MASK
MAX_INDEXES = 1 << 20
INODE_BIT = 1 << 63
INODE_HEADER_BYTES = 4096
ENTRY_BYTES = 4


def _check_vid(vid: int) -> None:
    if not 0 < vid <= MAX_VID:
        raise ValueError(f"vid out of range: {vid!r}")


def data_oid(vid: int, idx: int) -> int:
    """Oid of data object ``idx`` of VDI ``vid``."""
    _check_vid(vid)
    if not 0 <= idx < MAX_INDEXES:
        raise ValueError(f"object index out of range: {idx!r}")
    return vid << 32 | idx


def inode_oid(vid: int) -> int:
    """Oid of the inode object of VDI ``vid``."""
    _check_vid(vid)
    return INODE_BIT | vid << 32


def is_inode(oid: int) -> bool:
    return bool(oid & INODE_BIT)


def oid_vid(oid: int) -> int:
    """The vid an oid belongs to (data or inode)."""
    return (oid >> 32) & VID_MASK


def oid_index(oid: int) -> int:
    """The index of a data object (0 for an inode)."""
    return oid & 0xFFFFFFFF


def inode_object_bytes(nr_indexes: int) -> int:
    """Size of an inode object holding ``nr_indexes`` map entries."""
    return INODE_HEADER_BYTES + ENTRY_BYTES * nr_indexes


def nr_indexes(size: int, object_size: int) -> int:
    """Number of data objects needed for ``size`` bytes: ceil(size / object_size)."""
    return -(-size // object_size)
