"""An in-memory ExportProvider for NBD tests: a bytearray per export plus a hole map.

Holes are tracked per ``BLOCK`` bytes: a block never written (or trimmed /
zeroed with ``may_trim``) is a hole and reads as zeros.  Read-write exports take
a single-attacher lock like a VDI; a second ``open_export`` raises ``Locked``
naming the holder.  ``fail_next`` injects one error into the next call.
"""
from __future__ import annotations

import gevent

from common import errors

BLOCK = 64 * 1024
HOLE, ZERO = 1, 2


class MemoryVolume:
    def __init__(self, name: str, size: int, readonly: bool = False):
        self.name, self.size, self.readonly = name, size, readonly
        self.data = bytearray(size)
        self.allocated: set[int] = set()
        self.holder: str | None = None
        self.flushes = 0
        self.calls: list[tuple] = []
        self.delay_s = 0.0                  # per-request sleep, to keep requests in flight
        self.max_in_flight = 0
        self._in_flight = 0

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        pos, end = offset, offset + length
        while pos < end:
            blk = pos // BLOCK
            nxt = min(end, (blk + 1) * BLOCK)
            flags = 0 if blk in self.allocated else HOLE | ZERO
            if out and out[-1][1] == flags:
                out[-1] = (out[-1][0] + nxt - pos, flags)
            else:
                out.append((nxt - pos, flags))
            pos = nxt
        return out

    def punch(self, offset: int, length: int) -> None:
        self.data[offset:offset + length] = bytes(length)
        first = -(-offset // BLOCK)
        last = (offset + length) // BLOCK
        for blk in range(first, last):
            self.allocated.discard(blk)


class MemoryExport:
    """Export over a MemoryVolume (checks ranges itself too, like a VDI would)."""

    def __init__(self, provider: "MemoryProvider", vol: MemoryVolume, client_addr: str):
        self.provider, self.vol, self.client_addr = provider, vol, client_addr
        self.name, self.size, self.readonly = vol.name, vol.size, vol.readonly
        self.closed = False

    def _enter(self, call: tuple, offset: int = 0, length: int = 0, writing: bool = False):
        vol = self.vol
        vol.calls.append(call)
        err = self.provider.fail_next.pop(vol.name, None)
        if err is not None:
            raise err
        if self.closed:
            raise errors.Shutdown("export closed")
        if writing and vol.readonly:
            raise errors.ReadOnly(f"{vol.name} is read-only")
        if offset + length > vol.size:
            raise errors.OutOfRange(f"{offset}+{length} beyond {vol.size}")
        if vol.delay_s:
            vol._in_flight += 1
            vol.max_in_flight = max(vol.max_in_flight, vol._in_flight)
            try:
                gevent.sleep(vol.delay_s)
            finally:
                vol._in_flight -= 1

    def read(self, offset: int, length: int) -> bytes:
        self._enter(("read", offset, length), offset, length)
        return bytes(self.vol.data[offset:offset + length])

    def write(self, offset: int, data, fua: bool = False) -> None:
        self._enter(("write", offset, len(data), fua), offset, len(data), writing=True)
        self.vol.data[offset:offset + len(data)] = data
        for blk in range(offset // BLOCK, (offset + len(data) - 1) // BLOCK + 1):
            self.vol.allocated.add(blk)

    def flush(self) -> None:
        self._enter(("flush",))
        self.vol.flushes += 1

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self._enter(("trim", offset, length, fua), offset, length, writing=True)
        self.vol.punch(offset, length)

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool = False) -> None:
        self._enter(("write_zeroes", offset, length, may_trim, fua), offset, length, writing=True)
        if may_trim:
            self.vol.punch(offset, length)
        else:
            self.write(offset, bytes(length))

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._enter(("block_status", offset, length), offset, length)
        return self.vol.block_status(offset, length)

    def close(self) -> None:
        assert not self.closed, "close() called twice"
        self.closed = True
        self.provider.closed.append((self.name, self.client_addr))
        if self.vol.holder == self.client_addr:
            self.vol.holder = None


class MemoryProvider:
    def __init__(self):
        self.volumes: dict[str, MemoryVolume] = {}
        self.fail_next: dict[str, Exception] = {}
        self.closed: list[tuple[str, str]] = []
        self.open_errors: dict[str, Exception] = {}

    def add(self, name: str, size: int, readonly: bool = False) -> MemoryVolume:
        vol = self.volumes[name] = MemoryVolume(name, size, readonly)
        return vol

    def list_exports(self) -> list[str]:
        return sorted(self.volumes)

    def describe(self, name: str) -> tuple[int, bool]:
        vol = self._get(name)
        return vol.size, vol.readonly

    def open_export(self, name: str, client_addr: str) -> MemoryExport:
        if name in self.open_errors:
            raise self.open_errors[name]
        vol = self._get(name)
        if not vol.readonly:
            if vol.holder is not None:
                raise errors.Locked(f"VDI {name} is locked by {vol.holder}", holder=vol.holder)
            vol.holder = client_addr
        return MemoryExport(self, vol, client_addr)

    def _get(self, name: str) -> MemoryVolume:
        try:
            return self.volumes[name]
        except KeyError:
            raise errors.NotFound(f"no export named {name!r}") from None
