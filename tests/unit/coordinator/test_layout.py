"""The znode layout and its JSON codec (pure: no ZooKeeper)."""
import pytest

from common.errors import InvalidRequest
from coordinator.layout import (
    Layout,
    decode,
    encode,
    epoch_name,
    epoch_numbers,
    parse_epoch,
    parse_vid,
    vid_name,
)


def test_paths_live_under_the_cluster_root():
    lay = Layout("alpha")
    assert lay.root == "/sheepdog/alpha"
    assert lay.cluster_path == "/sheepdog/alpha/cluster"
    assert lay.members == "/sheepdog/alpha/members"
    assert lay.member("10.0.0.1:7000") == "/sheepdog/alpha/members/10.0.0.1:7000"
    assert lay.epochs == "/sheepdog/alpha/epochs"
    assert lay.epoch(1) == "/sheepdog/alpha/epochs/0000000001"
    assert lay.epoch(1234) == "/sheepdog/alpha/epochs/0000001234"
    assert lay.leader == "/sheepdog/alpha/leader"
    assert lay.vdis == "/sheepdog/alpha/vdis"
    assert lay.vdi(0x7C2B25) == "/sheepdog/alpha/vdis/7c2b25"
    assert lay.vdi(1) == "/sheepdog/alpha/vdis/000001"
    assert lay.locks == "/sheepdog/alpha/locks"
    assert lay.lock(0x7C2B25) == "/sheepdog/alpha/locks/7c2b25"
    assert lay.recovery == "/sheepdog/alpha/recovery"
    assert lay.recovery_epoch(7) == "/sheepdog/alpha/recovery/0000000007"
    assert lay.recovery_marker(7, "n1") == "/sheepdog/alpha/recovery/0000000007/n1"


def test_base_paths_are_the_persistent_directories():
    lay = Layout("c")
    assert lay.base_paths() == ("/sheepdog/c", "/sheepdog/c/members", "/sheepdog/c/epochs",
                                "/sheepdog/c/leader", "/sheepdog/c/vdis", "/sheepdog/c/locks",
                                "/sheepdog/c/generations", "/sheepdog/c/attachments",
                                "/sheepdog/c/handoffs", "/sheepdog/c/recovery")
    assert lay.attachments_of(0x7c2b26) == "/sheepdog/c/attachments/7c2b26"
    assert lay.handoffs_of(0x7c2b26) == "/sheepdog/c/handoffs/7c2b26"


@pytest.mark.parametrize("name", ["", "a/b", ".", "..", "x\ny", None])
def test_bad_cluster_names_are_refused(name):
    with pytest.raises(InvalidRequest):
        Layout(name)


@pytest.mark.parametrize("node_id", ["", "a/b", ".."])
def test_bad_node_ids_are_refused(node_id):
    with pytest.raises(InvalidRequest):
        Layout("c").member(node_id)


def test_layout_is_a_value():
    assert Layout("c") == Layout("c")
    assert hash(Layout("c")) == hash(Layout("c"))


@pytest.mark.parametrize("vid", [0, -1, 1 << 24, "7c2b25", True, 1.0])
def test_bad_vids_are_refused(vid):
    with pytest.raises(InvalidRequest):
        vid_name(vid)


def test_vid_names_round_trip():
    for vid in (1, 0xABC, 0x7C2B25, (1 << 24) - 1):
        assert parse_vid(vid_name(vid)) == vid
    assert vid_name(0xABC) == "000abc"


@pytest.mark.parametrize("name", ["", "abc", "0000001", "zzzzzz", "000000", "7C2B25x", "lock-0001"])
def test_foreign_vid_names_are_refused(name):
    with pytest.raises(InvalidRequest):
        parse_vid(name)


def test_epoch_names_round_trip_and_sort_like_numbers():
    names = [epoch_name(n) for n in (1, 2, 9, 10, 11, 100)]
    assert names == sorted(names)
    assert [parse_epoch(n) for n in names] == [1, 2, 9, 10, 11, 100]
    for bad in (0, -1, 10 ** 10, "1"):
        with pytest.raises(InvalidRequest):
            epoch_name(bad)
    for bad in ("1", "000000000a", "0000000000", "00000000001"):
        with pytest.raises(InvalidRequest):
            parse_epoch(bad)


def test_epoch_numbers_sorts_and_ignores_foreign_children():
    assert epoch_numbers(["0000000010", "0000000002", "junk", "0000000001"]) == [1, 2, 10]
    assert epoch_numbers([]) == []


def test_codec_is_sorted_compact_json():
    value = {"b": 1, "a": [1, 2], "name": "vm-ü"}
    data = encode(value)
    assert data == '{"a":[1,2],"b":1,"name":"vm-ü"}'.encode()
    assert decode(data) == value
    assert encode({"a": 1, "b": 2}) == encode({"b": 2, "a": 1})


def test_decode_empty_and_garbage():
    assert decode(b"") is None
    assert decode(None) is None
    with pytest.raises(InvalidRequest):
        decode(b"\xff\x00not json")
    with pytest.raises(InvalidRequest):
        decode(b"{oops")
