"""`collie vdi check` / `collie cluster check`: compare every object's replicas and repair them.

For each object of a VDI (its inode, then every data object its map references) the
checker asks each replica the current epoch places it on for the copy's version, block
sums and the blocks whose data fails them (each replica reads its whole copy), and
applies the rule of `sheep.replication.convergence`:

* a corrupt block is rewritten from a replica holding its right bytes (the block's own
  sum says which ones are right); a block corrupt everywhere is "no majority": reported,
  nothing changed, exit 1;
* a missing, older or divergent copy gets the good copy (the newest version, intact,
  the most common content) - but only where no writer can be running: objects of
  snapshots (never written again), and objects of a working VDI whose lock the checker
  could take for the duration.  For a VDI attached elsewhere those are reported (its
  holder resynchronises them; run the check again once it is detached).

``repair=False`` (collie's ``-e``) only reports.
"""
from __future__ import annotations

import contextlib
import logging

from gevent.pool import Pool

from common.errors import InvalidRequest, Locked, SheepError
from vdi import objects

log = logging.getLogger(__name__)

PARALLEL = 8


class Checker:
    def __init__(self, node_id: str, gateway):
        self.node_id = node_id
        self.gateway = gateway
        self.epochs = gateway.epochs

    def check_object(self, oid: int, copies: int, repair: bool, whole: bool) -> dict:
        report = self.gateway.converger.converge(oid, copies, repair=repair, whole=whole)
        if repair and not whole and report["verdict"] == "needs-writer-quiesced":
            report["problems"].append({"node": "-", "problem": "not repaired: the VDI is "
                                       "attached (its holder resynchronises it; check again "
                                       "once it is detached)"})
        return report

    def check_entries(self, entries: list[dict], open_volume, repair: bool, vdis=None) -> dict:
        """Check the inodes and data objects of ``entries`` (catalog entries); ``vdis`` (a
        `VdiService`) lets the checker lock working VDIs for whole-copy repairs."""
        if self.epochs.view is None:
            raise InvalidRequest("cluster has no epoch yet")
        with contextlib.ExitStack() as held:
            writable = self._lock_what_it_can(entries, vdis, held) if repair else set()
            return self._check(entries, open_volume, repair, writable)

    def _lock_what_it_can(self, entries: list[dict], vdis, held) -> set[int]:
        """Vids whose objects no writer can touch: snapshots, and working VDIs locked here."""
        writable = {e["vid"] for e in entries if e.get("snapshot")}
        for e in entries:
            if e.get("snapshot") or vdis is None:
                continue
            try:
                held.enter_context(vdis.taken(e, "check"))
                writable.add(e["vid"])
            except Locked:
                log.info("vdi=%s attached: check repairs only corrupt blocks of its objects",
                         e["name"])
        return writable

    def _check(self, entries: list[dict], open_volume, repair: bool, writable: set[int]) -> dict:
        results = []
        oids: dict[int, int] = {}
        pool = Pool(PARALLEL)
        # inodes first: the maps are read from (repaired) inodes
        inode_jobs = [pool.spawn(self.check_object, objects.inode_oid(e["vid"]),
                                 int(e["copies"]), repair, e["vid"] in writable)
                      for e in entries]
        pool.join()
        results += [j.value for j in inode_jobs if j.value is not None]
        results += [_crashed(j) for j in inode_jobs if j.exception is not None]
        for e in entries:
            try:
                vol = open_volume(e)
            except SheepError as exc:
                results.append({"oid": f"{objects.inode_oid(e['vid']):016x}", "repaired": 0,
                                "lost": True, "verdict": "lost",
                                "problems": [{"node": "-", "problem": str(exc)}]})
                continue
            objmap = vol.objmap
            for idx in range(len(objmap)):
                owner = objmap.get(idx)
                if owner:
                    oids.setdefault(objects.data_oid(owner, idx), int(e["copies"]))
        data_jobs = [pool.spawn(self.check_object, oid, copies, repair,
                                objects.oid_vid(oid) in writable)
                     for oid, copies in sorted(oids.items())]
        pool.join()
        results += [j.value for j in data_jobs if j.value is not None]
        results += [_crashed(j) for j in data_jobs if j.exception is not None]
        bad = [r for r in results if r["problems"]]
        unrepaired = [r for r in results if r["verdict"] != "ok"]
        return {"objects": len(results),
                "problems": sum(len(r["problems"]) for r in bad),
                "repaired": sum(r["repaired"] for r in results),
                "lost": sum(1 for r in results if r["lost"]),
                "no_majority": sum(1 for r in results if r["verdict"] == "no-majority"),
                "unrepaired": len(unrepaired),
                "details": [{"oid": r["oid"], **p} for r in bad for p in r["problems"]],
                "repair": repair}


def _crashed(job) -> dict:
    return {"oid": "-", "repaired": 0, "lost": False, "verdict": "error",
            "problems": [{"node": "-", "problem": f"check failed: {job.exception}"}]}
