"""sheep.volumes.redundancy: which entries change, what refuses, and the order of the steps."""
import contextlib

import pytest

from common.errors import InvalidRequest, Locked, NotReady
from sheep.volumes import redundancy


class Catalog:
    def __init__(self, entries):
        self.entries = {e["vid"]: dict(e) for e in entries}
        self.log = []

    def get_with_version(self, vid):
        return dict(self.entries[vid]), 7

    def update(self, vid, entry, expected_version=None):
        assert expected_version == 7
        self.entries[vid] = entry
        self.log.append(("update", vid))


class Vdis:
    def __init__(self, entries, locked=False):
        self.catalog = Catalog(entries)
        self.locked = locked

    def all_entries(self):
        return list(self.catalog.entries.values())

    def working(self, name):
        return next(e for e in self.all_entries() if e["name"] == name and not e.get("snapshot"))

    @contextlib.contextmanager
    def exclusive(self, entry, what, client):
        if self.locked:
            raise Locked(f"cannot {what} VDI '{entry['name']}'")
        self.catalog.log.append(("take", entry["vid"]))
        try:
            yield
        finally:
            self.catalog.log.append(("give back", entry["vid"]))


class Coordinator:
    def __init__(self, log, complete=3):
        self.log, self.complete = log, complete

    def latest_epoch(self):
        return {"epoch": 3}

    def complete_epoch(self, before):
        return self.complete

    def bump_placement(self, timeout_s):
        self.log.append(("bump",))
        return {"epoch": 4}


class Epochs:
    epoch = 3

    def wait_for(self, epoch, timeout_s):
        return True


ENTRIES = [{"vid": 1, "name": "vol", "copies": 2, "snapshot": True, "snap_id": 1},
           {"vid": 2, "name": "vol", "copies": 2, "snap_id": 2},
           {"vid": 3, "name": "clone", "copies": 2, "snap_id": 1}]


def test_the_vdi_and_its_snapshots_change_under_the_lock_then_a_new_epoch():
    vdis = Vdis(ENTRIES)
    coord = Coordinator(vdis.catalog.log)
    answer = redundancy.alter_copies(vdis, coord, Epochs(), "vol", 3, "t")
    assert answer == {"name": "vol", "copies": 3, "old_copies": 2, "changed": 2, "epoch": 4}
    assert {v: e["copies"] for v, e in vdis.catalog.entries.items()} == {1: 3, 2: 3, 3: 2}
    log = vdis.catalog.log
    assert log[0] == ("take", 2) and log[-2:] == [("bump",), ("give back", 2)]


def test_no_change_makes_no_epoch():
    vdis = Vdis(ENTRIES)
    coord = Coordinator(vdis.catalog.log)
    assert redundancy.alter_copies(vdis, coord, Epochs(), "vol", 2, "t")["changed"] == 0
    assert vdis.catalog.log == []


@pytest.mark.parametrize("copies", [0, 32, "3", True, None])
def test_bad_copies_are_refused(copies):
    with pytest.raises(InvalidRequest):
        redundancy.alter_copies(Vdis(ENTRIES), Coordinator([]), Epochs(), "vol", copies, "t")


def test_refused_while_recovery_runs_or_the_vdi_is_attached():
    vdis = Vdis(ENTRIES)
    with pytest.raises(NotReady, match="recovery of epoch 3"):
        redundancy.alter_copies(vdis, Coordinator([], complete=2), Epochs(), "vol", 3, "t")
    locked = Vdis(ENTRIES, locked=True)
    with pytest.raises(Locked):
        redundancy.alter_copies(locked, Coordinator([]), Epochs(), "vol", 3, "t")
    assert vdis.catalog.log == [] and locked.catalog.log == []


def test_changed_entries_record_the_old_copies_and_the_epoch_that_makes_the_new_ones():
    vdis = Vdis(ENTRIES)
    coord = Coordinator(vdis.catalog.log)
    coord.bump_placement = lambda timeout_s: {"epoch": 6}     # another epoch came first
    redundancy.alter_copies(vdis, coord, Epochs(), "vol", 3, "t")
    for vid in (1, 2):
        e = vdis.catalog.entries[vid]
        assert (e["copies"], e["copies_from"], e["copies_epoch"]) == (3, 2, 6)
    assert "copies_epoch" not in vdis.catalog.entries[3]


def test_an_entry_is_reported_recovering_until_its_copies_epoch_is_complete_everywhere():
    complete = {"n": 4}
    asked = []
    report = redundancy.CopiesReport(lambda: asked.append(1) or complete["n"])
    entries = [{"vid": 1, "copies": 3, "copies_from": 2, "copies_epoch": 5},
               {"vid": 2, "copies": 2}]
    assert [e["copies_recovering"] for e in report.annotate(entries)] == [True, False]
    complete["n"] = 5
    assert [e["copies_recovering"] for e in report.annotate(entries)] == [False, False]
    calls = len(asked)
    report.annotate(entries)              # complete already seen: ZooKeeper is not asked again
    assert len(asked) == calls


def test_vdi_list_shows_old_to_new_copies_while_recovering():
    from collie import render
    rows = render.render_vdi_list([
        {"name": "a", "vid": 1, "size": 1, "copies": 3, "copies_from": 2, "copies_recovering": True},
        {"name": "b", "vid": 2, "size": 1, "copies": 3, "copies_from": 2, "copies_recovering": False}])
    line_a = next(line for line in rows.splitlines() if " a " in line)
    line_b = next(line for line in rows.splitlines() if " b " in line)
    assert line_a.split()[-1] == "2->3" and line_b.split()[-1] == "3"
