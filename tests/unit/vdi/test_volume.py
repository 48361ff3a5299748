"""Volume byte-range I/O against an in-memory gateway."""
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidRequest, NoObject, OutOfRange, ReadOnly
from tests.unit.vdi.fake_gateway import FakeGateway
from vdi.inode import ObjectMap, decode_header
from vdi.objects import INODE_HEADER_BYTES, MAX_INDEXES, data_oid, inode_oid, nr_indexes
from vdi.volume import Volume

OS = 4096  # small objects keep the tests fast
VID, PARENT = 0x7C2B26, 0x7C2B25


def new_volume(gw, size, vid=VID, objmap=None, readonly=False):
    objmap = objmap or ObjectMap(nr_indexes(size, OS))
    header = {"name": "v", "vid": vid, "size": size, "block_size_shift": 12, "parent": 0, "created": 0}
    Volume.create_inode(gw, vid, header, objmap, copies=3)
    return Volume.open(gw, vid, size, OS, copies=3, readonly=readonly)


def persisted_map(gw, vid, nr):
    raw = gw.objects[inode_oid(vid)]
    return ObjectMap.from_bytes(bytes(raw[INODE_HEADER_BYTES:INODE_HEADER_BYTES + 4 * nr]).ljust(4 * nr, b"\0"))


# -- create / open ---------------------------------------------------------------------

def test_create_inode_and_open():
    gw = FakeGateway()
    om = ObjectMap(3)
    om.set(1, PARENT)
    Volume.create_inode(gw, VID, {"name": "v", "size": 3 * OS}, om, copies=2)
    assert gw.created == [inode_oid(VID)]
    assert decode_header(gw.objects[inode_oid(VID)]) == {"name": "v", "size": 3 * OS}
    vol = Volume.open(gw, VID, 3 * OS, OS, copies=2)
    assert vol.objmap == om and vol.vid == VID and vol.size == 3 * OS and not vol.readonly


def test_open_reads_only_needed_entries():
    gw = FakeGateway()
    om = ObjectMap(10)
    om.set(9, 5)
    Volume.create_inode(gw, VID, {}, om, copies=1)
    vol = Volume.open(gw, VID, 2 * OS + 1, OS, copies=1)
    assert len(vol.objmap) == 3


def test_map_shorter_than_volume_rejected():
    with pytest.raises(InvalidRequest):
        Volume(VID, 3 * OS, OS, 1, FakeGateway(), ObjectMap(2))


# -- read / write -------------------------------------------------------------------------

def test_unwritten_reads_zeros_without_io():
    gw = FakeGateway()
    vol = new_volume(gw, 4 * OS)
    reads = gw.calls["read"]
    assert vol.read(100, 3 * OS) == bytes(3 * OS)
    assert gw.calls["read"] == reads
    assert gw.data_objects() == set()


def test_write_across_boundaries_reads_back():
    gw = FakeGateway()
    vol = new_volume(gw, 4 * OS)
    data = bytes(range(256)) * 20  # 5120 bytes: spans objects 0..2 from an odd offset
    vol.write(OS - 7, data)
    assert vol.read(OS - 7, len(data)) == data
    assert vol.read(0, OS - 7) == bytes(OS - 7)
    assert gw.data_objects() == {data_oid(VID, 0), data_oid(VID, 1), data_oid(VID, 2)}
    # the map is persisted entry by entry
    assert persisted_map(gw, VID, 4) == vol.objmap
    assert [vol.objmap.get(i) for i in range(4)] == [VID, VID, VID, 0]
    # rewriting an allocated object creates nothing
    before = list(gw.created)
    vol.write(5, b"xyz")
    assert gw.created == before
    assert vol.read(0, 10) == bytes(5) + b"xyz" + bytes(2)


def test_data_written_before_map_entry():
    gw = FakeGateway()
    vol = new_volume(gw, 2 * OS)
    order = []
    gw.hook = lambda op, oid, create: order.append(oid)
    vol.write(OS + 1, b"a")
    assert order == [data_oid(VID, 1), inode_oid(VID)]


def test_copy_on_write_from_parent():
    gw = FakeGateway()
    parent = new_volume(gw, 4 * OS, vid=PARENT)
    parent.write(0, b"P" * (3 * OS))
    parent_objects = {o: bytes(b) for o, b in gw.objects.items() if o >> 32 == PARENT}
    child = new_volume(gw, 4 * OS, vid=VID, objmap=parent.objmap.copy())
    assert child.read(0, 3 * OS) == b"P" * (3 * OS)
    created = len(gw.created)
    child.write(OS + 10, b"c" * 20)                 # inside object 1
    child.write(2 * OS - 5, b"d" * 10)              # objects 1 and 2
    assert len(gw.created) == created + 2           # exactly (VID,1) and (VID,2)
    assert set(gw.created[created:]) == {data_oid(VID, 1), data_oid(VID, 2)}
    expect = bytearray(b"P" * (3 * OS))
    expect[OS + 10:OS + 30] = b"c" * 20
    expect[2 * OS - 5:2 * OS + 5] = b"d" * 10
    assert child.read(0, 3 * OS) == bytes(expect)
    assert [child.objmap.get(i) for i in range(4)] == [PARENT, VID, VID, 0]
    assert persisted_map(gw, VID, 4) == child.objmap
    # the parent is untouched
    assert {o: bytes(b) for o, b in gw.objects.items() if o >> 32 == PARENT} == parent_objects
    assert parent.read(0, 3 * OS) == b"P" * (3 * OS)
    # overwriting a whole shared object does not read the parent's copy
    reads = gw.calls["read"]
    child.write(0, b"w" * OS)
    assert gw.calls["read"] == reads and child.objmap.get(0) == VID
    assert child.read(0, OS) == b"w" * OS and parent.read(0, 1) == b"P"


def test_out_of_range_and_read_only():
    gw = FakeGateway()
    vol = new_volume(gw, 2 * OS)
    for bad in [(-1, 1), (2 * OS, 1), (OS, OS + 1)]:
        with pytest.raises(OutOfRange):
            vol.read(*bad)
        with pytest.raises(OutOfRange):
            vol.write(bad[0], b"x" * bad[1])
        with pytest.raises(OutOfRange):
            vol.trim(*bad)
    assert vol.read(2 * OS, 0) == b""
    ro = Volume.open(gw, VID, 2 * OS, OS, copies=3, readonly=True)
    with pytest.raises(ReadOnly):
        ro.write(0, b"x")
    with pytest.raises(ReadOnly):
        ro.trim(0, OS)
    with pytest.raises(ReadOnly):
        ro.write_zeroes(0, OS, may_trim=False)
    assert gw.data_objects() == set()


def test_missing_object_is_an_error():
    gw = FakeGateway()
    om = ObjectMap(1)
    om.set(0, VID)  # entry without its object: lost data must not read as zeros
    vol = new_volume(gw, OS, objmap=om)
    with pytest.raises(NoObject):
        vol.read(0, 10)


def test_read_returns_a_buffer_of_the_callers_own():
    gw = FakeGateway()
    vol = new_volume(gw, 3 * OS)
    vol.write(OS - 2, b"abcd")
    first = vol.read(OS - 4, 8)                 # spans two objects
    assert isinstance(first, bytearray) and first == b"\0\0abcd\0\0"
    first[:] = b"X" * 8                         # the caller may reuse it
    assert vol.read(OS - 4, 8) == b"\0\0abcd\0\0"
    assert gw.objects[data_oid(VID, 0)][-2:] == b"ab"


def test_short_last_object():
    gw = FakeGateway()
    vol = new_volume(gw, OS + 100)
    vol.write(OS + 90, b"0123456789")
    assert vol.read(OS + 90, 10) == b"0123456789"
    vol.trim(OS, 100)  # the whole of the short last object
    assert vol.objmap.get(1) == 0 and gw.data_objects() == set()


# -- trim / zeroes / status -----------------------------------------------------------------------

def test_trim_frees_whole_objects_and_zeroes_partial():
    gw = FakeGateway()
    vol = new_volume(gw, 4 * OS)
    vol.write(0, b"x" * (4 * OS))
    vol.trim(OS // 2, 2 * OS)  # half of 0, all of 1, half of 2
    assert [vol.objmap.get(i) for i in range(4)] == [VID, 0, VID, VID]
    assert data_oid(VID, 1) not in gw.objects and gw.calls["remove"] == 1
    assert persisted_map(gw, VID, 4) == vol.objmap
    assert vol.read(0, 4 * OS) == b"x" * (OS // 2) + bytes(2 * OS) + b"x" * (OS + OS // 2)
    vol.trim(OS, OS)  # already a hole: nothing to do
    assert gw.calls["remove"] == 1


def test_trim_parent_object_only_clears_entry():
    gw = FakeGateway()
    parent = new_volume(gw, 2 * OS, vid=PARENT)
    parent.write(0, b"p" * (2 * OS))
    child = new_volume(gw, 2 * OS, objmap=parent.objmap.copy())
    child.trim(0, OS)
    assert child.objmap.get(0) == 0 and gw.calls["remove"] == 0
    assert data_oid(PARENT, 0) in gw.objects
    child.trim(OS, 10)  # partial piece of a shared object: copy-on-write of zeros
    assert child.objmap.get(1) == VID
    assert child.read(OS, 20) == bytes(10) + b"p" * 10
    assert parent.read(OS, 20) == b"p" * 20


def test_trim_of_holes_creates_nothing():
    gw = FakeGateway()
    vol = new_volume(gw, 3 * OS)
    vol.trim(10, 2 * OS)
    vol.write_zeroes(10, 2 * OS)
    assert gw.data_objects() == set()


def test_write_zeroes_no_trim_allocates():
    gw = FakeGateway()
    vol = new_volume(gw, 3 * OS)
    vol.write(0, b"y" * (3 * OS))
    vol.write_zeroes(0, 2 * OS, may_trim=True)
    assert vol.objmap.get(0) == 0 and vol.objmap.get(1) == 0
    vol.write_zeroes(0, OS + 1, may_trim=False)
    assert vol.objmap.get(0) == VID and vol.objmap.get(1) == VID
    assert vol.read(0, 3 * OS) == bytes(2 * OS) + b"y" * OS


def test_block_status():
    gw = FakeGateway()
    vol = new_volume(gw, 6 * OS)
    vol.write(OS, b"a")
    vol.write(2 * OS, b"b")
    vol.write(5 * OS, b"c")
    assert vol.block_status(0, 6 * OS) == [(OS, True), (2 * OS, False), (2 * OS, True), (OS, False)]
    assert vol.block_status(OS // 2, OS) == [(OS // 2, True), (OS // 2, False)]
    assert vol.block_status(5 * OS + 1, 10 * OS) == [(OS - 1, False)]  # clipped to size
    assert vol.block_status(6 * OS, 10) == []
    with pytest.raises(OutOfRange):
        vol.block_status(6 * OS + 1, 1)


# -- flush / resize -------------------------------------------------------------------------------

def test_flush_and_resize():
    gw = FakeGateway()
    vol = new_volume(gw, OS)
    vol.flush()
    assert gw.calls["flush"] == 1
    with pytest.raises(InvalidRequest):
        vol.resize(OS - 1)
    with pytest.raises(InvalidRequest):
        vol.resize(OS * MAX_INDEXES + 1)
    vol.resize(3 * OS + 5)
    assert vol.size == 3 * OS + 5 and len(vol.objmap) == 4
    vol.write(3 * OS, b"tail!")
    assert vol.read(3 * OS, 5) == b"tail!"
    assert Volume.open(gw, VID, 3 * OS + 5, OS, 3).read(3 * OS, 5) == b"tail!"


# -- concurrency -------------------------------------------------------------------------------------

def test_concurrent_first_writes_create_once():
    gw = FakeGateway()
    vol = new_volume(gw, 2 * OS)
    release = threading.Event()

    def hook(op, oid, create):
        if create and oid == data_oid(VID, 0):
            release.wait(5)
    gw.hook = hook
    a = threading.Thread(target=vol.write, args=(0, b"A" * 10))
    b = threading.Thread(target=vol.write, args=(100, b"B" * 10))
    a.start()
    b.start()
    deadline = time.monotonic() + 5
    while vol._index_locks.get(0, [None, 0])[1] < 2 and time.monotonic() < deadline:
        time.sleep(0)  # wait until the second writer queues on the index lock
    release.set()
    a.join(5)
    b.join(5)
    assert gw.created.count(data_oid(VID, 0)) == 1
    assert vol.read(0, 110) == b"A" * 10 + bytes(90) + b"B" * 10
    assert vol._index_locks == {}


def test_write_racing_trim_reallocates():
    gw = FakeGateway()
    vol = new_volume(gw, OS)
    vol.write(0, b"z")
    fired = []

    def hook(op, oid, create):
        # a trim of the whole object lands between the writer's map check and its write
        if oid == data_oid(VID, 0) and not create and not fired:
            fired.append(1)
            vol.trim(0, OS)
    gw.hook = hook
    vol.write(1, b"q")
    assert fired and vol.objmap.get(0) == VID
    assert vol.read(0, 2) == b"\0q"
    assert persisted_map(gw, VID, 1) == vol.objmap


# -- model check -------------------------------------------------------------------------------------

SIZE = 5 * OS + 1000
offsets = st.integers(0, SIZE)
op = st.one_of(
    st.tuples(st.just("write"), offsets, st.integers(0, 2 * OS + 10), st.integers(1, 255)),
    st.tuples(st.just("trim"), offsets, st.integers(0, 3 * OS), st.just(0)),
    st.tuples(st.just("zero"), offsets, st.integers(0, 2 * OS), st.just(0)),
    st.tuples(st.just("read"), offsets, st.integers(0, 3 * OS), st.just(0)),
)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(op, max_size=25), with_parent=st.booleans())
def test_volume_matches_bytearray_model(ops, with_parent):
    gw = FakeGateway()
    model = bytearray(SIZE)
    objmap = None
    parent_snapshot = None
    if with_parent:
        parent = new_volume(gw, SIZE, vid=PARENT)
        parent.write(OS, bytes([7]) * (3 * OS))
        model[OS:4 * OS] = bytes([7]) * (3 * OS)
        objmap = parent.objmap.copy()
        parent_snapshot = {o: bytes(b) for o, b in gw.objects.items()}
    vol = new_volume(gw, SIZE, objmap=objmap)
    for kind, off, length, byte in ops:
        length = min(length, SIZE - off)
        if kind == "write":
            vol.write(off, bytes([byte]) * length)
            model[off:off + length] = bytes([byte]) * length
        elif kind in ("trim", "zero"):
            if kind == "trim":
                vol.trim(off, length)
            else:
                vol.write_zeroes(off, length, may_trim=False)
            model[off:off + length] = bytes(length)
        else:
            assert vol.read(off, length) == model[off:off + length]
    assert vol.read(0, SIZE) == model
    # holes read as zeros, the persisted map equals the in-memory one
    pos = 0
    for n, hole in vol.block_status(0, SIZE):
        if hole:
            assert model[pos:pos + n] == bytes(n)
        pos += n
    assert pos == SIZE
    nr = nr_indexes(SIZE, OS)
    assert persisted_map(gw, VID, nr) == vol.objmap
    # exactly the objects the map says we own exist
    owned = {data_oid(VID, i) for i in range(nr) if vol.objmap.get(i) == VID}
    assert {o for o in gw.data_objects() if o >> 32 == VID} == owned
    if parent_snapshot is not None:
        assert {o: bytes(gw.objects[o]) for o in parent_snapshot} == parent_snapshot


def test_an_object_mapped_in_a_later_epoch_than_it_was_written_is_written_again():
    # recovery judges liveness from the maps: an object must sit on the placement of the
    # epoch in which its map entry appeared, so a change of epoch in between means again
    gw = FakeGateway()
    vol = new_volume(gw, 4 * OS)
    oid = data_oid(VID, 1)
    writes = []

    def epoch_moves_after_the_data(op, target, create):
        if target == inode_oid(VID) and writes and writes[-1] == (oid, True, 1):
            gw.epoch = 2                # the data completed at 1, the entry lands at 2
        writes.append((target, create, gw.epoch))
    gw.hook = epoch_moves_after_the_data
    vol.write(OS + 5, b"abc")
    assert writes == [(oid, True, 1), (inode_oid(VID), False, 2), (oid, True, 2)]
    assert vol.read(OS, 10) == b"\0" * 5 + b"abc\0\0"
    # the same epoch throughout: written once
    writes.clear()
    vol.write(2 * OS, b"x")
    assert [w[0] for w in writes] == [data_oid(VID, 2), inode_oid(VID)]


# -- following another writer (attached without the write right) ---------------------------

def test_a_following_volume_sees_allocations_trims_and_copies_made_by_the_writer():
    gw = FakeGateway()
    om = ObjectMap(4)
    om.set(3, PARENT)                                   # index 3 shared with the parent
    gw.objects[data_oid(PARENT, 3)] = bytearray(b"p" * OS)
    writer = new_volume(gw, 4 * OS, objmap=om)
    reader = Volume.open(gw, VID, 4 * OS, OS, copies=3)
    reader.follow = True

    writer.write(OS + 10, b"new")                       # allocates index 1
    writer.write(3 * OS, b"c")                          # copy-on-write of index 3
    assert reader.read(OS + 10, 3) == b"new"
    assert reader.read(3 * OS, 2) == b"cp"
    assert reader.block_status(0, 4 * OS) == [(OS, True), (OS, False), (OS, True), (OS, False)]

    writer.trim(OS, OS)                                 # the object it had read goes
    assert reader.read(OS + 10, 3) == bytes(3)
    assert reader.block_status(OS, OS) == [(OS, True)]


def test_a_volume_that_does_not_follow_keeps_its_map_and_reads_no_inode():
    gw = FakeGateway()
    writer = new_volume(gw, 2 * OS)
    reader = Volume.open(gw, VID, 2 * OS, OS, copies=3)
    writer.write(0, b"x")
    reads = gw.calls["read"]
    assert reader.read(0, 1) == b"\0"                   # a hole in its own map: no I/O
    assert gw.calls["read"] == reads
