"""System calls on object files: whole reads and writes, sums, headers, building copies.

The blocking primitives under `sheep.store.objects.ObjectStore` (format: `sheep.store.objfile`).  No
state and no locks: the store decides who may call what, when.
"""
from __future__ import annotations

import os
from array import array

from common.errors import Corrupt
from sheep.store import objfile
from sheep.store.objfile import BLOCK, DATA_OFFSET, SUMS_OFFSET, Version


def oid_name(oid: int) -> str:
    """The file name of an object: 16 lowercase hex digits."""
    return f"{oid:016x}"


def parse_oid(name: str) -> int | None:
    if len(name) != 16:
        return None
    try:
        return int(name, 16)
    except ValueError:
        return None


def pread_full(fd: int, length: int, offset: int) -> bytes:
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


# The most one pwrite writes.  The kernel sizes the page-cache folios a write creates by the
# write's length (ext4 has large folios since Linux 6.16), and every later small write to a
# folio walks all its buffer heads: a 4 KiB pwrite into a file made by one 4 MiB write cost
# 6 us here, 2 us into one made by 256 KiB writes (and 1 MiB writes and reads the same).
WRITE_PIECE = 256 << 10


def pwrite_all(fd: int, view, offset: int) -> None:
    view = memoryview(view).cast("B")
    while view:
        n = os.pwrite(fd, view[:WRITE_PIECE], offset)
        view = view[n:]
        offset += n


def read_sums(fd: int, first: int, count: int) -> array:
    return array("I", pread_full(fd, 4 * count, SUMS_OFFSET + 4 * first))


def read_header(target) -> Version | None:
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


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_verified(fd: int, offset: int, length: int) -> tuple[bytes, list[int]]:
    """(``length`` bytes at data ``offset``, the blocks among them failing their sums)."""
    first = offset // BLOCK
    last = (offset + length - 1) // BLOCK
    raw = pread_full(fd, (last - first + 1) * BLOCK, DATA_OFFSET + first * BLOCK)
    bad = objfile.bad_blocks(raw, read_sums(fd, first, last - first + 1), first)
    skip = offset - first * BLOCK
    return raw[skip:skip + length], bad


def whole_verified(fd: int) -> tuple[bytes, list[int]]:
    """(every data byte of the copy, the blocks failing their sums)."""
    size = max(0, os.fstat(fd).st_size - DATA_OFFSET)
    data = pread_full(fd, size, DATA_OFFSET) if size else b""
    nblocks = -(-size // BLOCK)
    return data, objfile.bad_blocks(data, read_sums(fd, 0, nblocks))


def merged_sum(fd: int | None, blk: int, offset: int, view: memoryview) -> int:
    """The sum of block ``blk`` once the write (``view`` at ``offset``) covers part of it;
    the rest is the block's current bytes (zeros without ``fd``), checked first: merging into
    a corrupt block would give garbage a valid sum."""
    lo, hi = max(offset, blk * BLOCK), min(offset + view.nbytes, (blk + 1) * BLOCK)
    if fd is None:
        block = bytearray(BLOCK)
    else:
        block = bytearray(pread_full(fd, BLOCK, DATA_OFFSET + blk * BLOCK))
        (stored,) = read_sums(fd, blk, 1)
        if objfile.block_sum(block) != stored:
            raise Corrupt(f"block {blk} fails its checksum; repair it before a partial write",
                          blocks=[blk])
    block[lo - blk * BLOCK:hi - blk * BLOCK] = view[lo - offset:hi - offset]
    return objfile.block_sum(block)


def sums_for_write(fd: int | None, offset: int, view: memoryview) -> array:
    """The new sums of the blocks a write touches; a partly written block is merged with its
    current bytes (zeros when ``fd`` is None: a fresh copy)."""
    end = offset + view.nbytes
    whole_lo, whole_hi = -(-offset // BLOCK) * BLOCK, end // BLOCK * BLOCK
    if whole_lo >= whole_hi:                      # no whole block: one or two partial ones
        return array("I", [merged_sum(fd, blk, offset, view)
                           for blk in range(offset // BLOCK, (end - 1) // BLOCK + 1)])
    sums = array("I")
    if offset < whole_lo:
        sums.append(merged_sum(fd, offset // BLOCK, offset, view))
    sums.extend(objfile.sums_of(view[whole_lo - offset:whole_hi - offset]))
    if whole_hi < end:
        sums.append(merged_sum(fd, whole_hi // BLOCK, offset, view))
    return sums


def write_in_place(fd: int, offset: int, view: memoryview, sums: array | None = None) -> None:
    """Data and the sums of the blocks it touches (the caller holds the stripe lock).
    ``sums``: those of a block-aligned write, computed by its gateway (else computed here)."""
    if view.nbytes:
        if sums is None or not objfile.aligned(offset, view.nbytes) \
                or len(sums) != view.nbytes // BLOCK:
            sums = sums_for_write(fd, offset, view)
        pwrite_all(fd, view, DATA_OFFSET + offset)
        os.pwrite(fd, sums, SUMS_OFFSET + 4 * (offset // BLOCK))


def build_copy(tmp: str, version: Version, view: memoryview, offset: int = 0,
               whole: bool = False) -> int:
    """A new copy file at ``tmp``: header, sums, data.  ``whole``: ``view`` is every byte of
    the copy (its all-zero blocks stay holes and the file ends with it); else zeros plus
    ``view`` at ``offset``.  Returns st_blocks; removes ``tmp`` on failure."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.pwrite(fd, objfile.pack_header(version), 0)
            if whole:
                sums = objfile.sums_of(view)
                if view.nbytes:
                    os.pwrite(fd, sums, SUMS_OFFSET)
                for i, pos in enumerate(range(0, view.nbytes, BLOCK)):
                    if sums[i]:
                        pwrite_all(fd, view[pos:pos + BLOCK], DATA_OFFSET + pos)
                os.ftruncate(fd, DATA_OFFSET + view.nbytes)
            elif view.nbytes:
                os.pwrite(fd, sums_for_write(None, offset, view),
                          SUMS_OFFSET + 4 * (offset // BLOCK))
                pwrite_all(fd, view, DATA_OFFSET + offset)
            return os.fstat(fd).st_blocks
        finally:
            os.close(fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
