"""The gateway as the writer of one VDI sees it (what a `Volume` of an attached VDI uses).

* Every mutation carries the VDI's lock generation (the fencing token replicas check)
  and a sequence number of its own.
* Mutations happen only under the ZooKeeper session the lock was taken with: after
  that session is lost the lock may belong to someone else, so every later write
  fails here at once.
* It knows which of its mutations have completed on every replica: everything up to
  `settled_mark` has, and the FLUSH it sends tells the replicas so (they forget those
  objects in their activity logs).  A mutation that failed may have reached some
  replicas only, so it is never settled: if this writer vanishes, the next holder
  resynchronises it (`sheep.volumes.fencing`).  `clean` says whether nothing is in
  flight or unsettled, i.e. whether the lock can be given back "clean".
"""
from __future__ import annotations

import logging

from common.errors import NoObject

log = logging.getLogger(__name__)


class VdiWriter:
    def __init__(self, gateway, vid: int, generation: int, session: int | None,
                 lock: dict | None = None) -> None:
        self.gateway = gateway
        self.vid = vid
        self.generation = generation
        self.session = session
        self.lock = lock            # the lock's value from VdiLocks.acquire (None: no lock)
        self._in_flight: set[int] = set()
        self._unsettled: set[int] = set()
        self._last = 0

    # -- the Volume's gateway interface ---------------------------------------------
    def read(self, oid: int, offset: int, length: int, copies: int):
        return self.gateway.read(oid, offset, length, copies)

    def write(self, oid: int, offset: int, data, copies: int, create: bool = False) -> int:
        return self._mutation(lambda seq: self.gateway.write(
            oid, offset, data, copies, create, generation=self.generation, seq=seq,
            session=self.session))

    def remove(self, oid: int, copies: int) -> int:
        return self._mutation(lambda seq: self.gateway.remove(
            oid, copies, generation=self.generation, seq=seq, session=self.session))

    def flush(self) -> None:
        mark = self.settled_mark()
        self.gateway.flush(settle=[(self.vid, self.generation, mark)])

    # -- bookkeeping ------------------------------------------------------------------
    def _mutation(self, run) -> int:
        seq = self.gateway.next_seq()
        self._in_flight.add(seq)
        self._last = max(self._last, seq)
        try:
            return run(seq)
        except NoObject:
            raise           # nothing was written anywhere (every target said so)
        except BaseException:
            self._unsettled.add(seq)    # it may have reached some replicas only
            raise
        finally:
            self._in_flight.discard(seq)

    def settled_mark(self) -> int:
        """Every mutation of this writer with a seq up to this one completed everywhere."""
        pending = self._in_flight | self._unsettled
        return min(pending) - 1 if pending else self._last

    @property
    def clean(self) -> bool:
        return not self._in_flight and not self._unsettled

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
