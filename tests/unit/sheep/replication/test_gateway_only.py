"""A gateway-only node (`sheep --gateway`): no replica of its own, every copy on the
storage nodes, and writes refused by its own guard exactly as a storage node's are."""
from __future__ import annotations

import pytest

from common.errors import Fenced
from tests.unit.sheep.inprocess import Cluster
from vdi.objects import data_oid

OID = data_oid(0x51, 0)


def test_writes_through_a_gateway_land_on_every_storage_node_and_nowhere_else(tmp_path):
    c = Cluster(tmp_path, 3)
    gw = c.gateway_only()
    gw.write(OID, 0, b"g" * 8192, 3, create=True)
    gw.write(OID, 4096, b"h" * 4096, 3)
    gw.flush()
    assert sorted(c.copies_of(OID)) == ["n0", "n1", "n2"]
    assert {v[:8192] for v in c.copies_of(OID).values()} == {b"g" * 4096 + b"h" * 4096}
    assert gw.read(OID, 4090, 12, 3) == b"g" * 6 + b"h" * 6


def test_a_gateway_follows_the_epochs_and_writes_to_the_new_placement(tmp_path):
    c = Cluster(tmp_path, 3)
    gw = c.gateway_only()
    c.set_epoch(2, c.nodes[:2])                 # n2 left
    gw.write(OID, 0, b"x" * 4096, 3, create=True)
    assert sorted(c.copies_of(OID)) == ["n0", "n1"]


def test_a_fenced_gateway_refuses_writes_but_still_reads(tmp_path):
    c = Cluster(tmp_path, 3)
    fenced = [False]
    gw = c.gateway_only(fenced=lambda: fenced[0])
    gw.write(OID, 0, b"a" * 4096, 3, create=True)
    fenced[0] = True
    with pytest.raises(Fenced):
        gw.write(OID, 0, b"b" * 4096, 3)
    assert gw.read(OID, 0, 4096, 3) == b"a" * 4096
    assert {v[:4096] for v in c.copies_of(OID).values()} == {b"a" * 4096}
