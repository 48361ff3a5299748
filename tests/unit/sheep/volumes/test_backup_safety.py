"""A restore that can no longer be trusted to commit: its write right lost (broken, the
session gone), its hidden entry discarded by someone else, a stalled or over-long upload;
and the leftovers of restores that cannot finish (their node gone, this sheep restarted)."""
from types import SimpleNamespace

import gevent
import gevent.event
import pytest

import vdi.backup as backup
from common.errors import InvalidRequest, Locked
import sheep.volumes.backup as service
from sheep.volumes.backup import BackupService
from sheep.volumes.service import VdiService
from sheep.volumes.snapshots import SnapshotService
from tests.unit.sheep.volumes.test_backup_restore import (FORMAT, OBJ, Catalog, Gateway,
                                                           content, history, reader,
                                                           stream_of, visible)


class Locks:
    """`coordinator.locks.VdiLocks` in memory: one holder, a generation per acquisition."""

    def __init__(self):
        self.held: dict[int, dict] = {}
        self.generations: dict[int, int] = {}

    def acquire(self, vid, node_id, client):
        if vid in self.held:
            raise Locked(f"VDI {vid:06x} is locked by node {self.held[vid]['node_id']}",
                         holder=self.held[vid]["node_id"])
        self.generations[vid] = self.generation(vid) + 1
        self.held[vid] = {"vid": vid, "node_id": node_id, "client": client,
                          "generation": self.generations[vid]}
        return {**self.held[vid], "previous_clean": True}

    def release(self, vid, node_id, clean=True, lock=None):
        held = self.held.get(vid)
        if held is None or held["node_id"] != node_id or \
                (lock is not None and held["generation"] != lock["generation"]):
            return False
        del self.held[vid]
        return True

    def get(self, vid):
        return self.held.get(vid)

    def generation(self, vid):
        return self.generations.get(vid, 0)

    def state(self, vid):
        return {"generation": self.generation(vid), "clean": True}

    def break_lock(self, vid):
        value = self.held.pop(vid)
        self.generations[vid] += 1
        return value


class FencingGateway(Gateway):
    def broadcast(self, request, what, timeout_s=None):
        return {}


@pytest.fixture
def cluster():
    gateway, locks = FencingGateway(), Locks()
    members = [SimpleNamespace(node_id="node")]
    vdis = VdiService(Catalog(), gateway, lambda: FORMAT, locks=locks, node_id="node")
    snaps = SnapshotService(vdis, None, None, lambda: [], "node")
    return SimpleNamespace(vdis=vdis, snaps=snaps, gw=gateway, locks=locks, members=members,
                           backups=BackupService(vdis, "node", members=lambda: members))


def midway(raw: bytes, action, step: int = 100_000):
    """``reader(raw)`` that runs ``action()`` once, after the first chunk."""
    read, done = reader(raw, step), []

    def read_and_act(n):
        if not done and n:
            done.append(True)
            return read(n)
        if len(done) == 1:
            done.append(True)
            action()
        return read(n)
    return read_and_act


def restoring(c):
    return [e for e in c.vdis.all_entries() if e.get("restoring")]


def test_a_restore_whose_write_right_was_broken_and_taken_again_does_not_commit(cluster):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    working = c.vdis.working("r")
    before = visible(c)

    def break_and_attach():         # an admin breaks the lock; a client attaches and writes
        c.locks.break_lock(working["vid"])
        c.locks.acquire(working["vid"], "other", "client")

    with pytest.raises(Locked, match="write right was lost"):
        c.backups.restore("r", "s2", midway(stream_of(c, "vm", "s2", "s1"), break_and_attach))
    assert visible(c) == before and c.vdis.working("r")["vid"] == working["vid"]
    assert content(c, c.vdis.working("r")) == want["s1"]
    assert restoring(c) and all(e.get("deleted") for e in restoring(c))
    assert c.locks.get(working["vid"])["node_id"] == "other"    # not released by the restore


def test_a_restore_whose_entry_was_discarded_meanwhile_does_not_bring_it_back(cluster,
                                                                             monkeypatch):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    before = visible(c)

    def discard():                  # what another restore's clean-up of leftovers does
        for e in restoring(c):
            c.vdis.mark_deleted(e)

    # not reclaimed yet (the writes into it succeed): the commit is what must refuse
    monkeypatch.setattr(c.vdis.reclaimer, "run", lambda: None)
    with pytest.raises(Locked, match="discarded meanwhile"):
        c.backups.restore("r", "s2", midway(stream_of(c, "vm", "s2", "s1"), discard))
    assert visible(c) == before and content(c, c.vdis.working("r")) == want["s1"]
    assert restoring(c) and all(e.get("deleted") for e in restoring(c))
    monkeypatch.undo()
    c.vdis.reclaimer.run()
    assert restoring(c) == [] and content(c, c.vdis.working("r")) == want["s1"]


def leftover(c, node, name="r"):
    return c.vdis.allocate({"name": name, "size": 4 * OBJ, "copies": 1, "hidden": True,
                            "restoring": node, "block_size_shift": 22, "snapshot": False,
                            "created": 1.0})


def live_restoring(c):
    return sorted(e["restoring"] for e in restoring(c) if not e.get("deleted"))


def test_a_restore_leaves_the_entries_of_restores_on_live_nodes_alone(cluster):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    c.members.append(SimpleNamespace(node_id="busy"))
    leftover(c, "busy")
    leftover(c, "gone")
    c.backups.restore("r", "s2", reader(stream_of(c, "vm", "s2", "s1")))
    assert live_restoring(c) == ["busy"]
    assert content(c, c.vdis.working("r")) == want["s2"]


def test_a_stalled_upload_fails_and_gives_the_write_right_back(cluster, monkeypatch):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    working, before = c.vdis.working("r"), visible(c)
    monkeypatch.setattr(service, "READ_IDLE_S", 0.05)
    never = gevent.event.Event()
    with gevent.Timeout(10), \
            pytest.raises(backup.StreamError, match=r"stalled .*nothing was restored"):
        c.backups.restore("r", "s2", midway(stream_of(c, "vm", "s2", "s1"), never.wait))
    assert c.locks.get(working["vid"]) is None
    assert visible(c) == before and content(c, c.vdis.working("r")) == want["s1"]
    assert restoring(c) and all(e.get("deleted") for e in restoring(c))


def test_bytes_after_the_checksum_in_a_later_read_are_refused(cluster):
    c = cluster
    want = history(c)
    c.snaps.clone("vm", "s1", "r")
    before = visible(c)
    chunks = [stream_of(c, "vm", "s2", "s1"), b"GARBAGE"]

    def read(n):
        return chunks.pop(0) if chunks else b""
    with pytest.raises(backup.StreamError, match=r"7 bytes after the end .*nothing was restored"):
        c.backups.restore("r", "s2", read)
    assert chunks == []
    assert visible(c) == before and content(c, c.vdis.working("r")) == want["s1"]
    assert restoring(c) and all(e.get("deleted") for e in restoring(c))


def test_leftovers_of_gone_nodes_and_at_start_this_nodes_own_are_discarded(cluster):
    c = cluster
    history(c)
    c.members.append(SimpleNamespace(node_id="busy"))
    for node, name in (("node", "a"), ("busy", "b"), ("gone", "c"), ("gone", "vm")):
        leftover(c, node, name)
    assert c.backups.discard_orphans() == 2             # any name; live nodes' stay
    assert live_restoring(c) == ["busy", "node"]
    assert c.backups.discard_orphans(at_start=True) == 1
    assert live_restoring(c) == ["busy"]


def test_a_restores_entry_without_an_inode_does_not_stall_reclaim(cluster):
    c = cluster
    history(c)
    leftover(c, "busy")                 # allocated, no inode (yet)
    assert c.gw.data_objects()
    with gevent.Timeout(3):            # a stalled pass retries for seconds, then gives up
        c.vdis.delete("vm")            # each runs a pass
        c.vdis.delete_snapshot("vm", "s1")
        c.vdis.delete_snapshot("vm", "s2")
    assert not list(c.gw.data_objects())
    assert [e.get("restoring") for e in c.vdis.all_entries()] == ["busy"]


def test_a_vdi_another_restore_holds_is_locked_not_attached(cluster):
    c = cluster
    history(c)
    c.snaps.clone("vm", "s1", "r")
    c.locks.acquire(c.vdis.working("r")["vid"], "other", "restore")
    with pytest.raises(Locked, match="it is locked by node other for 'restore'"):
        c.backups.restore("r", "s2", reader(stream_of(c, "vm", "s2", "s1")))


def test_a_header_size_over_the_maximum_is_refused_before_the_lock(cluster):
    c = cluster
    history(c)
    c.snaps.clone("vm", "s1", "r")
    working = c.vdis.working("r")
    raw = stream_of(c, "vm", "s2", "s1")            # its size made huge
    header = backup.decode(raw)[0].header
    huge = c.vdis.max_size() + OBJ
    header = {**header, "size": huge, "to": {**header["to"], "size": huge}}
    vids = {e["vid"] for e in c.vdis.all_entries()}
    generation = c.locks.generation(working["vid"])
    with pytest.raises(InvalidRequest, match="exceeds the maximum"):
        c.backups.check("r", "x", header)
    with pytest.raises(InvalidRequest, match="exceeds the maximum"):
        c.backups.restore("r", "x", reader(backup.encode(header, [])))
    assert c.locks.generation(working["vid"]) == generation       # never taken
    assert {e["vid"] for e in c.vdis.all_entries()} == vids
