"""VDI ids from names and linear probing."""
import itertools

import pytest

from common.errors import NoSpace
from vdi import vid as vidmod
from vdi.vid import first_free, name_vid, probe


def test_test_is_sheepdogs_vid():
    assert name_vid("test") == 0x7C2B25


def test_name_vid_range_and_utf8():
    for name in ["a", "disk0", "été", "x" * 300]:
        assert 1 <= name_vid(name) < 1 << 24
    assert name_vid("été") != name_vid("ete")


def test_zero_becomes_one(monkeypatch):
    monkeypatch.setattr(vidmod, "fnv1a64", lambda data: 0xABC000000)
    assert name_vid("whatever") == 1


def test_probe_starts_at_home_and_counts_up():
    assert list(itertools.islice(probe("test"), 3)) == [0x7C2B25, 0x7C2B26, 0x7C2B27]


def test_probe_wraps_to_one_skipping_zero(monkeypatch):
    monkeypatch.setattr(vidmod, "name_vid", lambda name: 0xFFFFFE)
    assert list(itertools.islice(probe("n"), 4)) == [0xFFFFFE, 0xFFFFFF, 1, 2]


def test_probe_visits_every_vid_once(monkeypatch):
    monkeypatch.setattr(vidmod, "MAX_VID", 7)
    monkeypatch.setattr(vidmod, "name_vid", lambda name: 5)
    assert list(probe("n")) == [5, 6, 7, 1, 2, 3, 4]


def test_first_free():
    home = name_vid("test")
    assert first_free("test", set()) == home
    assert first_free("test", {home, home + 1}) == home + 2
    assert first_free("test", {home + 1}) == home


def test_first_free_no_space(monkeypatch):
    monkeypatch.setattr(vidmod, "MAX_VID", 3)
    monkeypatch.setattr(vidmod, "name_vid", lambda name: 2)
    assert first_free("n", {2, 3}) == 1
    with pytest.raises(NoSpace):
        first_free("n", {1, 2, 3})
