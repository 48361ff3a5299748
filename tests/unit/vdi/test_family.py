"""vdi.family: visibility of catalog entries, snapshot ids, usage and the reclaim plan."""
from hypothesis import given, settings, strategies as st

from vdi import family


def e(vid, name="a", **kw):
    return {"vid": vid, "name": name, **kw}


def test_hidden_entry_replaces_the_working_vdi_only_after_the_flip():
    old = e(1, snap_id=1)
    new = e(2, hidden=True, replaces=1)
    assert [x["vid"] for x in family.visible([old, new])] == [1]
    assert family.working_of([old, new], "a")["vid"] == 1
    frozen = {**old, "snapshot": True, "tag": "t"}
    assert family.working_of([frozen, new], "a")["vid"] == 2
    deleted = {**old, "deleted": True}
    assert [x["vid"] for x in family.visible([deleted, new])] == [2]


def test_hidden_entry_without_replaces_stays_invisible_and_deleted_ones_too():
    assert family.visible([e(1, hidden=True), e(2, deleted=True)]) == []
    assert family.working_of([e(1, hidden=True)], "a") is None


def test_find_snapshot_prefers_the_tag_then_the_id():
    snaps = [e(1, snapshot=True, snap_id=1, tag="2"), e(2, snapshot=True, snap_id=2, tag="x"),
             e(3, snapshot=True, snap_id=3, tag="gone", deleted=True)]
    assert family.find_snapshot(snaps, "a", "2")["vid"] == 1
    assert family.find_snapshot(snaps, "a", "x")["vid"] == 2
    assert family.find_snapshot(snaps, "a", "1")["vid"] == 1
    assert family.find_snapshot(snaps, "a", "gone") is None
    assert family.find_snapshot(snaps, "b", "x") is None


def test_next_snap_id_counts_deleted_but_kept_snapshots():
    entries = [e(1, snapshot=True, snap_id=4, deleted=True), e(2, snap_id=5), e(3, "b", snapshot=True,
                                                                                snap_id=9)]
    assert family.next_snap_id(entries, "a") == 5
    assert family.next_snap_id(entries, "c") == 1
    assert family.used_vids(entries) == {1, 2, 3}


def test_usage_counts_owned_and_shared_objects():
    assert family.usage(7, [7, 7, 3, 0, 3], 4) == (8, 8)


def test_reclaim_keeps_what_live_maps_reference():
    # snapshot 1 owns 0..3; working 2 rewrote index 1; clone 3 rewrote index 2
    entries = [e(1, snapshot=True, deleted=True), e(2), e(3, "c")]
    maps = {1: [1, 1, 1, 1], 2: [1, 2, 1, 1], 3: [1, 1, 3, 1]}
    plan = family.plan_reclaim(entries, maps)
    assert plan.free == {} and plan.drop == []
    # delete the clone: its own object goes, and the snapshot's index 1 (only the clone
    # pointed at it) goes with it
    entries[2]["deleted"] = True
    plan = family.plan_reclaim(entries, maps)
    assert plan.free == {1: [1], 3: [2]} and plan.drop == [3]
    # then the working VDI: everything goes, both entries are forgotten
    entries[1]["deleted"] = True
    plan = family.plan_reclaim(entries, {1: [1, 0, 1, 1], 2: [1, 2, 1, 1], 3: [1, 1, 0, 1]})
    assert plan.free == {1: [0, 2, 3], 2: [1]} and sorted(plan.drop) == [1, 2, 3]


def test_hidden_entries_hold_references():
    entries = [e(1, snapshot=True, deleted=True), e(2, hidden=True)]
    assert not family.plan_reclaim(entries, {1: [1, 1], 2: [1, 0]}).drop


def test_runs():
    assert family.runs([5, 1, 2, 3, 7, 8]) == [(1, 3), (5, 1), (7, 2)]
    assert family.runs([]) == []


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_reclaim_model(data):
    """Random histories of writes, snapshots, clones and deletes: after reclaim, the
    objects left are exactly those some live map points at."""
    maps: dict[int, list[int]] = {1: [0] * 4}
    entries = {1: {"vid": 1, "name": "v"}}
    store: set[tuple[int, int]] = set()
    next_vid = 2
    for _ in range(data.draw(st.integers(1, 25))):
        live = [v for v, x in entries.items() if not x.get("deleted")]
        writable = [v for v in live if not entries[v].get("snapshot")]
        op = data.draw(st.sampled_from(["write", "snap", "clone", "delete"]))
        if op == "write" and writable:
            v, i = data.draw(st.sampled_from(writable)), data.draw(st.integers(0, 3))
            store.add((v, i))
            maps[v][i] = v
        elif op == "snap" and writable:
            v = data.draw(st.sampled_from(writable))
            entries[v]["snapshot"] = True
            entries[next_vid] = {"vid": next_vid, "name": "v"}
            maps[next_vid] = list(maps[v])
            next_vid += 1
        elif op == "clone":
            snaps = [v for v in live if entries[v].get("snapshot")]
            if snaps:
                v = data.draw(st.sampled_from(snaps))
                entries[next_vid] = {"vid": next_vid, "name": "c"}
                maps[next_vid] = list(maps[v])
                next_vid += 1
        elif op == "delete" and live:
            entries[data.draw(st.sampled_from(live))]["deleted"] = True
        plan = family.plan_reclaim(list(entries.values()), maps)
        for vid, idxs in plan.free.items():
            for i in idxs:
                store.discard((vid, i))
                maps[vid][i] = 0
        for vid in plan.drop:
            del entries[vid]
        referenced = {(o, i) for v, x in entries.items() if not x.get("deleted")
                      for i, o in enumerate(maps[v]) if o}
        assert store == referenced
