"""Replicated writes against partial failures, in-process (real gateways, replicas, stores).

Each test breaks one thing the data-integrity issue found: a fan-out straddling an epoch
change, a replica refusing what others applied, a writer vanishing mid-fan-out, a late
write from a superseded lock holder, too few replicas for min_copies.
"""
from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from common.errors import Degraded, NoSpace, StaleGeneration
from sheep.volumes.fencing import VdiFencing
from sheep.volumes.writer import VdiWriter
from tests.unit.sheep.inprocess import Cluster, MiB
from vdi.objects import data_oid

VID = 0x42
OID = data_oid(VID, 7)


class Generations:
    """ZooKeeper's view of the VDI's lock generations, for `VdiFencing` and the replicas."""

    def __init__(self):
        self.current, self.clean, self.released = 0, True, []

    def acquire(self, vid, node_id, client):
        previous_clean = self.clean
        self.current += 1
        self.clean = False
        return {"generation": self.current, "previous_clean": previous_clean}

    def release(self, vid, node_id, clean=True, lock=None):
        self.released.append(clean)
        self.clean = clean
        return True

    def generation(self, vid):
        return self.current


def test_a_fan_out_that_straddled_an_epoch_change_is_sent_again_to_the_new_placement(tmp_path):
    c = Cluster(tmp_path, 3)
    new = c.add_node()
    gw = c.nodes[0].gateway
    # the write completes on the epoch-1 placement; the epoch changes before the gateway
    # returns; an object that only the old placement holds could be lost with one more
    # failure, so it must be sent to the epoch-2 placement too
    moved = []

    def epoch_moves(_header):
        if not moved:
            moved.append(True)
            c.set_epoch(2, c.nodes)
    for n in c.nodes[1:3]:
        c.net.after[(n.member.port, "write")] = epoch_moves
    epoch = gw.write(OID, 0, b"straddle", 3, create=True)
    assert epoch == 2
    placed = {n.node_id for n in c.placed(OID, 3)}
    assert all(c.node(n).store.read(OID, 0, 8) == b"straddle" for n in placed)
    assert new.node_id in placed or len(placed) == 3


def test_a_replica_refusing_what_the_others_applied_leaves_no_copies_apart(tmp_path):
    gens = Generations()
    c = Cluster(tmp_path, 3, generation_of=gens.generation)
    lock = VdiFencing(gens, c.nodes[0].gateway, "n0").take(VID, 3, "a")
    gw = VdiWriter(c.nodes[0].gateway, VID, lock["generation"], None)
    gw.write(OID, 0, b"a" * MiB, 3, create=True)
    full = c.nodes[2]
    full.store.space.reserve_bytes = 1 << 60        # node 2's disk is full from now on
    with pytest.raises(NoSpace):
        gw.write(OID, 0, b"b" * 4096, 3)
    # nodes 0 and 1 applied it: node 2 must not keep (and serve) the old bytes
    copies = c.copies_of(OID)
    assert len(set(copies.values())) == 1, {k: v[:1] for k, v in copies.items()}
    for n in c.nodes:
        assert n.gateway.read(OID, 0, 4096, 3) == b"b" * 4096
    # once it has room again, a write brings the missing copy back
    full.store.space.reserve_bytes = 0
    gw.write(OID, 8192, b"c", 3)
    copies = c.copies_of(OID)
    assert len(copies) == 3 and len(set(copies.values())) == 1


def test_the_next_holder_resyncs_what_a_vanished_writer_left_apart(tmp_path):
    gens = Generations()
    c = Cluster(tmp_path, 3, generation_of=gens.generation)
    first = VdiFencing(gens, c.nodes[0].gateway, "n0")
    lock = first.take(VID, 3, "client-1")
    writer = VdiWriter(c.nodes[0].gateway, VID, lock["generation"], None)
    writer.write(OID, 0, b"a" * 8192, 3, create=True)
    # the writer's node dies while its next write is on the wire: two replicas get it,
    # the third never does (its message is stuck, then the process is gone)
    victim = [n for n in c.placed(OID, 3) if n.node_id != "n0"][0]
    stuck = Event()
    c.net.holds[(victim.member.port, "write")] = stuck
    dying = gevent.spawn(writer.write, OID, 0, b"b" * 4096, 3)
    gevent.sleep(0.05)
    dying.kill()
    copies = c.copies_of(OID)
    assert len(set(copies.values())) == 2           # apart, with equal epochs

    # the next holder, through another node: fence, see the unclean hand-over, resync
    second = VdiFencing(gens, c.nodes[1].gateway, "n1")
    lock2 = second.take(VID, 3, "client-2")
    assert lock2["generation"] == 2 and second.resynced_objects == 1
    copies = c.copies_of(OID)
    assert len(copies) == 3 and len(set(copies.values())) == 1
    agreed = copies["n0"]
    for n in c.nodes:                               # every gateway reads the same bytes
        assert n.gateway.read(OID, 0, 8192, 3) == agreed[:8192]
    # the stuck message arrives now: it carries generation 1 and is refused
    late = gevent.spawn(c.net.dispatch, "n0", victim.member.addr, victim.member.port,
                        {"op": "write", "epoch": 1, "oid": OID, "offset": 0, "create": False,
                         "generation": 1, "seq": 1}, b"L" * 4096)
    del c.net.holds[(victim.member.port, "write")]
    stuck.set()
    late.join()
    assert isinstance(late.exception, StaleGeneration)
    assert c.copies_of(OID)[victim.node_id] == agreed


def test_a_write_from_a_superseded_holder_is_refused_everywhere(tmp_path):
    gens = Generations()
    c = Cluster(tmp_path, 3, generation_of=gens.generation)
    old = VdiWriter(c.nodes[0].gateway, VID, VdiFencing(gens, c.nodes[0].gateway, "n0")
                    .take(VID, 3, "a")["generation"], None)
    old.write(OID, 0, b"old", 3, create=True)
    # its lock is broken and a new holder attaches through node 2 (fencing everyone)
    new_lock = VdiFencing(gens, c.nodes[2].gateway, "n2").take(VID, 3, "b")
    new = VdiWriter(c.nodes[2].gateway, VID, new_lock["generation"], None)
    new.write(OID, 0, b"new", 3)
    with pytest.raises(StaleGeneration):
        old.write(OID, 0, b"late", 3)
    assert set(c.copies_of(OID).values()) == {b"new"}


def test_a_replica_that_restarted_looks_the_generation_up_before_admitting(tmp_path):
    gens = Generations()
    c = Cluster(tmp_path, 3, generation_of=gens.generation)
    VdiFencing(gens, c.nodes[0].gateway, "n0").take(VID, 3, "a")    # generation 1
    VdiFencing(gens, c.nodes[0].gateway, "n0").take(VID, 3, "b")    # generation 2
    for n in c.nodes:
        n.replica.generations.clear()               # as after a restart or a lost session
    with pytest.raises(StaleGeneration):
        c.nodes[1].gateway.write(OID, 0, b"x", 3, create=True, generation=1)
    assert c.copies_of(OID) == {}


def test_writes_below_min_copies_are_refused_with_a_clear_error(tmp_path):
    c = Cluster(tmp_path, 3, min_copies=2)
    c.set_epoch(2, c.nodes[:1])                     # two nodes gone: one replica left
    with pytest.raises(Degraded, match="min_copies"):
        c.nodes[0].gateway.write(OID, 0, b"x", 3, create=True)
    assert c.copies_of(OID) == {}
    c.set_epoch(3, c.nodes[:2])                     # two again: writes go on
    c.nodes[0].gateway.write(OID, 0, b"x", 3, create=True)
    assert len(c.copies_of(OID)) == 2


def test_a_write_admitted_before_a_new_holder_fenced_cannot_land_after_it(tmp_path):
    gens = Generations()
    c = Cluster(tmp_path, 3, generation_of=gens.generation)
    old = VdiWriter(c.nodes[0].gateway, VID, VdiFencing(gens, c.nodes[0].gateway, "n0")
                    .take(VID, 3, "a")["generation"], None)
    old.write(OID, 0, b"A" * 4096, 3, create=True)
    # the old holder's next write is admitted on n1 and then waits there (its object is
    # being recovered, say) while the lock changes hands
    gate, waited = Event(), []

    class SlowRecovery:
        def ensure(self, oid, epoch):
            if not waited:
                waited.append(True)
                gate.wait()

        def created(self, oid, epoch):
            pass
    c.node("n1").replica.recovery = SlowRecovery()
    late = gevent.spawn(old.write, OID, 0, b"L" * 4096, 3)
    gevent.sleep(0.05)
    assert waited
    # the new holder's fence waits for that admitted write to finish; let it go on
    taking = gevent.spawn(VdiFencing(gens, c.node("n2").gateway, "n2").take, VID, 3, "b")
    gevent.sleep(0.05)
    assert not taking.ready()
    gate.set()
    gen2 = taking.get(timeout=5)["generation"]
    late.join(timeout=5)
    VdiWriter(c.node("n2").gateway, VID, gen2, None).write(OID, 0, b"N" * 4096, 3)
    copies = c.copies_of(OID)
    assert {v[:1] for v in copies.values()} == {b"N"}, {k: v[:1] for k, v in copies.items()}


def test_a_local_disk_error_never_leaves_copies_apart_under_a_clean_writer(tmp_path):
    gens = Generations()
    c = Cluster(tmp_path, 3, generation_of=gens.generation)
    lock = VdiFencing(gens, c.nodes[0].gateway, "n0").take(VID, 3, "a")
    writer = VdiWriter(c.nodes[0].gateway, VID, lock["generation"], None)
    writer.write(OID, 0, b"a" * 4096, 3, create=True)
    store = c.nodes[0].store

    def eio(*a, **k):
        raise OSError(5, "Input/output error")
    store.write_cached = eio
    store.write = eio
    with pytest.raises(Exception):
        writer.write(OID, 0, b"b" * 4096, 3)
    assert not writer.clean                  # the next holder resyncs what it touched


def test_overlapping_writes_land_in_one_order_on_every_replica(tmp_path):
    c = Cluster(tmp_path, 3)
    gw = c.nodes[0].gateway
    gw.write(OID, 0, b"0" * 4096, 3, create=True)
    # the first write is held on its way to one replica (the network reorders): the second
    # must not overtake it anywhere
    victim = [n for n in c.placed(OID, 3) if n.node_id != "n0"][0]
    stuck = Event()
    c.net.holds[(victim.member.port, "write")] = stuck
    first = gevent.spawn(gw.write, OID, 0, b"1" * 4096, 3)
    gevent.sleep(0.02)
    del c.net.holds[(victim.member.port, "write")]
    second = gevent.spawn(gw.write, OID, 0, b"2" * 4096, 3)
    gevent.sleep(0.02)
    stuck.set()
    gevent.joinall([first, second], raise_error=True)
    copies = c.copies_of(OID)
    assert len(set(copies.values())) == 1, {k: v[:1] for k, v in copies.items()}
    assert set(copies.values()) == {b"2" * 4096}


def test_writes_to_separate_ranges_of_one_object_still_run_together(tmp_path):
    c = Cluster(tmp_path, 3)
    gw = c.nodes[0].gateway
    gw.write(OID, 0, b"0" * 8192, 3, create=True)
    victim = [n for n in c.placed(OID, 3) if n.node_id != "n0"][0]
    stuck = Event()
    c.net.holds[(victim.member.port, "write")] = stuck
    first = gevent.spawn(gw.write, OID, 0, b"1" * 4096, 3)
    gevent.sleep(0.02)
    del c.net.holds[(victim.member.port, "write")]
    second = gevent.spawn(gw.write, OID, 4096, b"2" * 4096, 3)
    second.join(timeout=2)
    assert second.successful() and not first.ready()    # not held back by the first
    stuck.set()
    first.join(timeout=2)
    assert set(c.copies_of(OID).values()) == {b"1" * 4096 + b"2" * 4096}
