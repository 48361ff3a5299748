"""An in-memory gateway for unit tests of the volume model.

It keeps the contract of `sheep.replication.gateway.Gateway` as the volume sees it (the same
contract tests run against both: ``tests/integration/test_gateway_contract.py``):
``create=True`` makes a fresh object (zeros plus the data) whatever was there, a write
in place to a missing object raises ``NoObject``, removing a missing one is no error, reads
of a missing object raise ``NoObject`` and a read past the written end is short (as
from a sparse file); mutations return the epoch they completed at (``self.epoch``).
"""
from __future__ import annotations

from collections import Counter

from common.errors import NoObject


class FakeGateway:
    """oid -> bytearray; counts calls."""

    def __init__(self):
        self.objects: dict[int, bytearray] = {}
        self.calls = Counter()
        self.created: list[int] = []
        self.epoch = 1
        self.hook = None  # called as hook(op, oid, create) before each write

    def read(self, oid, offset, length, copies):
        self.calls["read"] += 1
        if oid not in self.objects:
            raise NoObject("no object", oid=oid)
        return bytes(self.objects[oid][offset:offset + length])

    def write(self, oid, offset, data, copies, create=False):
        self.calls["write"] += 1
        if self.hook:
            self.hook("write", oid, create)
        if create:
            obj = self.objects[oid] = bytearray()
            self.created.append(oid)
        else:
            obj = self.objects.get(oid)
            if obj is None:
                raise NoObject("no object", oid=oid)
        data = bytes(data)
        if len(obj) < offset + len(data):
            obj.extend(bytes(offset + len(data) - len(obj)))
        obj[offset:offset + len(data)] = data
        return self.epoch

    def remove(self, oid, copies):
        self.calls["remove"] += 1
        self.objects.pop(oid, None)         # idempotent, like the replicas' remove
        return self.epoch

    def flush(self):
        self.calls["flush"] += 1

    def data_objects(self):
        return {o for o in self.objects if not o >> 63}
