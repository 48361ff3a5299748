"""The gateway contract the volume model relies on, held against the unit fake and the real
`Gateway` over real `Replica`s and stores (three in-process nodes, copies 3), from one of
the nodes and from a gateway-only node (no replica of its own).

A fake that could do what production cannot (the old fake raised an error the real
gateway never raised, and wrote "creates" into leftover objects) hides bugs; every
test here runs against both.
"""
from __future__ import annotations

import time

import pytest

from common.errors import NoObject
from tests.unit.sheep.inprocess import Cluster
from tests.unit.vdi.fake_gateway import FakeGateway
from vdi.inode import ObjectMap
from vdi.objects import data_oid, inode_oid
from vdi.volume import Volume

OID = data_oid(0x7c2b26, 1)
OS = 1 << 20


@pytest.fixture(params=["fake", "real", "gateway-only"])
def gw(request, tmp_path):
    if request.param == "fake":
        return FakeGateway()
    if request.param == "gateway-only":          # no local replica: everything over peers
        return Cluster(tmp_path, 3).gateway_only()
    return Cluster(tmp_path, 3).nodes[0].gateway


def read(gw, oid, offset, length):
    """What a read returns, as the volume sees it (a sparse tail may come back short)."""
    return bytes(gw.read(oid, offset, length, 3)).ljust(length, b"\0")


def test_a_first_write_makes_a_fresh_object(gw):
    epoch = gw.write(OID, 100, b"abc", 3, create=True)
    assert isinstance(epoch, int) and epoch >= 1
    assert read(gw, OID, 98, 7) == b"\0\0abc\0\0"


def test_a_first_write_over_a_leftover_never_shows_its_bytes(gw):
    gw.write(OID, 0, b"\xaa" * 8192, 3, create=True)
    gw.write(OID, 4096, b"\xbb" * 10, 3, create=True)
    assert read(gw, OID, 0, 8192) == bytes(4096) + b"\xbb" * 10 + bytes(4086)


def test_a_write_in_place_overlays(gw):
    gw.write(OID, 0, b"aaaa", 3, create=True)
    gw.write(OID, 1, b"XY", 3)
    assert read(gw, OID, 0, 4) == b"aXYa"


def test_a_write_in_place_to_a_missing_object_is_no_object_at_once(gw):
    started = time.monotonic()
    with pytest.raises(NoObject):
        gw.write(OID, 0, b"x", 3)
    assert time.monotonic() - started < 1.0     # not after waiting for a new epoch


def test_reading_a_missing_object_is_no_object(gw):
    with pytest.raises(NoObject):
        gw.read(OID, 0, 1, 3)


def test_remove_is_idempotent_and_the_object_is_gone(gw):
    gw.remove(OID, 3)                             # nothing there: no error
    gw.write(OID, 0, b"x", 3, create=True)
    assert isinstance(gw.remove(OID, 3), int)
    with pytest.raises(NoObject):
        gw.read(OID, 0, 1, 3)
    gw.flush()


def test_a_volume_behaves_the_same_on_both(gw):
    vid = 0x7c2b26
    header = {"name": "v", "vid": vid, "size": 4 * OS, "block_size_shift": 20, "parent": 0,
              "created": 0}
    Volume.create_inode(gw, vid, header, ObjectMap(4), copies=3)
    vol = Volume.open(gw, vid, 4 * OS, OS, copies=3)
    vol.write(OS - 3, b"across")                  # allocates objects 0 and 1
    vol.trim(OS, OS)                              # frees object 1 (whole)
    vol.write(OS + 10, b"back")                   # allocates it again: fresh
    vol.write_zeroes(2, 2, may_trim=False)
    again = Volume.open(gw, vid, 4 * OS, OS, copies=3)
    assert again.read(OS - 3, 20) == b"acr" + bytes(10) + b"back" + bytes(3)
    assert again.read(0, 5) == b"\0" * 5
    assert [again.objmap.get(i) for i in range(4)] == [vid, vid, 0, 0]
    assert read(gw, inode_oid(vid), 0, 1) != b"\0"
