"""Taking a VDI for writing: the lock, its generation on every replica, and a resync.

`VdiFencing.take` is the only way any part of a sheep gets the right to mutate a
VDI's objects (NBD attach, ``collie vdi write``, snapshot, delete, rollback):

1. acquire the lock (`coordinator.locks.VdiLocks.acquire`): one ZooKeeper transaction
   creates the ephemeral lock and bumps the VDI's generation;
2. *fence*: send the new generation to every member of the epoch and wait until all
   of them answered, so that from now on no replica accepts a mutation that an older
   holder sent (it may still be on the way: a partition, a lost session, a broken
   lock) - they fail with `StaleGeneration`;
3. if the last holder did not let go cleanly (``previous_clean`` false: it crashed,
   its session expired, its lock was broken), *resync*: every member reports the
   objects of the VDI in its activity log that no holder has settled (`sheep.replication.activity`),
   and each of them is brought to one good copy on every replica (`sheep.replication.convergence`,
   whole copies: nobody else can write now), then those entries are settled;
4. only then does the caller read the inode and do I/O.

`give_back` releases the lock, "clean" when the writer has nothing in flight or
unsettled, then tells every replica to settle what that writer completed.
"""
from __future__ import annotations

import logging

import gevent

from common.errors import SheepError, Unavailable

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 2.0


class VdiFencing:
    def __init__(self, locks, gateway, node_id: str) -> None:
        self.locks = locks
        self.gateway = gateway
        self.node_id = node_id
        self.resynced_objects = 0

    def take(self, vid: int, copies: int, client: str) -> dict:
        """Lock ``vid`` for ``client``, fence older holders out, resync if needed; returns
        the lock's value (``generation`` is what every mutation must carry)."""
        lock = self.locks.acquire(vid, self.node_id, client)
        try:
            self.fence(vid, lock["generation"])
            if not lock.get("previous_clean", True):
                self.resync(vid, copies, lock["generation"])
        except BaseException:
            self._release_quietly(vid, clean=False)
            raise
        return lock

    def give_back(self, vid: int, writer=None, clean: bool | None = None) -> bool:
        """Release the lock of ``vid``; clean unless told otherwise or ``writer`` is not.

        The replicas are told to settle what the writer completed afterwards, in the
        background: that only trims their activity logs (a next holder after an unclean
        hand-over would look at those objects once more), so the lock is free at once."""
        if clean is None:
            clean = writer is None or writer.clean
        released = self.locks.release(vid, self.node_id, clean=clean,
                                      lock=getattr(writer, "lock", None))
        if clean and writer is not None:
            gevent.spawn(self._settle, vid, writer.generation, writer.settled_mark())
        return released

    def _settle(self, vid: int, generation: int, seq: int) -> None:
        try:
            self.gateway.broadcast({"op": "settle", "vid": vid, "generation": generation,
                                    "seq": seq}, "settle", timeout_s=SETTLE_TIMEOUT_S)
        except SheepError as exc:
            log.info("vid=%06x settle after release incomplete: %s", vid, exc)

    def _release_quietly(self, vid: int, clean: bool) -> None:
        try:
            self.locks.release(vid, self.node_id, clean=clean)
        except Exception as exc:      # the session may be gone: the znode went with it
            log.info("vid=%06x lock release failed: %s", vid, exc)

    def fence(self, vid: int, generation: int) -> None:
        """Every member refuses mutations of ``vid`` older than ``generation`` from now on."""
        self.gateway.broadcast({"op": "fence", "vid": vid, "generation": generation}, "fence")

    def after_break(self, vid: int, generation: int) -> None:
        """A broken lock: fence its holder out at once (best effort; replicas that miss it
        look the generation up before their next mutation of ``vid``)."""
        try:
            self.fence(vid, generation)
        except SheepError as exc:
            log.warning("vid=%06x fence after a broken lock incomplete: %s", vid, exc)

    def resync(self, vid: int, copies: int, generation: int) -> int:
        """Bring every unsettled object of ``vid`` to one good copy; how many were checked."""
        answers = self.gateway.broadcast({"op": "activity", "vid": vid}, "activity")
        oids = sorted({int(o) for header, _payload in answers.values()
                       for o in header.get("oids", ())})
        log.warning("vid=%06x last holder let go uncleanly: resyncing %d object(s)", vid,
                    len(oids))
        jobs = [gevent.spawn(self.gateway.converger.converge, oid, copies, whole=True)
                for oid in oids]
        gevent.joinall(jobs)
        left = []
        for oid, job in zip(oids, jobs):
            if job.exception is not None:
                left.append((oid, str(job.exception)))
                continue
            report = job.value
            if report["verdict"] == "unreachable":
                left.append((oid, "replicas unreachable"))
            elif report["verdict"] == "no-majority":
                log.error("vid=%06x oid=%016x: no intact copy to resync from", vid, oid)
            elif report["repaired"]:
                self.resynced_objects += 1
        if left:
            raise Unavailable(f"VDI {vid:06x}: {len(left)} object(s) could not be resynced "
                              f"({left[0][0]:016x}: {left[0][1]}); try again",
                              vid=vid)
        self.gateway.broadcast({"op": "settle", "vid": vid, "generation": generation,
                                "seq": 0}, "settle")
        log.warning("vid=%06x resync done: %d object(s) checked, %d brought together", vid,
                    len(oids), sum(1 for j in jobs if j.value and j.value["repaired"]))
        return len(oids)
