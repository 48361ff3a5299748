"""Replica.handle: the peer op table's argument checks."""
from __future__ import annotations

import pytest

from common.errors import InvalidRequest
from sheep.replication.epoch import EpochState
from sheep.replication.replica import Replica
from sheep.store import objfile
from sheep.store.objects import ObjectStore


def test_a_write_whose_sums_do_not_cover_it_is_an_invalid_request(tmp_path):
    r = Replica(ObjectStore(tmp_path, 1 << 20), EpochState(), is_fenced=lambda: False)
    data = bytes(range(256)) * 32                     # two blocks
    header = {"op": "write", "epoch": 0, "oid": 1, "offset": 0, "create": True,
              "sums": objfile.sums_of(data[:4096]).tobytes()}
    with pytest.raises(InvalidRequest):
        r.handle(header, data)
    assert not r.store.exists(1)
    header["sums"] = objfile.sums_of(data).tobytes()
    r.handle(header, data)
    assert r.store.read(1, 0, len(data)) == data
