"""sheep.store.storedir.StoreDir: identity, cluster binding, small state, bad directories."""
from __future__ import annotations

import json
import os

import pytest

from common.errors import StoreMismatch
from sheep.store.storedir import FILENAME, StoreDir

CREATED = 1795000000.0  # 2026-11-18T11:06:40+00:00


def test_first_open_creates_dir_and_file(tmp_path):
    path = tmp_path / "a" / "b"
    sd = StoreDir.open(path, "10.0.0.5:7000")
    assert (path / FILENAME).is_file()
    assert sd.node_id == "10.0.0.5:7000"
    assert sd.cluster_name is None and sd.cluster_created is None
    assert [p.name for p in path.iterdir()] == [FILENAME]  # no tmp file left


def test_node_id_stable_across_restarts(tmp_path):
    StoreDir.open(tmp_path, "host-a:7000")
    again = StoreDir.open(tmp_path, "host-b:7001")  # new address, same node
    assert again.node_id == "host-a:7000"
    assert StoreDir(tmp_path).node_id == "host-a:7000"


def test_open_existing_empty_dir(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    assert sd.node_id == "n1"


def test_bind_records_and_persists(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    sd.bind("prod", CREATED)
    assert (sd.cluster_name, sd.cluster_created) == ("prod", CREATED)
    again = StoreDir.open(tmp_path, "other")
    assert (again.cluster_name, again.cluster_created) == ("prod", CREATED)
    again.bind("prod", CREATED)  # same cluster: fine, idempotent


def test_bind_to_another_cluster_is_refused(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    sd.bind("a", CREATED)
    with pytest.raises(StoreMismatch) as err:
        StoreDir.open(tmp_path, "n1").bind("b", CREATED)
    assert err.value.message == (
        f"store {tmp_path} belongs to cluster 'a' (formatted 2026-11-18T11:06:40+00:00), not 'b'")
    assert err.value.data["cluster"] == "a"
    assert StoreDir(tmp_path).cluster_name == "a"  # unchanged


def test_bind_to_a_reformatted_cluster_of_the_same_name_is_refused(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    sd.bind("a", CREATED)
    with pytest.raises(StoreMismatch, match=r"belongs to cluster 'a' \(formatted 2026-11-18T11:06:40"
                                            r"\+00:00\), not 'a' formatted 2026-11-18T11:06:41"):
        sd.bind("a", CREATED + 1)


def test_bind_with_string_created(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    sd.bind("a", "2026-11-25T10:00:00Z")
    with pytest.raises(StoreMismatch, match=r"\(formatted 2026-11-25T10:00:00Z\), not 'b'"):
        sd.bind("b", "2026-11-25T10:00:00Z")


def test_small_state(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    assert sd.get("last_epoch") is None
    assert sd.get("last_epoch", 0) == 0
    sd.set("last_epoch", 12)
    sd.set("recovery", {"epoch": 12, "done": [1, 2]})
    sd.set("pair", (1, 2))  # stored as JSON would read it back
    assert sd.get("pair") == [1, 2]
    again = StoreDir(tmp_path)
    assert again.get("last_epoch") == 12
    assert again.get("recovery") == {"epoch": 12, "done": [1, 2]}
    assert again.node_id == "n1"


def test_set_unchanged_does_not_rewrite(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    sd.set("k", 1)
    before = os.stat(tmp_path / FILENAME).st_ino
    sd.set("k", 1)
    assert os.stat(tmp_path / FILENAME).st_ino == before
    sd.set("k", 2)
    assert os.stat(tmp_path / FILENAME).st_ino != before  # replaced by rename


def test_set_unserialisable_changes_nothing(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    with pytest.raises(TypeError):
        sd.set("k", object())
    assert sd.get("k") is None
    assert StoreDir(tmp_path).get("k") is None


def test_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreMismatch, match="not a directory"):
        StoreDir.open(f, "n1")
    with pytest.raises(StoreMismatch, match="not a directory"):
        StoreDir(f)


def test_uninitialised_dir(tmp_path):
    with pytest.raises(StoreMismatch, match="not initialised"):
        StoreDir(tmp_path)


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2]",
    json.dumps({"version": 1}),
    json.dumps({"version": 1, "node_id": ""}),
    json.dumps({"version": 99, "node_id": "n1"}),
    json.dumps({"version": 1, "node_id": "n1", "cluster": "prod"}),
    json.dumps({"version": 1, "node_id": "n1", "cluster": None, "state": []}),
])
def test_corrupt_file(tmp_path, content):
    (tmp_path / FILENAME).write_text(content)
    with pytest.raises(StoreMismatch, match=f"store {tmp_path}: {FILENAME} is corrupt"):
        StoreDir.open(tmp_path, "n1")


def test_undecodable_file(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StoreMismatch, match=f"cannot read {FILENAME}"):
        StoreDir(tmp_path)


def test_unreadable_file(tmp_path):
    # (a directory in its place: unreadable even for root, who ignores permissions)
    (tmp_path / FILENAME).mkdir()
    with pytest.raises(StoreMismatch, match="cannot read"):
        StoreDir(tmp_path)


def test_sheep_json_is_readable_json(tmp_path):
    sd = StoreDir.open(tmp_path, "n1")
    sd.bind("a", CREATED)
    sd.set("last_epoch", 3)
    doc = json.loads((tmp_path / FILENAME).read_text())
    assert doc == {"version": 1, "node_id": "n1", "cluster": {"name": "a", "created": CREATED},
                   "state": {"last_epoch": 3}}
