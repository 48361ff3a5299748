"""What check, scrub and repair ask of a copy: a full verification, donor blocks, block repairs.

A mixin of `sheep.store.objects.ObjectStore` (it uses the store's stripe locks, descriptor
cache and bookkeeping, under the same rules: see that module's theory of operation).
"""
from __future__ import annotations

import logging
import os

from sheep.store import objfile
from common.errors import Corrupt, InvalidRequest, NoObject
from sheep.store.objfile import BLOCK, DATA_OFFSET
from sheep.store.objio import oid_name, pread_full, pwrite_all, read_sums, read_verified

log = logging.getLogger(__name__)


class VerifyMixin:
    def info(self, oid: int, verify: bool = True) -> dict:
        """What check and repair compare: version, tick, length, the sums digest and, when
        ``verify``, the blocks whose data fails its sum (reads the whole copy)."""
        self._check_usable()
        tick = self.tick_of(oid)
        version = self.version_of(oid)
        if not os.path.exists(self.path_of(oid)):     # gone behind our back (a lost file)
            with self._stripe(oid):
                if not os.path.exists(self.path_of(oid)):
                    self._forget(oid)
            raise NoObject(f"no object {oid_name(oid)}", oid=oid)
        fd, leased = self._open_for_read(oid)
        try:
            size = max(0, os.fstat(fd).st_size - DATA_OFFSET)
            nblocks = -(-size // BLOCK)
            sums = read_sums(fd, 0, nblocks)
            bad = []
            if verify and size:
                bad = objfile.bad_blocks(pread_full(fd, size, DATA_OFFSET), sums)
        finally:
            self._done_reading(fd, leased)
        return {"version": version, "tick": tick, "length": size,
                "digest": objfile.sums_digest(sums), "bad_blocks": bad, "sums": sums.tobytes()}

    def read_blocks(self, oid: int, blocks: list[int]) -> dict[int, bytes]:
        """The verified bytes of whole 4 KiB data blocks (repair donors); Corrupt when one of
        them fails its sum here too."""
        self._check_usable()
        fd, leased = self._open_for_read(oid)
        try:
            out = {}
            for k in blocks:
                data, bad = read_verified(fd, k * BLOCK, BLOCK)
                if bad:
                    raise Corrupt(f"object {oid_name(oid)}: block {k} fails its checksum here "
                                  "too", oid=oid, blocks=bad)
                out[k] = data
            return out
        finally:
            self._done_reading(fd, leased)

    def repair_blocks(self, oid: int, blocks: dict[int, tuple[int, bytes]]) -> int:
        """Rewrite corrupt blocks with donor bytes: ``blocks[k] = (expected sum, data)``.
        Under the stripe lock, a block is rewritten only while it still fails its sum and
        its stored sum is still ``expected`` (a write since then wins); the data must
        match the sum.  Returns how many blocks were rewritten."""
        self._check_usable()
        done = 0
        with self._stripe(oid):
            fd = self._fd_locked(oid)
            try:
                for k, (expected, data) in sorted(blocks.items()):
                    if objfile.block_sum(data) != expected:
                        raise InvalidRequest(f"donor block {k} of {oid_name(oid)} does not "
                                             "match the expected sum", oid=oid)
                    (stored,) = read_sums(fd, k, 1)
                    current = pread_full(fd, BLOCK, DATA_OFFSET + k * BLOCK)
                    if stored != expected or objfile.block_sum(current) == stored:
                        continue
                    pwrite_all(fd, memoryview(data)[:BLOCK], DATA_OFFSET + k * BLOCK)
                    done += 1
            finally:
                self._fds.release(fd)
            if done:
                self._ticks[oid] = next(self._ticks_source)
                self._dirty.add(oid)
        if done:
            log.warning("oid=%016x %d corrupt block(s) rewritten from a replica", oid, done)
        return done

