"""`collie vdi check` / `collie cluster check`: compare every object's replicas and repair them.

For each object of a VDI (its inode, then every data object its map references)
the checker asks each replica the current epoch places it on for the copy's
checksum and last-write epoch.  The newest epoch wins; among copies of that
epoch the most common checksum wins (ties go to the primary replica's copy).
Every replica that is missing, older, or different is reported, and - unless
the check only reports (``repair=False``, collie's ``-e``) - overwritten with a
whole copy of the good one: fetched as a raw payload and installed with the
``install`` peer op (atomic replace, the good copy's epoch kept).

Run it on an idle VDI: a client write landing between the fetch and the install
of a repair would be undone on that one replica (the check cannot order itself
against writes of the same epoch).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

import gevent
from gevent.pool import Pool

from coordinator.ring import Member
from sheep.errors import InvalidRequest, NoObject, SheepError
from sheep.replica import Replica
from vdi import objects

log = logging.getLogger(__name__)

PARALLEL = 8


class Checker:
    def __init__(self, node_id: str, gateway, replica: Replica, copies_of: Callable[[int], int]):
        self.node_id = node_id
        self.gateway = gateway
        self.epochs = gateway.epochs
        self.copies_of = copies_of
        replica.extra_ops["install"] = _op_install

    # -- one object ---------------------------------------------------------------------
    def _ask(self, m: Member, oid: int):
        try:
            h, _ = self.gateway.call_member(m, {"op": "checksum", "oid": oid})
            return (h["checksum"], int(h["epoch"]))
        except NoObject:
            return None
        except SheepError as exc:
            return exc

    def check_object(self, oid: int, copies: int, repair: bool) -> dict:
        """{"oid", "problems": [{node, problem}], "repaired": n, "lost": bool}."""
        view = self.epochs.view
        placed = view.ring.replicas(oid, copies)
        jobs = [gevent.spawn(self._ask, m, oid) for m in placed]
        gevent.joinall(jobs)
        answers = {m: j.value for m, j in zip(placed, jobs)}
        copies_seen = {m: a for m, a in answers.items() if isinstance(a, tuple)}
        out = {"oid": f"{oid:016x}", "problems": [], "repaired": 0, "lost": False}
        if not copies_seen:
            out["lost"] = all(a is None for a in answers.values())
            out["problems"] = [{"node": m.node_id, "problem": "missing" if a is None
                                else f"unreachable: {a}"} for m, a in answers.items()]
            return out
        newest = max(e for _, e in copies_seen.values())
        votes = Counter(c for c, e in copies_seen.values() if e == newest)
        top = max(votes.values())
        good_sum = next(c for m, (c, e) in copies_seen.items()
                        if e == newest and votes[c] == top)
        good = [m for m, (c, e) in copies_seen.items() if e == newest and c == good_sum]
        bad = []
        for m, a in answers.items():
            if a is None:
                bad.append((m, "missing"))
            elif isinstance(a, Exception):
                out["problems"].append({"node": m.node_id, "problem": f"unreachable: {a}"})
            elif a[1] < newest:
                bad.append((m, f"old (epoch {a[1]} < {newest})"))
            elif a[0] != good_sum:
                bad.append((m, f"divergent (checksum {a[0][:12]} != {good_sum[:12]})"))
        for m, why in bad:
            out["problems"].append({"node": m.node_id, "problem": why})
        if repair and bad:
            data = None
            for src in good:
                try:
                    h, data = self.gateway.call_member(src, {"op": "fetch", "oid": oid})
                    break
                except SheepError as exc:
                    log.info("oid=%016x check: fetch from %s failed: %s", oid, src.node_id, exc)
            for m, why in bad if data is not None else []:
                try:
                    self._install(m, oid, data, newest, view.epoch)
                    out["repaired"] += 1
                    log.warning("oid=%016x check: repaired %s copy on %s", oid, why, m.node_id)
                except SheepError as exc:
                    out["problems"].append({"node": m.node_id, "problem": f"repair failed: {exc}"})
        return out

    def _install(self, m: Member, oid: int, data, object_epoch: int, epoch: int) -> None:
        header = {"op": "install", "oid": oid, "object_epoch": object_epoch, "epoch": epoch}
        if m.node_id == self.node_id:
            self.gateway.local.handle(header, data)
        else:
            self.gateway.peers.call(m.addr, m.port, header, data, self.gateway.peer_timeout_s)

    # -- VDIs ---------------------------------------------------------------------------
    def check_entries(self, entries: list[dict], open_volume, repair: bool) -> dict:
        """Check the inodes and data objects of ``entries`` (catalog entries)."""
        if self.epochs.view is None:
            raise InvalidRequest("cluster has no epoch yet")
        results = []
        oids: dict[int, int] = {}
        pool = Pool(PARALLEL)
        # inodes first: the maps are read from (repaired) inodes
        inode_jobs = [pool.spawn(self.check_object, objects.inode_oid(e["vid"]),
                                 int(e["copies"]), repair) for e in entries]
        pool.join()
        results += [j.value for j in inode_jobs if j.value is not None]
        for e in entries:
            try:
                vol = open_volume(e)
            except SheepError as exc:
                results.append({"oid": f"{objects.inode_oid(e['vid']):016x}", "repaired": 0,
                                "lost": True, "problems": [{"node": "-", "problem": str(exc)}]})
                continue
            objmap = vol.objmap
            for idx in range(len(objmap)):
                owner = objmap.get(idx)
                if owner:
                    oid = objects.data_oid(owner, idx)
                    oids.setdefault(oid, self.copies_of(oid))
        data_jobs = [pool.spawn(self.check_object, oid, copies, repair)
                     for oid, copies in sorted(oids.items())]
        pool.join()
        results += [j.value for j in data_jobs if j.value is not None]
        bad = [r for r in results if r["problems"]]
        return {"objects": len(results),
                "problems": sum(len(r["problems"]) for r in bad),
                "repaired": sum(r["repaired"] for r in results),
                "lost": sum(1 for r in results if r["lost"]),
                "details": [{"oid": r["oid"], **p} for r in bad for p in r["problems"]],
                "repair": repair}


def _op_install(r: Replica, h: dict, payload):
    """Install a whole object copy (check repair): atomic replace, the source's epoch kept."""
    r.check_writable()
    r.check_epoch(h["epoch"])
    r._io(r.store.replace, h["oid"], payload, int(h["object_epoch"]))
    return {}, b""
