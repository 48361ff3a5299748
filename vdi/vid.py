"""VDI ids from names (DESIGN.md section 2).

A name's home vid is FNV-1a 64 of its UTF-8 bytes masked to 24 bits (0 -> 1),
as in Sheepdog (``test`` -> ``0x7c2b25``).  Collisions and snapshots use linear
probing upward from the home vid, wrapping from ``0xffffff`` to 1 (0 is never a
vid).
"""
from __future__ import annotations

from typing import Iterator

from common.errors import NoSpace
from coordinator.ring import fnv1a64
from vdi.objects import MAX_VID, VID_MASK


def name_vid(name: str) -> int:
    """Home vid of ``name``."""
    vid = fnv1a64(name.encode("utf-8")) & VID_MASK
    return vid or 1


def probe(name: str) -> Iterator[int]:
    """The probing run of ``name``: its home vid, then +1, ... wrapping to 1;
    every vid once (2**24 - 1 values)."""
    vid = name_vid(name)
    for _ in range(MAX_VID):
        yield vid
        vid = vid + 1 if vid < MAX_VID else 1


def first_free(name: str, used: set[int]) -> int:
    """First vid of ``name``'s run not in ``used``; NoSpace when every vid is used."""
    for vid in probe(name):
        if vid not in used:
            return vid
    raise NoSpace("no free vid", name=name)
