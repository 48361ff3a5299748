"""Ring placement: determinism, balance, minimal movement, zones, weights."""
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.ring import Member, Ring, fnv1a64, mix64

# Realistic oids: the data objects of four VDIs (they differ only in low bytes).
OIDS = [(vid << 32) | idx for vid in (0x7C2B25, 0x7C2B26, 0x1, 0xABCDEF) for idx in range(25_000)]
SMALL_OIDS = OIDS[::5]


def node(i, zone="", weight=1):
    return Member(f"10.0.0.{i}:7000", f"10.0.0.{i}", 7000, 7001, 10809, zone=zone, weight=weight)


def shares(ring, oids, copies):
    primary, anyrep = Counter(), Counter()
    for oid in oids:
        reps = ring.replicas(oid, copies)
        primary[reps[0].node_id] += 1
        for m in reps:
            anyrep[m.node_id] += 1
    return primary, anyrep


# -- hashing ---------------------------------------------------------------

def test_fnv1a64_known_vectors():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8
    assert fnv1a64(b"test") & 0xFFFFFF == 0x7C2B25


def test_mix64_is_a_bijection_on_samples():
    xs = [0, 1, 2, 1 << 63, (1 << 64) - 1] + list(range(1000, 2000))
    assert len({mix64(x) for x in xs}) == len(xs)
    assert all(0 <= mix64(x) < 1 << 64 for x in xs)


# -- Member ------------------------------------------------------------------

def test_member_dict_roundtrip_and_extra_keys():
    m = Member("a:1", "10.1.1.1", 1, 2, 3, zone="rack1", weight=2, started=12.5)
    d = m.to_dict()
    assert d["node_id"] == "a:1" and d["zone"] == "rack1"
    assert Member.from_dict(d) == m
    assert Member.from_dict({**d, "store": {"objects": 3}}) == m
    with pytest.raises(Exception):
        m.weight = 3  # frozen


def test_member_defaults():
    m = Member.from_dict({"node_id": "x", "addr": "h", "port": 1, "admin_port": 2, "nbd_port": 3})
    assert (m.zone, m.weight, m.started) == ("", 1, 0.0)


# -- basic shape ---------------------------------------------------------------

def test_members_sorted_and_zones():
    ring = Ring([node(3), node(1, zone="a"), node(2, zone="a")])
    assert [m.node_id for m in ring.members] == sorted(m.node_id for m in ring.members)
    assert ring.zones() == 2
    assert ring.copies_for(3) == 2
    assert ring.copies_for(1) == 1


def test_empty_ring_places_nothing():
    ring = Ring([])
    assert ring.zones() == 0
    assert ring.replicas(123, 3) == []
    assert ring.primary(123) is None


def test_duplicate_node_id_rejected():
    with pytest.raises(ValueError):
        Ring([node(1), node(1)])


def test_weight_zero_member_holds_nothing():
    gw = node(9, weight=0)
    ring = Ring([node(1), node(2), node(3), gw])
    assert ring.zones() == 3
    for oid in SMALL_OIDS[:2000]:
        assert gw not in ring.replicas(oid, 3)


def test_replicas_distinct_primary_first():
    ring = Ring([node(i) for i in range(5)])
    for oid in SMALL_OIDS[:2000]:
        reps = ring.replicas(oid, 3)
        assert len(reps) == 3 and len(set(reps)) == 3
        assert ring.replicas(oid, 1) == reps[:1]
        assert ring.replicas(oid, 2) == reps[:2]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_same_members_any_order_same_placement(n, data):
    members = [node(i, zone=f"z{i % 3}" if i % 2 else "") for i in range(n)]
    shuffled = data.draw(st.permutations(members))
    a, b = Ring(members), Ring(shuffled)
    assert a.members == b.members
    for oid in data.draw(st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=50)):
        assert a.replicas(oid, 3) == b.replicas(oid, 3)


# -- balance ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 7, 20])  # the full 3..20 sweep: see ring.py
def test_equal_nodes_share_within_15_percent(n):
    ring = Ring([node(i) for i in range(n)])
    primary, anyrep = shares(ring, OIDS, 3)
    mean_p = len(OIDS) / n
    mean_r = len(OIDS) * 3 / n
    assert len(primary) == n and len(anyrep) == n
    for m in ring.members:
        assert abs(primary[m.node_id] - mean_p) <= 0.15 * mean_p, (m.node_id, primary)
        assert abs(anyrep[m.node_id] - mean_r) <= 0.15 * mean_r, (m.node_id, anyrep)


def test_weight_two_gets_about_twice_the_share():
    members = [node(i) for i in range(5)] + [node(9, weight=2)]
    ring = Ring(members)
    primary, _ = shares(ring, SMALL_OIDS, 1)
    unit = len(SMALL_OIDS) / 7
    assert abs(primary[node(9).node_id] - 2 * unit) <= 0.15 * 2 * unit
    for i in range(5):
        assert abs(primary[node(i).node_id] - unit) <= 0.15 * unit


# -- movement --------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 6, 10])
def test_join_moves_little_and_only_onto_new_node(n):
    copies = 3
    before = Ring([node(i) for i in range(n)])
    new = node(100)
    after = Ring(list(before.members) + [new])
    moved_sets = moved_copies = 0
    for oid in SMALL_OIDS:
        old, cur = before.replicas(oid, copies), after.replicas(oid, copies)
        if old == cur:
            continue
        moved_sets += 1
        # the new node took exactly one slot; everybody else kept their order
        assert new in cur
        assert [m for m in cur if m != new] == [m for m in old if m in cur]
        assert len(set(old) - set(cur)) == 1
        moved_copies += 1
    nr_copies = len(SMALL_OIDS) * copies
    assert moved_copies / nr_copies <= 1.5 / (n + 1)
    assert moved_sets / len(SMALL_OIDS) <= 1.5 * copies / (n + 1)
    assert moved_copies > 0


def test_leave_moves_only_the_leavers_copies():
    members = [node(i) for i in range(6)]
    before, after = Ring(members), Ring(members[1:])
    gone = members[0]
    for oid in SMALL_OIDS[:5000]:
        old, cur = before.replicas(oid, 3), after.replicas(oid, 3)
        if gone not in old:
            assert old == cur
        else:
            assert [m for m in old if m != gone] == [m for m in cur if m in old]


# -- zones -----------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(zones=st.lists(st.sampled_from(["", "a", "b", "c"]), min_size=1, max_size=10),
       copies=st.integers(1, 6),
       oids=st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=30))
def test_no_two_replicas_share_a_zone(zones, copies, oids):
    ring = Ring([node(i, zone=z) for i, z in enumerate(zones)])
    nr_zones = len({z if z else f"own{i}" for i, z in enumerate(zones)})
    assert ring.zones() == nr_zones
    assert ring.copies_for(copies) == min(copies, nr_zones)
    for oid in oids:
        reps = ring.replicas(oid, copies)
        assert len(reps) == min(copies, nr_zones)
        assert len({m.zone_key for m in reps}) == len(reps)


def test_copies_capped_by_zones():
    ring = Ring([node(i, zone="rack1" if i < 3 else "rack2") for i in range(6)])
    assert ring.zones() == 2
    for oid in SMALL_OIDS[:1000]:
        reps = ring.replicas(oid, 3)
        assert len(reps) == 2
        assert {m.zone for m in reps} == {"rack1", "rack2"}
