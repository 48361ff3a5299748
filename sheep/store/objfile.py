"""The on-disk format of one object copy, and the version that orders copies (pure).

File layout (one sparse file per copy)::

    [0, 4096)                 header: magic, version (epoch, generation, seq), crc32
    [4096, DATA_OFFSET)       block sums: one little-endian u32 per 4 KiB data block
    [DATA_OFFSET, ...)        the object's bytes; the file ends where the data ends

The version and the block sums live in the same file as the data, so one fsync makes
all three durable together and a rename installs all three at once.

Version
-------
``Version(epoch, generation, seq)`` orders the writes an object copy has seen,
compared as a tuple.  ``epoch`` is the cluster epoch of the write (a write that
missed a replica is resent in a later epoch, so a copy that missed it is older);
``generation`` is the VDI's lock generation (the fencing token: a new attacher
writes with a higher one); ``seq`` is chosen by the writing gateway, increasing
with every mutation it sends.  A replica stamps a copy with the highest version
it has applied (writes to one object may arrive out of order), so among copies
the one with the highest version has seen the latest write.  Copies with equal
versions can still differ after a write that reached only some replicas; the
block sums tell those apart (`sums_digest`), and resynchronisation settles them.

Block sums
----------
Each 4 KiB block of data has a CRC-32C (hardware accelerated, ``crc32c`` package)
stored XOR-ed with the CRC of an all-zero block, so a block that was never
written (a hole, zeros in a sparse file) has the stored sum 0: holes need no
sums written, and a sparse copy and a copy with explicit zeros carry the same
sums.  A block whose data does not match its sum is corrupt.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from array import array
from typing import NamedTuple

from crc32c import crc32c

FORMAT = 2                                       # sheep.json "object_format"
BLOCK = 4096
HEADER_BYTES = 4096
MAX_DATA_BYTES = 64 << 20                        # largest object (block_size_shift 26)
MAX_BLOCKS = MAX_DATA_BYTES // BLOCK
SUMS_OFFSET = HEADER_BYTES
DATA_OFFSET = SUMS_OFFSET + 4 * MAX_BLOCKS       # 68 KiB
MAGIC = b"SHEEPOB1"
_HEADER = struct.Struct("<8sQQQQ")               # magic, epoch, generation, seq, flags
_HEADER_CRC = struct.Struct("<I")
ZERO_BLOCK = bytes(BLOCK)
ZERO_CRC = crc32c(ZERO_BLOCK)


class Version(NamedTuple):
    """What a copy has seen: compare as a tuple; ``Version()`` is older than any write."""
    epoch: int = 0
    generation: int = 0
    seq: int = 0

    def to_wire(self) -> list[int]:
        return [self.epoch, self.generation, self.seq]

    @classmethod
    def from_wire(cls, value) -> "Version":
        if value is None:
            return ZERO
        epoch, generation, seq = (int(v) for v in value)
        return cls(epoch, generation, seq)

    def __str__(self) -> str:
        return f"{self.epoch}.{self.generation}.{self.seq}"


ZERO = Version()


def pack_header(version: Version) -> bytes:
    body = _HEADER.pack(MAGIC, version.epoch, version.generation, version.seq, 0)
    return body + _HEADER_CRC.pack(zlib.crc32(body))


def unpack_header(raw: bytes) -> Version | None:
    """The version in a header; None when the header is missing, torn or not ours."""
    need = _HEADER.size + _HEADER_CRC.size
    if len(raw) < need:
        return None
    body = raw[:_HEADER.size]
    (crc,) = _HEADER_CRC.unpack_from(raw, _HEADER.size)
    if zlib.crc32(body) != crc:
        return None
    magic, epoch, generation, seq, _flags = _HEADER.unpack(body)
    if magic != MAGIC:
        return None
    return Version(epoch, generation, seq)


HEADER_READ_BYTES = _HEADER.size + _HEADER_CRC.size


def block_sum(block) -> int:
    """The stored sum of one block (zero padded to BLOCK when short): 0 for zeros."""
    n = len(block)
    crc = crc32c(block)
    if n < BLOCK:
        crc = crc32c(ZERO_BLOCK[:BLOCK - n], crc)
    return crc ^ ZERO_CRC


def sums_of(data, first_block: int = 0) -> array:
    """The stored sums of ``data`` laid out from block ``first_block`` (data starts on a
    block boundary; the last block may be short)."""
    view = memoryview(data).cast("B")
    full = view.nbytes // BLOCK * BLOCK
    out = array("I", [crc32c(view[pos:pos + BLOCK]) ^ ZERO_CRC for pos in range(0, full, BLOCK)])
    if full < view.nbytes:
        out.append(block_sum(view[full:]))
    return out


def aligned(offset: int, nbytes: int) -> bool:
    """Whether a write of ``nbytes`` at ``offset`` covers whole blocks only (its sums are
    the sums of its own bytes, with nothing of the copy's current data merged in)."""
    return nbytes > 0 and offset % BLOCK == 0 and nbytes % BLOCK == 0


def sums_from_wire(raw, nbytes: int) -> array | None:
    """The sums a gateway sent with a block-aligned write of ``nbytes`` (the file's
    representation, one u32 per block), or None when it sent none.  ValueError when they
    do not cover the write exactly."""
    if raw is None:
        return None
    sums = array("I")
    sums.frombytes(raw)
    if nbytes % BLOCK or len(sums) != nbytes // BLOCK:
        raise ValueError(f"{len(sums)} block sums for a write of {nbytes} bytes")
    return sums


def blocks_of(offset: int, length: int) -> range:
    """The block numbers a byte range touches."""
    if length <= 0:
        return range(offset // BLOCK, offset // BLOCK)
    return range(offset // BLOCK, (offset + length - 1) // BLOCK + 1)


def bad_blocks(data, sums: array, first_block: int = 0) -> list[int]:
    """Block numbers of ``data`` (starting at ``first_block``) whose sums do not match."""
    view = memoryview(data)
    if view.nbytes == BLOCK:                  # the common 4 KiB read: no lists, no arrays
        return [] if (crc32c(view) ^ ZERO_CRC) == (sums[0] if sums else 0) else [first_block]
    got = sums_of(data)
    n = len(got)
    want = sums[:n] if len(sums) >= n else array("I", list(sums) + [0] * (n - len(sums)))
    if got == want:
        return []
    return [first_block + i for i in range(n) if got[i] != want[i]]


def sums_digest(sums: array) -> str:
    """A digest of a copy's content through its sums: equal content, equal digest (a
    sparse tail and explicit zeros compare equal, as their sums are 0)."""
    raw = sums.tobytes().rstrip(b"\0")
    return hashlib.sha1(raw).hexdigest()
