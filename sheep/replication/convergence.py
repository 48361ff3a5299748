"""Bringing the copies of one object together: which copy is good, and repairing the rest.

Used by every path that finds copies apart: a write that reached some replicas and
not others, a read that failed its checksum, the resync of a VDI whose holder
vanished, ``collie vdi check`` / ``cluster check`` and the background scrub.

Each placed replica answers with its copy's ``info`` (version, tick, block sums,
blocks failing their sums), "missing", or an error (unreachable).

Corrupt blocks (`block_repairs`, pure; safe while writes go on)
    A block whose data fails its sum is corrupt; the sum stored beside it still
    says what it must hold.  Any other replica whose block has that same sum and
    passes it is a donor: its bytes are exactly the right ones, whatever the
    versions say.  The replica rewrites the block only if it still fails and its
    sum is still the expected one (a write since then wins).  A corrupt block
    with no donor cannot be repaired ("no majority": nothing is changed).

Whole copies (`plan`, pure; only without concurrent writers)
    The newest version among all answers is what the object must hold.  The source
    is an intact copy of that version; among several with different content (equal
    versions after a partial fan-out: none of them was acknowledged beyond what they
    share) the most common digest wins, ties going to the first in placement order,
    so every decider picks the same one.  Missing, older and divergent copies get
    the source's bytes, installed only if their *tick* is still the one they
    answered with.  Installing a whole copy while writes to the object are in
    flight could undo one that reached the target first, so only callers that
    exclude writers do it: the VDI's holder with writes to the object held
    (`Gateway.resync`), a checker holding the VDI's lock, or objects of snapshots.
"""
from __future__ import annotations

import logging
from array import array
from collections import Counter
from dataclasses import dataclass, field

import gevent

from common.errors import NoObject, SheepError
from coordinator.ring import Member
from sheep.replication.replica import info_from_wire
from sheep.store.objfile import Version

log = logging.getLogger(__name__)

MISSING = "missing"
ROUNDS = 3


def _sum_at(info: dict, k: int) -> int:
    sums = info["sums"]
    return sums[k] if k < len(sums) else 0


def block_repairs(placed: list[Member], infos: dict[Member, dict]
                  ) -> tuple[dict[Member, dict[int, Member]], dict[Member, list[int]]]:
    """(target -> {block: donor}, target -> [blocks nobody can give])."""
    repairs: dict[Member, dict[int, Member]] = {}
    hopeless: dict[Member, list[int]] = {}
    for t in placed:
        info = infos.get(t)
        if not info or not info["bad_blocks"]:
            continue
        for k in info["bad_blocks"]:
            want = _sum_at(info, k)
            donor = next((d for d in placed if d != t and d in infos
                          and k not in infos[d]["bad_blocks"] and _sum_at(infos[d], k) == want),
                         None)
            if donor is None:
                hopeless.setdefault(t, []).append(k)
            else:
                repairs.setdefault(t, {})[k] = donor
    return repairs, hopeless


@dataclass
class Plan:
    source: Member | None = None
    version: Version | None = None
    targets: dict[Member, str] = field(default_factory=dict)    # member -> why
    unreachable: dict[Member, str] = field(default_factory=dict)
    verdict: str = "ok"    # ok | repair | lost | no-majority | unreachable


def plan(placed: list[Member], answers: dict[Member, object]) -> Plan:
    """What the whole copies of one object need; ``answers[m]`` is an info dict,
    `MISSING`, or an exception (placement order = ``placed``)."""
    out = Plan()
    infos = {m: a for m, a in answers.items() if isinstance(a, dict)}
    for m in placed:
        a = answers.get(m)
        if isinstance(a, BaseException):
            out.unreachable[m] = str(a)
    if not infos:
        if out.unreachable:
            out.verdict = "unreachable"
        else:
            out.verdict = "lost"
            out.targets = {m: MISSING for m in placed}
        return out
    newest = max(a["version"] for a in infos.values())
    out.version = newest
    intact = [m for m in placed if m in infos and not infos[m]["bad_blocks"]
              and infos[m]["version"] == newest]
    if not intact:
        out.verdict = "no-majority"
        for m in placed:
            why = _why(infos.get(m), answers.get(m), newest, None)
            if why:
                out.targets[m] = why
        return out
    votes = Counter(infos[m]["digest"] for m in intact)
    top = max(votes.values())
    out.source = next(m for m in intact if votes[infos[m]["digest"]] == top)
    good = infos[out.source]["digest"]
    for m in placed:
        why = _why(infos.get(m), answers.get(m), newest, good)
        if why:
            out.targets[m] = why
    out.verdict = "repair" if out.targets else "ok"
    return out


def _why(info: dict | None, answer, newest: Version, good: str | None) -> str | None:
    if info is None:
        return MISSING if answer == MISSING else None
    if info["bad_blocks"]:
        return f"corrupt ({len(info['bad_blocks'])} block(s) fail their checksum)"
    if info["version"] < newest:
        return f"old (version {info['version']} < {newest})"
    if good is not None and info["digest"] != good:
        return f"divergent (digest {info['digest'][:12]} != {good[:12]})"
    return None


class Converger:
    """Ask, decide, repair, for one object at a time, through a `Gateway`."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.repaired_blocks = 0
        self.repaired_copies = 0

    def ask(self, placed: list[Member], oid: int, verify: bool = True) -> dict[Member, object]:
        jobs = {m: gevent.spawn(self._ask_one, m, oid, verify) for m in placed}
        gevent.joinall(list(jobs.values()))
        return {m: j.value if j.exception is None else j.exception for m, j in jobs.items()}

    def _ask_one(self, m: Member, oid: int, verify: bool):
        try:
            h, _ = self.gateway.call_member(m, {"op": "info", "oid": oid, "verify": verify})
        except NoObject:
            return MISSING
        except SheepError as exc:
            return exc
        info = info_from_wire(h)
        info["sums"] = array("I", info["sums"])
        return info

    def converge(self, oid: int, copies: int, *, repair: bool = True, whole: bool = False) -> dict:
        """Check the copies of ``oid``; with ``repair``, rewrite corrupt blocks from donors
        and, with ``whole``, bring missing, old and divergent copies to the source's.
        Returns ``{"oid", "problems": [{node, problem}], "repaired", "lost", "verdict"}``;
        the problems are those found first, ``verdict`` what is left at the end."""
        report = None
        for round_ in range(ROUNDS + 1):
            view = self.gateway.epochs.view
            placed = view.ring.replicas(oid, copies)
            answers = self.ask(placed, oid)
            infos = {m: a for m, a in answers.items() if isinstance(a, dict)}
            repairs, hopeless = block_repairs(placed, infos)
            p = plan(placed, answers)
            if report is None:
                report = _report(oid, p, hopeless)
            report["verdict"] = _verdict(p, repairs, hopeless, whole)
            if not repair or round_ == ROUNDS or not (repairs or (whole and p.verdict == "repair")):
                return report
            if repairs:
                self._repair_blocks(oid, repairs, report)
            else:
                self._install_whole(oid, p, answers, view.epoch, report)
        return report

    def _repair_blocks(self, oid: int, repairs: dict[Member, dict[int, Member]],
                       report: dict) -> None:
        for target, by_block in repairs.items():
            donors: dict[Member, list[int]] = {}
            for k, donor in by_block.items():
                donors.setdefault(donor, []).append(k)
            payload: dict[int, tuple[int, bytes]] = {}
            for donor, blocks in donors.items():
                try:
                    h, data = self.gateway.call_member(
                        donor, {"op": "read_blocks", "oid": oid, "blocks": blocks})
                except SheepError as exc:
                    report["problems"].append({"node": donor.node_id,
                                               "problem": f"repair donor failed: {exc}"})
                    continue
                for i, (k, expected) in enumerate(zip(h["blocks"], h["sums"])):
                    payload[int(k)] = (int(expected), bytes(data[i * 4096:(i + 1) * 4096]))
            if not payload:
                continue
            try:
                done = self.gateway.repair_blocks(target, oid, payload)
            except SheepError as exc:
                report["problems"].append({"node": target.node_id,
                                           "problem": f"repair failed: {exc}"})
                continue
            report["repaired"] += done
            self.repaired_blocks += done
            log.warning("oid=%016x %d corrupt block(s) on %s repaired", oid, done,
                        target.node_id)

    def _install_whole(self, oid: int, p: Plan, answers: dict, epoch: int, report: dict) -> None:
        """Install the source's copy on every target (one that changed meanwhile is
        looked at again in the next round)."""
        try:
            h, data = self.gateway.call_member(p.source, {"op": "fetch", "oid": oid})
        except SheepError as exc:
            report["problems"].append({"node": p.source.node_id,
                                       "problem": f"repair source failed: {exc}"})
            return
        version = Version.from_wire(h["version"])
        for m, why in p.targets.items():
            a = answers.get(m)
            tick = 0 if a == MISSING else a["tick"] if isinstance(a, dict) else None
            if tick is None:
                continue
            try:
                done = self.gateway.install(m, epoch, oid, data, version, expect_tick=tick)
            except SheepError as exc:
                report["problems"].append({"node": m.node_id, "problem": f"repair failed: {exc}"})
                continue
            if done:
                report["repaired"] += 1
                self.repaired_copies += 1
                log.warning("oid=%016x repaired %s copy on %s from %s", oid, why, m.node_id,
                            p.source.node_id)


def _verdict(p: Plan, repairs: dict, hopeless: dict, whole: bool) -> str:
    if hopeless:
        return "no-majority"
    if repairs:
        return "repair"
    if p.verdict == "repair":
        return "repair" if whole else "needs-writer-quiesced"
    return p.verdict


def _report(oid: int, p: Plan, hopeless: dict) -> dict:
    problems = [{"node": m.node_id, "problem": why} for m, why in p.targets.items()]
    problems += [{"node": m.node_id, "problem": f"unreachable: {why}"}
                 for m, why in p.unreachable.items()]
    if hopeless:
        blocks = sorted({k for ks in hopeless.values() for k in ks})
        problems.append({"node": "-", "problem": f"no majority: block(s) {blocks[:8]} fail "
                         "their checksum and no replica holds their right bytes; nothing "
                         "changed"})
    if p.verdict == "no-majority" and not hopeless:
        problems.append({"node": "-", "problem": "no majority: no intact copy of the newest "
                                                 f"version {p.version}; nothing changed"})
    return {"oid": f"{oid:016x}", "problems": problems, "repaired": 0,
            "lost": p.verdict == "lost", "verdict": p.verdict}
