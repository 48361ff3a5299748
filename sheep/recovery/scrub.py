"""The background scrub: every local copy verified against its block checksums, slowly.

Bit rot and torn writes show up on read, but data nobody reads could rot on every
replica before anyone notices.  The scrubber walks this node's copies one at a time,
reads each whole (in the thread pool) and checks every block against its sum, at
most ``bytes_per_s`` (0 turns it off); a copy with corrupt blocks is repaired from
the replicas that hold the right bytes (`sheep.replication.convergence`, block repairs: safe
while the VDI is written).  One pass over every copy, then ``interval_s`` of rest,
then again.
``run_once()`` is one pass, for tests.  Progress and counts are in `stats`
(``collie node info``, ``/metrics``).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import gevent

from common.errors import NoObject, SheepError

log = logging.getLogger(__name__)



class Scrubber:
    def __init__(self, store, io: Callable, gateway, epochs, vdis, bytes_per_s: int,
                 interval_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._io = io
        self.gateway = gateway
        self.epochs = epochs
        self.vdis = vdis
        self.bytes_per_s = bytes_per_s
        self.interval_s = interval_s
        self._clock = clock
        self._worker: gevent.Greenlet | None = None
        self.stats = {"passes": 0, "objects": 0, "bytes": 0, "corrupt_objects": 0,
                      "repaired_blocks": 0, "unrepaired": 0, "position": 0, "of": 0}

    def start(self) -> None:
        if self.bytes_per_s > 0:
            self._worker = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.kill(block=True, timeout=2)

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:
                log.exception("scrub pass failed")
            gevent.sleep(self.interval_s)

    def run_once(self) -> dict:
        """Verify every local copy once (paced); returns the stats."""
        oids = sorted(self.store.list_objects())
        self.stats.update(position=0, of=len(oids))
        started, done_bytes = self._clock(), 0
        copies_of = None
        for i, oid in enumerate(oids):
            self.stats["position"] = i + 1
            try:
                info = self._io(self.store.info, oid, True)
            except NoObject:
                continue            # removed or moved since the listing
            except SheepError as exc:
                log.warning("scrub oid=%016x: %s", oid, exc)
                continue
            self.stats["objects"] += 1
            self.stats["bytes"] += info["length"]
            done_bytes += info["length"]
            if info["bad_blocks"]:
                if copies_of is None:
                    copies_of = self.vdis.liveness(with_maps=False).copies_of
                self._repair(oid, copies_of(oid), info["bad_blocks"])
            if self.bytes_per_s > 0:
                ahead = started + done_bytes / self.bytes_per_s - self._clock()
                if ahead > 0:
                    gevent.sleep(ahead)
        self.stats["passes"] += 1
        return self.stats

    def _repair(self, oid: int, copies: int, bad: list[int]) -> None:
        self.stats["corrupt_objects"] += 1
        log.error("scrub oid=%016x: %d block(s) fail their checksum; repairing", oid, len(bad))
        if self.epochs.view is None:
            return
        try:
            report = self.gateway.converger.converge(oid, copies)
        except SheepError as exc:
            log.error("scrub oid=%016x: repair failed: %s", oid, exc)
            self.stats["unrepaired"] += 1
            return
        self.stats["repaired_blocks"] += report["repaired"]
        if report["verdict"] not in ("ok", "needs-writer-quiesced"):
            self.stats["unrepaired"] += 1
            log.error("scrub oid=%016x: left %s: %s", oid, report["verdict"],
                      report["problems"][:3])
