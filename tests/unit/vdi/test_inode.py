"""Inode header codec and the object map."""
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidRequest
from vdi.inode import ObjectMap, decode_header, encode_header, entry_offset, inode_bytes
from vdi.objects import INODE_HEADER_BYTES, inode_object_bytes

HEADER = {"name": "test", "vid": 0x7C2B25, "size": 1 << 30, "block_size_shift": 22,
          "parent": 0, "created": 1700000000.5}


def test_header_roundtrip_and_padding():
    raw = encode_header(HEADER)
    assert len(raw) == INODE_HEADER_BYTES
    assert raw.endswith(b"\0")
    assert decode_header(raw) == HEADER
    assert decode_header(raw + b"\1\2\3\4") == HEADER  # map bytes after it are ignored


def test_header_too_large():
    with pytest.raises(InvalidRequest):
        encode_header({"name": "x" * INODE_HEADER_BYTES})


def test_header_zero_and_corrupt():
    assert decode_header(bytes(INODE_HEADER_BYTES)) == {}
    with pytest.raises(InvalidRequest):
        decode_header(b"{not json" + bytes(10))
    with pytest.raises(InvalidRequest):
        decode_header(b"[1, 2]" + bytes(10))


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.integers(-2**60, 2**60), st.text(max_size=50),
                                                      st.none(), st.booleans()), max_size=20))
def test_header_roundtrip_property(header):
    assert decode_header(encode_header(header)) == header


def test_entry_offsets_and_bytes():
    om = ObjectMap(8)
    om.set(3, 0x7C2B25)
    assert entry_offset(0) == INODE_HEADER_BYTES
    assert om.entry_bytes(3) == (INODE_HEADER_BYTES + 12, struct.pack("<I", 0x7C2B25))
    assert om.entry_bytes(0) == (INODE_HEADER_BYTES, b"\0\0\0\0")


def test_map_little_endian_bytes():
    om = ObjectMap(3)
    om.set(1, 0x010203)
    assert om.to_bytes() == b"\0\0\0\0" + b"\x03\x02\x01\x00" + b"\0\0\0\0"
    assert ObjectMap.from_bytes(om.to_bytes()) == om


def test_map_counts_copy_extend():
    om = ObjectMap(6)
    assert len(om) == 6 and om.allocated() == 0
    for i, v in enumerate([1, 0, 2, 2, 0, 1]):
        om.set(i, v)
    assert om.allocated() == 4
    assert om.owned_by(2) == 2 and om.owned_by(1) == 2 and om.owned_by(9) == 0
    c = om.copy()
    c.set(0, 9)
    assert om.get(0) == 1
    om.extend(10)
    assert len(om) == 10 and om.get(9) == 0 and om.allocated() == 4
    om.extend(4)  # never shrinks
    assert len(om) == 10


def test_map_bad_values():
    om = ObjectMap(2)
    with pytest.raises(ValueError):
        om.set(0, 1 << 24)
    with pytest.raises(IndexError):
        om.set(2, 1)
    with pytest.raises(InvalidRequest):
        ObjectMap((1 << 20) + 1)


def test_inode_bytes_layout():
    om = ObjectMap(5)
    om.set(4, 7)
    raw = inode_bytes(HEADER, om)
    assert len(raw) == inode_object_bytes(5)
    off, entry = om.entry_bytes(4)
    assert raw[off:off + 4] == entry
    assert decode_header(raw) == HEADER
    assert ObjectMap.from_bytes(raw[INODE_HEADER_BYTES:]) == om


@given(st.lists(st.integers(0, (1 << 24) - 1), max_size=200))
def test_map_roundtrip_property(vids):
    om = ObjectMap(len(vids))
    for i, v in enumerate(vids):
        om.set(i, v)
    back = ObjectMap.from_bytes(om.to_bytes())
    assert [back.get(i) for i in range(len(vids))] == vids
    assert back.allocated() == sum(1 for v in vids if v)
    # patching one entry's 4 bytes in the stored blob is the same as set()
    if vids:
        blob = bytearray(inode_bytes({}, ObjectMap(len(vids))))
        for i in range(len(vids)):
            off, raw = om.entry_bytes(i)
            blob[off:off + 4] = raw
        assert ObjectMap.from_bytes(blob[INODE_HEADER_BYTES:]) == om
