"""BackupService over an in-memory catalog and gateway: the diff of two snapshots, a restore
committed only after the whole stream verified, and a bad stream or a wrong base leaving the
target exactly as it was (what was written into the hidden entry reclaimed)."""
import json
import os
from types import SimpleNamespace

import pytest

import vdi.backup as backup
from common.errors import AlreadyExists, InvalidRequest, NotFound
from sheep.volumes.backup import BackupService
from sheep.volumes.service import VdiService
from sheep.volumes.snapshots import SnapshotService
from tests.unit.vdi.fake_gateway import FakeGateway
from vdi import objects

MiB = 1 << 20
OBJ = 4 * MiB
FORMAT = {"copies": 1, "block_size_shift": 22, "created": 123.0}


class Catalog:
    """`coordinator.catalog.Catalog` in memory: CAS versions, decoded copies."""

    def __init__(self):
        self.znodes: dict[int, tuple[bytes, int]] = {}

    def list(self):
        return [self.get(vid) for vid in sorted(self.znodes)]

    def get(self, vid):
        return self.get_with_version(vid)[0]

    def get_with_version(self, vid):
        if vid not in self.znodes:
            raise NotFound(f"no VDI with vid {vid:06x}")
        data, version = self.znodes[vid]
        return json.loads(data), version

    def create(self, vid, entry):
        if vid in self.znodes:
            raise AlreadyExists("taken")
        self.znodes[vid] = (json.dumps({**entry, "vid": vid}).encode(), 0)

    def update(self, vid, entry, expected_version=None):
        if vid not in self.znodes:
            raise NotFound(f"no VDI with vid {vid:06x}")
        version = self.znodes[vid][1]
        if expected_version is not None and expected_version != version:
            raise AlreadyExists("changed", conflict=True)
        self.znodes[vid] = (json.dumps({**entry, "vid": vid}).encode(), version + 1)
        return version + 1

    def delete(self, vid, expected_version=None):
        self.znodes.pop(vid)

    def watch(self, vid, on_change):
        pass


class Gateway(FakeGateway):
    """The fake gateway with the writer's keywords, sequence numbers and guard."""

    def __init__(self):
        super().__init__()
        self.seq = 0
        self.guard = SimpleNamespace(check=lambda: None)

    def next_seq(self):
        self.seq += 1
        return self.seq

    def write(self, oid, offset, data, copies, create=False, **_):
        return super().write(oid, offset, data, copies, create)

    def remove(self, oid, copies, **_):
        return super().remove(oid, copies)

    def flush(self, settle=None):
        super().flush()


@pytest.fixture
def cluster():
    gateway = Gateway()
    vdis = VdiService(Catalog(), gateway, lambda: FORMAT)
    snaps = SnapshotService(vdis, None, None, lambda: [], "node")
    return SimpleNamespace(vdis=vdis, snaps=snaps, gw=gateway,
                           backups=BackupService(vdis, "node"))


def snapshot(c, name, tag):
    working = c.vdis.working(name)
    return c.snaps.freeze(working, tag, c.vdis.read_map(working))


def content(c, entry) -> bytes:
    return bytes(c.vdis.open_volume(entry, readonly=True).read(0, entry["size"]))


def stream_of(c, name, to, since=None) -> bytes:
    answer = c.backups.diff(name, to, since)
    snap = c.vdis.snapshot(name, to)
    volume = c.vdis.open_volume(snap, readonly=True)
    records = [(off, n) if kind == "zero" else (off, bytes(volume.read(off, n)))
               for off, n, kind in answer["extents"]]
    split = []                          # data records of at most 4 MiB
    for off, what in records:
        if isinstance(what, int):
            split.append((off, what))
        else:
            split += [(off + i, what[i:i + OBJ]) for i in range(0, len(what), OBJ)]
    return backup.encode(answer["header"], split)


def reader(raw: bytes, step: int = 100_000):
    pos = [0]

    def read(n):
        chunk = raw[pos[0]:pos[0] + min(n, step)]
        pos[0] += len(chunk)
        return chunk
    return read


def history(c):
    """vm: s1 (objects 0-2 written), s2 (object 1 rewritten, object 2 trimmed, object 3 new)."""
    c.vdis.create("vm", 4 * OBJ)
    c.vdis.write("vm", 0, os.urandom(3 * OBJ))
    snapshot(c, "vm", "s1")
    c.vdis.write("vm", OBJ + 100, b"\x42" * 5000)
    c.vdis.open_volume(c.vdis.working("vm")).trim(2 * OBJ, OBJ)
    c.vdis.write("vm", 3 * OBJ, b"\x43" * OBJ)
    snapshot(c, "vm", "s2")
    return {t: content(c, c.vdis.snapshot("vm", t)) for t in ("s1", "s2")}


def test_diff_lists_the_changed_objects(cluster):
    history(cluster)
    answer = cluster.backups.diff("vm", "s2", "s1")
    assert answer["extents"] == [[OBJ, OBJ, "data"], [2 * OBJ, OBJ, "zero"],
                                 [3 * OBJ, OBJ, "data"]]
    header = answer["header"]
    assert header["from"]["tag"] == "s1" and header["to"]["tag"] == "s2"
    assert header["from"]["state"] != header["to"]["state"]
    full = cluster.backups.diff("vm", "s1")
    assert full["header"]["from"] is None
    assert [e[2] for e in full["extents"]] == ["data", "zero"]
    with pytest.raises(NotFound):
        cluster.backups.diff("vm", "nope")


def test_restore_onto_a_clone_of_the_base_commits_a_snapshot_and_a_working_vdi(cluster):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    result = c.backups.restore("r", "s2", reader(stream_of(c, "vm", "s2", "s1")))
    assert (result["records"], result["data_bytes"], result["zero_bytes"]) == (3, 2 * OBJ, OBJ)
    snap = c.vdis.snapshot("r", "s2")
    assert content(c, snap) == want["s2"] == content(c, c.vdis.working("r"))
    assert snap["backup_state"] == c.backups.ident(c.vdis.snapshot("vm", "s2"))["state"]
    working = c.vdis.working("r")
    assert working["parent"] == snap["vid"] and working["vid"] == result["working"]["vid"]
    # the next increment would find its base: the working VDI is at r@s2, state of vm@s2
    header = backup.decode(stream_of(c, "vm", "s2", "s1"))[0].header
    header = {**header, "from": header["to"]}
    assert c.backups.check("r", "s3", header)["target"]["vid"] == working["vid"]


def visible(c):
    return [(e["name"], e.get("tag"), e["vid"]) for e in c.vdis.entries()]


def owned_by(c, vid):
    return [oid for oid in c.gw.data_objects() if objects.oid_vid(oid) == vid]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_bad_stream_leaves_the_target_as_it_was(cluster, damage):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    before, objects_before = visible(c), set(c.gw.data_objects())
    raw = bytearray(stream_of(c, "vm", "s2", "s1"))
    if damage == "truncate":
        raw = raw[:-20]
    else:
        raw[len(raw) - 60] ^= 1         # in the last data payload: only the checksum sees it
    with pytest.raises(backup.StreamError, match="nothing was restored"):
        c.backups.restore("r", "s2", reader(bytes(raw)))
    # nothing visible changed; the hidden entry the records went into is deleted ...
    assert visible(c) == before and content(c, c.vdis.working("r")) == want["s1"]
    hidden = [e for e in c.vdis.all_entries() if e.get("restoring")]
    assert hidden and all(e.get("deleted") for e in hidden)
    # ... and reclaimed with every object it had
    c.vdis.reclaimer.run()
    assert not [e for e in c.vdis.all_entries() if e.get("restoring")]
    assert set(c.gw.data_objects()) == objects_before


def test_a_wrong_base_is_refused_before_anything_is_allocated(cluster):
    c = cluster
    history(c)
    c.snaps.clone("vm", "s2", "r")           # at s2, the stream wants s1
    vids = {e["vid"] for e in c.vdis.all_entries()}
    with pytest.raises(InvalidRequest, match="descends from 'vm' snapshot 's2'"):
        c.backups.restore("r", "x", reader(stream_of(c, "vm", "s2", "s1")))
    assert {e["vid"] for e in c.vdis.all_entries()} == vids
    # written since the base
    c.snaps.clone("vm", "s1", "w")
    c.vdis.write("w", 0, b"x")
    with pytest.raises(InvalidRequest, match="1 objects differ"):
        c.backups.restore("w", "x", reader(stream_of(c, "vm", "s2", "s1")))


def test_a_full_restore_needs_force_over_data_of_its_own(cluster):
    c = cluster
    want = history(c)
    old = c.vdis.create("f", 4 * OBJ)
    c.vdis.write("f", 5, b"mine")
    assert owned_by(c, old["vid"])
    full = stream_of(c, "vm", "s2")
    with pytest.raises(InvalidRequest, match="pass -f"):
        c.backups.restore("f", "s2", reader(full))
    c.backups.restore("f", "s2", reader(full), force=True)
    assert content(c, c.vdis.working("f")) == want["s2"]
    with pytest.raises(AlreadyExists):
        c.backups.restore("f", "s2", reader(full))
    c.vdis.reclaimer.run()             # the replaced VDI's own object is discarded
    assert owned_by(c, old["vid"]) == []


def test_leftovers_of_an_unfinished_restore_are_removed_by_the_next(cluster):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    leftover = c.vdis.allocate({"name": "r", "size": 4 * OBJ, "copies": 1, "hidden": True,
                                "restoring": "dead-node", "block_size_shift": 22,
                                "snapshot": False, "created": 1.0})
    c.backups.restore("r", "s2", reader(stream_of(c, "vm", "s2", "s1")))
    # deleted (and, once reclaimed, forgotten: its vid may already be someone else's)
    assert not [e for e in c.vdis.all_entries()
                if e.get("restoring") == "dead-node" and not e.get("deleted")]
    assert leftover["vid"] not in {e["vid"] for e in c.vdis.entries() if e["name"] == "r"
                                   and e.get("restoring")}
    assert content(c, c.vdis.working("r")) == want["s2"]


def test_a_snapshot_read_by_vid_refuses_a_tag_made_again(cluster):
    c = cluster
    history(c)
    first = c.vdis.snapshot("vm", "s2")
    assert c.vdis.snapshot("vm", "s2", vid=first["vid"])["vid"] == first["vid"]
    c.vdis.delete_snapshot("vm", "s2")
    snapshot(c, "vm", "s2")                 # the same tag, another snapshot
    with pytest.raises(NotFound, match="deleted and made again"):
        c.vdis.snapshot("vm", "s2", vid=first["vid"])
