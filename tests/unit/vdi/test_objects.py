"""Object ids and sizes."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vdi.objects import (INODE_HEADER_BYTES, MAX_INDEXES, VID_BITS, data_oid, inode_object_bytes,
                         inode_oid, is_inode, nr_indexes, oid_index, oid_vid)


def test_constants():
    assert VID_BITS == 24
    assert MAX_INDEXES == 1 << 20
    assert INODE_HEADER_BYTES == 4096


def test_oid_layout():
    assert data_oid(0x7C2B25, 3) == 0x007C2B2500000003
    assert inode_oid(0x7C2B25) == 0x807C2B2500000000
    assert is_inode(inode_oid(1)) and not is_inode(data_oid(1, 0))


@given(vid=st.integers(1, (1 << 24) - 1), idx=st.integers(0, MAX_INDEXES - 1))
def test_oid_roundtrip(vid, idx):
    oid = data_oid(vid, idx)
    assert (oid_vid(oid), oid_index(oid)) == (vid, idx)
    assert oid_vid(inode_oid(vid)) == vid and oid_index(inode_oid(vid)) == 0
    assert oid < 1 << 56


@pytest.mark.parametrize("vid,idx", [(0, 0), (1 << 24, 0), (1, -1), (1, MAX_INDEXES)])
def test_bad_ids(vid, idx):
    with pytest.raises(ValueError):
        data_oid(vid, idx)


def test_inode_object_bytes_and_nr_indexes():
    assert inode_object_bytes(0) == 4096
    assert inode_object_bytes(10) == 4096 + 40
    assert nr_indexes(0, 4096) == 0
    assert nr_indexes(1, 4096) == 1
    assert nr_indexes(4096, 4096) == 1
    assert nr_indexes(4097, 4096) == 2
