"""Changed ranges between two snapshots' maps, their NBD status, states and the base check."""
from hypothesis import given, settings
from hypothesis import strategies as st

from vdi import diff
from vdi.diff import CHANGED, ZERO, Extent
from vdi.inode import ObjectMap

OBJ = 4 << 20


def omap(*owners) -> ObjectMap:
    return ObjectMap(len(owners), owners)


def test_changed_objects_are_data_holes_are_zero_and_equal_owners_are_skipped():
    # object 0 same; 1 copied on write (data); 2 trimmed (zero); 3 new (data); 4 same hole
    frm = omap(1, 1, 1, 0, 0)
    to = omap(1, 2, 0, 2, 0)
    assert diff.changed_extents(frm, to, 5 * OBJ, OBJ) == [
        Extent(OBJ, OBJ, False), Extent(2 * OBJ, OBJ, True), Extent(3 * OBJ, OBJ, False)]


def test_adjacent_objects_of_one_kind_merge_and_the_last_is_clipped_to_the_size():
    to = omap(2, 2, 0, 0, 2)
    size = 4 * OBJ + 100
    assert diff.changed_extents(omap(1, 1, 1, 1, 1), to, size, OBJ) == [
        Extent(0, 2 * OBJ, False), Extent(2 * OBJ, 2 * OBJ, True), Extent(4 * OBJ, 100, False)]


def test_a_full_backup_covers_everything_and_a_grown_volume_compares_as_holes():
    to = omap(1, 0, 1)
    assert diff.changed_extents(None, to, 3 * OBJ, OBJ) == [
        Extent(0, OBJ, False), Extent(OBJ, OBJ, True), Extent(2 * OBJ, OBJ, False)]
    # from had 1 object; to grew to 3: the new hole is unchanged, the new object is data
    assert diff.changed_extents(omap(1), omap(1, 0, 2), 3 * OBJ, OBJ) == [
        Extent(2 * OBJ, OBJ, False)]


def test_nbd_status_runs_cover_the_request_with_flags():
    frm, to = omap(1, 1, 1, 0), omap(1, 2, 0, 0)
    assert diff.diff_status(frm, to, 4 * OBJ, OBJ, 0, 4 * OBJ) == [
        (OBJ, 0), (OBJ, CHANGED), (OBJ, CHANGED | ZERO), (OBJ, 0)]
    # unaligned start, clipped at the size
    assert diff.diff_status(frm, to, 4 * OBJ, OBJ, OBJ + 5, 10 * OBJ) == [
        (OBJ - 5, CHANGED), (OBJ, CHANGED | ZERO), (OBJ, 0)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30))
def test_status_and_extents_agree(pairs):
    frm = omap(*(a for a, _ in pairs))
    to = omap(*(b for _, b in pairs))
    size = len(pairs) * OBJ
    changed = diff.changed_extents(frm, to, size, OBJ)
    status = diff.diff_status(frm, to, size, OBJ, 0, size)
    assert sum(n for n, _ in status) == size
    pos, from_status = 0, []
    for n, flags in status:
        if flags:
            from_status.append(Extent(pos, n, bool(flags & ZERO)))
        pos += n
    assert from_status == changed


def snap(vid=5, **extra):
    return {"name": "vm", "vid": vid, "size": 2 * OBJ, "snapshot": True, "tag": "s1",
            "snap_id": 1, "created": 10.0, "snap_created": 20.0, **extra}


def test_states_name_a_snapshot_in_its_cluster_and_restored_ones_keep_their_source():
    a = diff.snapshot_state(snap(), cluster_created=1.0)
    assert a == diff.snapshot_state(snap(tag="renamed"), 1.0)        # the tag is not content
    assert a != diff.snapshot_state(snap(), 2.0)                      # another cluster
    assert a != diff.snapshot_state(snap(vid=6), 1.0)
    assert a != diff.snapshot_state(snap(snap_created=21.0), 1.0)
    assert diff.snapshot_state(snap(backup_state="abc"), 1.0) == "abc"


def base_of(entry, cluster=1.0):
    return {"state": diff.snapshot_state(entry, cluster), "tag": "s1", "size": entry["size"]}


def test_base_problem_accepts_an_unchanged_copy_of_the_base():
    parent = snap()
    target = {"name": "r", "vid": 9, "size": 2 * OBJ, "parent": 5}
    assert diff.base_problem(target, omap(5, 0), parent, omap(5, 0), base_of(parent),
                             1.0) is None


def test_base_problem_names_what_is_wrong():
    parent = snap()
    target = {"name": "r", "vid": 9, "size": 2 * OBJ, "parent": 5}
    base = base_of(parent)
    assert "not cloned from" in diff.base_problem(target, omap(0, 0), None, None, base, 1.0)
    other = snap(vid=7, tag="s0")
    problem = diff.base_problem(target, omap(7, 0), other, omap(7, 0), base, 1.0)
    assert "descends from 'vm' snapshot 's0'" in problem
    problem = diff.base_problem(target, omap(9, 0), parent, omap(5, 0), base, 1.0)
    assert "written since 'vm' snapshot 's1' (1 objects differ)" in problem
    assert "rollback -s s1 r" in problem
    bigger = {**target, "size": 3 * OBJ}
    assert "bytes, the stream's base is" in diff.base_problem(
        bigger, omap(5, 0, 0), parent, omap(5, 0), base, 1.0)
