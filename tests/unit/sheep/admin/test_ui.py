"""The status page's pure parts: the ring balance, the shell's assets and its open routes."""
from __future__ import annotations

import re

import pytest

from coordinator.ring import Member, Ring
from sheep.admin.auth import AdminPolicy
from sheep.admin.ui import ASSETS, load_assets, ring_balance, sample_oids

TOKEN = "s3cret-token-0123456789"


def member(i: int, weight: int = 1, zone: str = "") -> Member:
    return Member(f"10.0.0.{i}:7000", f"10.0.0.{i}", 7000, 7001, 7002, zone=zone, weight=weight)


def test_sample_oids_are_distinct_data_object_ids():
    oids = sample_oids(1000)
    assert len(set(oids)) == 1000
    assert all(oid >> 32 and oid < 1 << 64 for oid in oids)


def test_equal_members_share_the_ring_evenly():
    ring = Ring([member(i) for i in range(1, 5)])
    rows = ring_balance(ring, copies=2)
    assert [r["node_id"] for r in rows] == sorted(m.node_id for m in ring.members)
    assert sum(r["primary_share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["holds_share"] for r in rows) == pytest.approx(2.0)
    for r in rows:
        assert r["weight_share"] == 0.25 and r["vnodes"] == 128
        assert abs(r["primary_share"] - 0.25) < 0.05, r


def test_a_heavier_member_gets_its_weight_and_gateways_are_left_out():
    ring = Ring([member(1, weight=2), member(2), member(3), member(9, weight=0)])
    rows = {r["node_id"]: r for r in ring_balance(ring, copies=1)}
    assert set(rows) == {member(i).node_id for i in (1, 2, 3)}
    heavy = rows[member(1).node_id]
    assert heavy["weight_share"] == 0.5 and heavy["vnodes"] == 256
    assert abs(heavy["primary_share"] - 0.5) < 0.06, heavy


def test_with_copies_at_least_the_zones_everyone_holds_everything():
    ring = Ring([member(1, zone="a"), member(2, zone="b"), member(3, zone="b")])
    rows = {r["node_id"]: r for r in ring_balance(ring, copies=3)}
    assert rows[member(1).node_id]["holds_share"] == 1.0     # the only member of zone a
    b = rows[member(2).node_id]["holds_share"] + rows[member(3).node_id]["holds_share"]
    assert b == pytest.approx(1.0)                        # zone b holds one copy


def test_an_empty_ring_has_no_rows():
    assert ring_balance(Ring([]), copies=2) == []


def test_the_shell_loads_only_local_assets_and_has_no_inline_script():
    assets = load_assets()
    assert set(assets) == set(ASSETS)
    html = assets["/ui"][0].decode()
    assert "Content-Security-Policy" in html and "script-src 'self'" in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)      # every script is a file
    assert not re.search(r"https?://", html + assets["/ui/ui.css"][0].decode())
    js = assets["/ui/ui.js"][0].decode()
    assert "innerHTML" not in js and "fetch(" in js
    assert 'name="token"' not in html          # an unnamed field never goes into a URL


@pytest.mark.parametrize("path", list(ASSETS))
def test_the_shell_is_open_but_its_data_is_not(path):
    policy = AdminPolicy(lambda: TOKEN)
    assert policy.check("GET", path, {"HTTP_HOST": "127.0.0.1:7000"}) is None
    refusal = policy.check("GET", "/ui/ring", {"HTTP_HOST": "127.0.0.1:7000"})
    assert refusal is not None and refusal.status == 401
    assert policy.check("GET", path, {"HTTP_HOST": "evil.example"}).status == 421
