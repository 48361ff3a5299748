"""Placement history: who can hold the newest copy of an object, read once per epoch."""
from __future__ import annotations

from common.errors import Unavailable
from coordinator.ring import Member, Ring
from sheep.recovery.history import MAX_RINGS, History, HistoryLoader, placed_on
from sheep.replication.epoch import EpochView


def member(i: int, started: float = 1.0) -> Member:
    return Member(node_id=f"n{i}", addr="127.0.0.1", port=7000 + i, admin_port=0, nbd_port=0,
                  started=started)


def view(epoch: int, members) -> EpochView:
    return EpochView(epoch, tuple(members), Ring(members))


def record(epoch: int, members) -> dict:
    return {"epoch": epoch, "members": [m.to_dict() for m in members]}


def test_a_join_makes_the_newcomer_need_only_what_it_now_holds_from_the_old_holders():
    old = [member(i) for i in range(5)]
    new = [*old, member(5)]
    h = History("n5", 3, (view(3, old),), view(4, new))
    needed = h.needed((oid, 3) for oid in range(1, 300))
    assert needed and all(placed_on(h.current, "n5", oid, 3) for oid in needed)
    for oid, holders in needed.items():
        # the old holders, and the newcomer itself (a returning member: it may have kept
        # copies from an earlier life)
        assert {m.node_id for m in holders} == \
            {m.node_id for m in h.past[0].ring.replicas(oid, 3)} | {"n5"}
    assert [m.node_id for m in h.returning] == ["n5"]
    # an old member is continuous for everything it keeps: it needs nothing
    assert History("n0", 3, (view(3, old),), view(4, new)).needed(
        (oid, 3) for oid in range(1, 300)) == {}


def test_holders_span_every_ring_since_the_complete_epoch_and_only_current_members():
    a = [member(i) for i in range(6)]
    b = a[:5]                               # n5 left at epoch 3
    c = [*a[:4], member(6)]                 # n4 left, n6 joined at epoch 4
    h = History("n6", 2, (view(2, a), view(3, b)), view(4, c))
    for oid in range(1, 100):
        expect = {m.node_id for v in (h.past[0], h.past[1]) for m in v.ring.replicas(oid, 2)}
        assert {m.node_id for m in h.holders(oid, 2)} == (expect | {"n6"}) & {m.node_id for m in c}
    assert [m.node_id for m in h.returning] == ["n6"]      # absent from epochs 2 and 3


def test_a_node_that_restarted_or_was_away_is_never_continuous():
    members = [member(i) for i in range(4)]
    oid = next(o for o in range(1, 100) if placed_on(view(1, members), "n0", o, 2))
    same = History("n0", 1, (view(1, members),), view(2, members))
    assert same.continuous(oid, 2)
    restarted = [member(0, started=9.0), *members[1:]]
    assert History("n0", 1, (view(1, members),), view(2, restarted)).restarted
    assert not History("n0", 1, (view(1, members),), view(2, restarted)).continuous(oid, 2)
    away = History("n0", 1, (view(1, members[1:]),), view(2, members))
    assert not away.continuous(oid, 2)
    # resumed after a shutdown: the epoch records keep the old start time, the process
    # knows its own
    resumed = History("n0", 1, (view(1, members),), view(2, members), me=member(0, started=9.0))
    assert resumed.restarted and not resumed.continuous(oid, 2)


class Markers:
    def __init__(self, complete, epochs):
        self.complete, self.epochs, self.reads = complete, epochs, []

    def complete_epoch(self, before):
        if isinstance(self.complete, Exception):
            raise self.complete
        return self.complete

    def epoch(self, n):
        self.reads.append(n)
        return self.epochs.get(n)


def test_the_loader_reads_each_epoch_once_and_knows_when_it_cannot_tell():
    members = [member(i) for i in range(3)]
    epochs = {n: record(n, members) for n in range(1, 30)}
    m = Markers(3, epochs)
    loader = HistoryLoader("n0", m)
    h = loader(view(5, members))
    assert (h.complete, [v.epoch for v in h.past]) == (3, [3, 4])
    assert loader(view(5, members)) is h and m.reads == [3, 4]
    assert loader(view(6, members)).complete == 3 and m.reads == [3, 4, 5]   # cached rings
    m.complete = None                                   # nothing complete yet
    assert loader(view(7, members)) is None
    m.complete = 1
    assert loader(view(2 + MAX_RINGS, members)) is None  # too long ago: ask everyone
    m.complete = Unavailable("ZooKeeper unavailable")
    assert loader(view(40, members)) is None
    m.complete = 39
    assert loader(view(40, members)) is None            # epoch 39's record is missing


def test_a_copies_change_since_the_complete_epoch_turns_history_off():
    # epoch 5 is the placement epoch of `collie vdi alter-copy` (same members, seq 1)
    members = [member(i) for i in range(3)]
    epochs = {n: {**record(n, members), **({"placement_seq": 1} if n >= 5 else {})}
              for n in range(1, 10)}
    m = Markers(4, epochs)
    loader = HistoryLoader("n0", m)
    five = EpochView.from_dict(epochs[5])
    assert five.placement_seq == 1
    assert loader(five) is None                         # rings of 4 placed with old copies
    m.complete = 5                                      # once 5 completed, history is back
    h = loader(EpochView.from_dict(epochs[6]))
    assert h is not None and [v.epoch for v in h.past] == [5]
