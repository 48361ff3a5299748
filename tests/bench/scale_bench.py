#!/usr/bin/env python3
"""Scale benchmark (a script, not a test): many sheep on one machine, idle, under I/O,
losing and regaining nodes, taking a join storm; prints the figures issue 15 sets targets for.

    python3 tests/bench/scale_bench.py [--nodes 100] [--copies 3] [--data-mib 400]
        [--storm 20] [--storm-mode grow|split] [--kill 4] [--idle-s 20]
        [--session-timeout 10] [--timeout-s 300] [--json] [--keep]
        [--no-idle] [--no-io] [--no-kill] [--no-rejoin] [--no-storm]

Cluster: a private ZooKeeper and N real sheep on loopback (``LocalCluster``), copies C,
zone of node i = ``i % max(1, N // 5)``: N/5 zones (20 at N=100), 5 nodes in each.  Node 0
is the writing client's gateway and node 1 the reading one; ZooKeeper is read directly (an
anonymous client: members, epochs, leader), the sheep through their admin API and /metrics.

Phases, in order (each skippable):

* **start**: every sheep spawned at once; seconds until all are members (registered in
  ZooKeeper), until every admin API answers, and until ``collie cluster format --copies C``
  has epoch 1 on every node; resident memory per sheep (VmRSS: min/median/max MiB and the
  three largest).
* **idle**: a fixed window of IDLE_S seconds (a measurement, not a wait): CPU of all sheep
  and of ZooKeeper in % of one core (utime + stime from /proc), load average, epochs and
  ZooKeeper session losses (``sheep_zk_session_losses_total``) before and after.
* **io**: DATA MiB of random bytes written into a VDI through NBD on node 0 (``qemu-img
  convert``), read back through node 1 and compared by sha256; MiB/s both ways; epochs and
  session losses during it; RSS per sheep afterwards.
* **kill**: K sheep of K different zones SIGKILLed at once (never node 0, node 1 or the
  leader, so the figures are of recovery and not of an election; never every replica of
  one object, checked with the ring: with copies 3, four zones can hold all three copies of
  an object, a loss no recovery can undo, likely at N=20); the epochs made; seconds
  until every survivor's recovery is complete at the newest epoch, whose members are the
  survivors; seconds until ``collie cluster check -e`` exits 0; peer requests by op
  (``sheep_peer_requests_total``, all passes) and recovery figures of each node's last pass
  (GET /node ``recovery``: ``asked``, ``listed``, ``listed_bytes`` where a sheep reports them,
  else null; ``pulled``, ``bytes``), in total and per epoch made; the data read back through
  a survivor.
* **rejoin**: the same K restarted on their own directories and ports; the same figures,
  the data read back through a rejoined node.
* **storm**: STORM sheep started at once into the running cluster while fio (nbd engine)
  writes and reads a second VDI through node 0; epochs made, seconds until all joined and
  until recovery is complete, fio's I/O errors out of its I/Os.  ``--storm-mode grow``
  (default) runs it last and adds STORM new sheep (N + STORM then run); ``split`` starts
  only N - STORM in the start phase, runs the storm right after the format, and the other
  phases at N (start figures are then of N - STORM sheep).  Only when N > STORM.

Live progress goes to stderr; the table of figures to stdout (``--json``: the JSON document
to stdout, the table to stderr).  A phase that fails (a "timed out waiting for ..." or a
client error) is reported as such and ends the run, with the figures so far.  Everything it
starts is stopped at the end, also on an error, Ctrl-C or SIGTERM: ``collie cluster
shutdown``, then SIGTERM/SIGKILL of what is left.  The base directory (sheep and ZooKeeper
logs) is removed unless ``--keep`` or the run failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from coordinator.ring import Member, Ring  # noqa: E402
from sheepdog_local.local_cluster import STATE_FILE, LocalCluster  # noqa: E402
from vdi import objects  # noqa: E402

from scale_probe import (CLK_TCK, POOL, RECOVERY_OPS, BenchError, MiB, Observer,  # noqa: E402
                         api, by_op, collie, counter_delta, cpu_ticks, each, epochs_since, recovery_sums, rss_figures, run, say, scrape,
                         sessions_lost, settled, states, wait)


class Bench:
    def __init__(self, args, base: Path) -> None:
        self.args = args
        self.base = base
        self.zones = max(1, args.nodes // 5)
        first = args.nodes - args.storm if self.split_storm() else args.nodes
        self.c = LocalCluster(base, first, cluster="scale", fast_zk=True,
                              zones=[self.zone(i) for i in range(first)],
                              sheep_args=["--session-timeout", str(args.session_timeout),
                                          "--log-level", args.log_level])
        self.obs: Observer | None = None
        self.data_sha: str | None = None
        self.fio: subprocess.Popen | None = None
        self.killed: list = []

    def split_storm(self) -> bool:
        return self.args.storm_mode == "split" and not self.args.no_storm and \
            self.args.nodes > self.args.storm > 0

    def zone(self, i: int) -> str:
        return f"z{i % self.zones}"

    @property
    def live(self) -> list:
        return [s for s in self.c.sheep if s.pid is not None]

    def timeout(self, what: str):
        return self.args.timeout_s, what

    # -- start + format --------------------------------------------------------------------
    def phase_start(self) -> dict:
        c, n = self.c, len(self.c.sheep)
        c.base.mkdir(parents=True, exist_ok=True)
        c.zk.start()
        c.save()
        self.obs = Observer(c.zk.hosts, c.cluster)
        say(f"spawning {n} sheep at once")
        t0 = time.monotonic()
        joined_s = self.spawn(c.sheep, t0)
        # a sheep registers before its admin API serves: "joined" is not yet "ready"
        wait(lambda: all(each(lambda s: requests.get(s.admin_url + "/health", timeout=5).ok,
                              c.sheep)),
             *self.timeout("every sheep's admin API"), interval_s=0.5)
        ready_s = time.monotonic() - t0
        say(f"every admin API answers after {ready_s:.1f}s; collie cluster format")
        self.format()
        formatted_s = time.monotonic() - t0
        say(f"formatted: epoch 1 on every node after {formatted_s:.1f}s")
        return {"nodes": n, "zones": self.zones, "copies": self.args.copies,
                "joined_s": round(joined_s, 2), "ready_s": round(ready_s, 2),
                "formatted_s": round(formatted_s, 2),
                "epochs_after_format": self.obs.latest_number(), **rss_figures(c.sheep)}

    def spawn(self, nodes, t0: float) -> float:
        """Start ``nodes`` together; seconds from ``t0`` until all of them are members."""
        for s in nodes:
            s.start()
        self.c.save()
        ids = {s.node_id for s in nodes}

        def joined():
            dead = [s for s in nodes if not s.running()]
            if dead:
                raise BenchError(f"sheep {dead[0].index} exited while starting; log tail:\n"
                                 f"{dead[0].log_tail(30)}")
            return ids <= self.obs.members()
        wait(joined, *self.timeout(f"all {len(nodes)} sheep registered in ZooKeeper"))
        joined_s = time.monotonic() - t0
        say(f"{len(nodes)} sheep joined after {joined_s:.1f}s")
        return joined_s

    def format(self) -> None:
        n0 = self.c.sheep[0]
        wait(lambda: requests.get(n0.admin_url + "/health", timeout=5).ok,
             *self.timeout("node 0's admin API"))
        proc = collie(n0, "cluster", "format", "--copies", str(self.args.copies))
        if proc.returncode != 0:
            raise BenchError(f"collie cluster format exited {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace').strip()}")
        wait(lambda: all(st is not None and st["epoch"] >= 1 for st in states(self.c.sheep).values()),
             *self.timeout("epoch 1 on every node"), interval_s=0.5)

    # -- idle ------------------------------------------------------------------------------
    def phase_idle(self) -> dict:
        nodes = self.live
        # the window starts from a settled cluster: the last pass after the format is done
        wait(lambda: settled(self.obs, nodes), *self.timeout("recovery complete before idling"),
             interval_s=0.5)
        m0, e0 = scrape(nodes), self.obs.latest_number()
        say(f"idle window {self.args.idle_s:.0f}s")
        sheep0 = sum(cpu_ticks(s.pid) for s in nodes)
        zk0, t0 = cpu_ticks(self.c.zk.pid), time.monotonic()
        time.sleep(self.args.idle_s)          # the measurement window itself
        sheep1 = sum(cpu_ticks(s.pid) for s in nodes)
        zk1, t1 = cpu_ticks(self.c.zk.pid), time.monotonic()
        load = os.getloadavg()
        delta = counter_delta(m0, scrape(nodes))
        window = t1 - t0
        return {"nodes": len(nodes), "window_s": round(window, 1),
                "sheep_cpu_pct_of_one_core": round(100 * (sheep1 - sheep0) / CLK_TCK / window, 1),
                "sheep_cpu_pct_per_node": round(100 * (sheep1 - sheep0) / CLK_TCK / window
                                                / len(nodes), 2),
                "zookeeper_cpu_pct_of_one_core": round(100 * (zk1 - zk0) / CLK_TCK / window, 1),
                "loadavg_1_5_15": [round(x, 2) for x in load],
                "epoch_before": e0, "epoch_after": self.obs.latest_number(),
                "unplanned_epochs": self.obs.latest_number() - e0,
                "sessions_lost": sessions_lost(delta),
                "fencing_events": int(delta[("sheep_fencing_events_total", "")]),
                "peer_requests": by_op(delta, "sheep_peer_requests_total")}

    # -- io --------------------------------------------------------------------------------
    def phase_io(self) -> dict:
        n0, n1, mib = self.c.sheep[0], self.c.sheep[1], self.args.data_mib
        src = self.base / "data.raw"
        digest = hashlib.sha256()
        with open(src, "wb") as f:
            for _ in range(mib):
                chunk = os.urandom(MiB)
                digest.update(chunk)
                f.write(chunk)
        self.data_sha = digest.hexdigest()
        proc = collie(n0, "vdi", "create", "scale", f"{mib}M")
        if proc.returncode != 0:
            raise BenchError(f"collie vdi create exited {proc.returncode}: {proc.stderr!r}")
        nodes = self.live
        m0, e0 = scrape(nodes), self.obs.latest_number()
        say(f"writing {mib} MiB through NBD on node 0")
        t0 = time.monotonic()
        run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, self.uri(n0, "scale")])
        write_s = time.monotonic() - t0
        src.unlink()
        say(f"written in {write_s:.1f}s; reading back through node 1")
        read_s, same = self.read_back(n1)
        delta = counter_delta(m0, scrape(nodes))
        if not same:
            raise BenchError("the data read back through node 1 differs from what was written")
        busy = rss_figures(nodes)
        # an idle sheep gives malloc's cache back (sheep.daemon.malloc.trim_when_idle):
        # resident memory once the I/O is over, polled up to 30 s
        t0 = time.monotonic()
        while True:
            idle = rss_figures(nodes)
            if (idle["rss_mib_max"] or 0) < 50 or time.monotonic() - t0 > 30:
                break
            time.sleep(1)
        rested = {f"{k.replace('rss_mib', 'rss_idle_mib')}": v for k, v in idle.items()}
        return {"data_mib": mib, "write_mib_per_s": round(mib / write_s, 1),
                "read_mib_per_s": round(mib / read_s, 1), "read_back_identical": same,
                "unplanned_epochs": self.obs.latest_number() - e0,
                "sessions_lost": sessions_lost(delta),
                "fencing_events": int(delta[("sheep_fencing_events_total", "")]),
                **busy, **rested, "rss_idle_after_s": round(time.monotonic() - t0, 1)}

    def uri(self, node, name: str) -> str:
        return f"nbd://127.0.0.1:{node.nbd_port}/{name}"

    def unlocked(self, name: str) -> None:
        """Until no sheep holds VDI ``name``'s lock: a client's disconnect releases it a
        moment after the client exited, and the next attach through another node waits."""
        n = next(s for s in self.live)
        wait(lambda: not any(lk["name"] == name for lk in api(n, "/locks")["locks"]),
             *self.timeout(f"VDI {name!r} to be unlocked"))

    def read_back(self, node) -> tuple[float, bool]:
        """Seconds to read the whole VDI through ``node``, and whether it is what was written."""
        self.unlocked("scale")
        out = self.base / "readback.raw"
        t0 = time.monotonic()
        run(["qemu-img", "convert", "-f", "raw", "-O", "raw", self.uri(node, "scale"), out])
        read_s = time.monotonic() - t0
        digest = hashlib.sha256()
        with open(out, "rb") as f:
            while chunk := f.read(8 * MiB):
                digest.update(chunk)
        out.unlink()
        self.unlocked("scale")
        return read_s, digest.hexdigest() == self.data_sha

    # -- kill and rejoin -------------------------------------------------------------------
    def victims(self) -> list:
        """KILL sheep of different zones (while there are enough zones), never node 0 or 1
        (the clients' gateways) nor the leader, and never all the replicas of one object:
        a loss beyond the copies is no test of recovery.  Checked with the placement of the
        newest epoch (`coordinator.ring`) over every object of every VDI."""
        leader = self.obs.leader()
        pool = [s for s in reversed(self.c.sheep[2:]) if s.pid is not None and s.node_id != leader]
        held = self.replica_sets()
        rng = random.Random(15)
        by_zone: dict[str, list] = {}
        for s in pool:
            by_zone.setdefault(s.zone, []).append(s)
        for attempt in range(4000):
            if attempt < 2000 and len(by_zone) >= self.args.kill:   # one per zone
                chosen = [rng.choice(by_zone[z])
                          for z in rng.sample(sorted(by_zone), self.args.kill)]
            else:
                chosen = rng.sample(pool, min(self.args.kill, len(pool)))
            ids = {s.node_id for s in chosen}
            if len(chosen) == self.args.kill and not any(r <= ids for r in held):
                return sorted(chosen, key=lambda s: s.index)
        raise BenchError(f"cannot pick {self.args.kill} sheep to kill that leave a copy of "
                         "every object")

    def replica_sets(self) -> list[set[str]]:
        """The node ids holding each object of each VDI in the newest epoch."""
        latest = self.obs.latest()
        ring = Ring([Member.from_dict(m) for m in latest["members"]])
        n0 = self.c.sheep[0]
        object_size = 1 << api(n0, "/cluster")["format"]["block_size_shift"]
        out = []
        for e in api(n0, "/vdis")["vdis"]:
            oids = [objects.inode_oid(e["vid"])] + [
                objects.data_oid(e["vid"], i)
                for i in range(objects.nr_indexes(e["size"], object_size))]
            out += [{m.node_id for m in ring.replicas(oid, int(e["copies"]))} for oid in oids]
        return out

    def phase_kill(self) -> dict:
        self.killed = self.victims()
        survivors = [s for s in self.live if s not in self.killed]
        say(f"SIGKILL {', '.join(f'sheep{s.index} ({s.zone})' for s in self.killed)}")

        def act():
            for s in self.killed:          # all signals first: "at once"
                os.kill(s.pid, signal.SIGKILL)
            for s in self.killed:
                s.kill()                   # reap
        return self.churn("kill", act, survivors, self.c.sheep[1])

    def phase_rejoin(self) -> dict:
        say(f"restarting {len(self.killed)} sheep on their own dirs and ports")
        everyone = [s for s in self.c.sheep if s.pid is not None or s in self.killed]
        t0 = time.monotonic()
        return self.churn("rejoin", lambda: self.spawn(self.killed, t0), everyone,
                          self.killed[0])

    def churn(self, what: str, act, expect, reader) -> dict:
        """Do ``act`` (a membership change); measure until ``expect`` are the members, every
        one recovered, ``cluster check -e`` clean, and the data read back through ``reader``."""
        m0, e0 = scrape(self.live), self.obs.latest_number()
        wall0, t0 = time.time(), time.monotonic()
        act()
        st = wait(lambda: settled(self.obs, expect),
                  *self.timeout(f"recovery complete on all {len(expect)} nodes after the {what}"),
                  interval_s=0.5)
        recovered_s = time.monotonic() - t0
        say(f"{what}: recovered on every node after {recovered_s:.1f}s; cluster check -e")
        delta = counter_delta(m0, scrape(expect))    # before the check's own requests
        check, checks = None, 0

        def clean():
            nonlocal check, checks
            checks += 1
            proc = collie(self.c.sheep[1], "cluster", "check", "-e", "--json")
            try:
                check = json.loads(proc.stdout)
            except ValueError:
                check = {"error": proc.stderr.decode(errors="replace").strip()}
            return proc.returncode == 0
        try:
            wait(clean, *self.timeout(f"'collie cluster check -e' to exit 0 after the {what}"),
                 interval_s=1)
        except BenchError as exc:
            raise BenchError(f"{exc} (last answer: {json.dumps(check)[:1000]})") from None
        check_s = time.monotonic() - t0
        made = epochs_since(self.obs, e0, wall0)
        sums = recovery_sums(st)
        reqs = by_op(delta, "sheep_peer_requests_total")
        n_epochs = max(1, len(made))
        out = {"nodes": len(expect), "epochs_made": len(made), "epochs": made,
               "recovered_s": round(recovered_s, 2), "check_clean_s": round(check_s, 2),
               "check_runs": checks, "check_objects": (check or {}).get("objects"),
               "check_problems": (check or {}).get("problems"),
               "sessions_lost": sessions_lost(delta),
               "fencing_events": int(delta[("sheep_fencing_events_total", "")]),
               "peer_requests_by_op": reqs,
               "peer_errors_by_op": by_op(delta, "sheep_peer_errors_total"),
               "peer_requests_per_epoch": round(sum(reqs.values()) / n_epochs),
               "recovery_requests_per_epoch": round(sum(reqs.get(op, 0) for op in RECOVERY_OPS)
                                                    / n_epochs),
               "list_all_requests_per_epoch": round(reqs.get("list_all", 0) / n_epochs),
               "pulled_bytes_all_passes": int(delta[("sheep_recovery_pulled_bytes_total", "")]),
               "last_pass": sums,
               "last_pass_per_node_asked_max": max(
                   (s["recovery"].get("asked") or 0 for s in st.values()), default=None)
               if sums["asked"] is not None else None}
        if self.data_sha is not None:
            say(f"{what}: reading the data back through sheep{reader.index}")
            read_s, same = self.read_back(reader)
            out.update(read_back_via=f"sheep{reader.index}", read_back_identical=same,
                       read_mib_per_s=round(self.args.data_mib / read_s, 1))
            if not same:
                raise BenchError(f"the data read back after the {what} differs")
        return out

    # -- join storm ------------------------------------------------------------------------
    def phase_storm(self) -> dict:
        n0 = self.c.sheep[0]
        first = len(self.c.sheep)
        new = [self.c.add_node(zone=self.zone(i)) for i in range(first, first + self.args.storm)]
        proc = collie(n0, "vdi", "create", "storm", "256M")
        if proc.returncode != 0:
            raise BenchError(f"collie vdi create exited {proc.returncode}: {proc.stderr!r}")
        fio_out = self.base / "storm-fio.json"
        self.fio = subprocess.Popen(
            ["fio", "--name=storm", "--ioengine=nbd", f"--uri={self.uri(n0, 'storm')}",
             "--rw=randrw", "--bs=64k", "--iodepth=4", "--size=256M", "--time_based",
             "--runtime=3600", "--continue_on_error=all", "--output-format=json",
             f"--output={fio_out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait(lambda: self.fio.poll() is None and
             any(lk["name"] == "storm" for lk in api(n0, "/locks")["locks"]),
             *self.timeout("fio to attach VDI 'storm' through node 0"))
        m0, e0 = scrape(self.live), self.obs.latest_number()
        wall0, t0 = time.time(), time.monotonic()
        say(f"join storm: {len(new)} sheep at once, fio on node 0")
        joined_s = self.spawn(new, t0)
        wait(lambda: self.fio.poll() is None and settled(self.obs, self.live),
             *self.timeout(f"recovery complete on all {len(self.live)} nodes after the storm "
                           "(or fio exited)"), interval_s=0.5)
        recovered_s = time.monotonic() - t0
        fio = self.stop_fio(fio_out)
        delta = counter_delta(m0, scrape(self.live))
        made = epochs_since(self.obs, e0, wall0)
        reqs = by_op(delta, "sheep_peer_requests_total")
        return {"nodes": len(self.live), "joining": len(new), "joined_s": round(joined_s, 2),
                "recovered_s": round(recovered_s, 2), "epochs_made": len(made), "epochs": made,
                "sessions_lost": sessions_lost(delta), **fio,
                "peer_requests_by_op": reqs,
                "recovery_requests_per_epoch": round(sum(reqs.get(op, 0) for op in RECOVERY_OPS)
                                                     / max(1, len(made))),
                "list_all_requests_per_epoch": round(reqs.get("list_all", 0) / max(1, len(made)))}

    def stop_fio(self, out: Path) -> dict:
        proc, self.fio = self.fio, None
        proc.send_signal(signal.SIGINT)       # fio ends its jobs and writes its report
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError("fio did not stop on SIGINT")
        try:
            text = out.read_text()        # "fio: terminating on signal 2" comes first
            job = json.loads(text[text.index("{"):])["jobs"][0]
        except (OSError, ValueError, KeyError, IndexError):
            raise BenchError(f"fio wrote no report (rc {proc.returncode}): "
                             f"{proc.stderr.read().decode(errors='replace')[-500:]}") from None
        ios = job["read"]["total_ios"] + job["write"]["total_ios"]
        return {"client_ios": ios, "client_errors": job.get("total_err", 0),
                "client_error": job.get("error", 0),
                "client_mib_per_s": round((job["read"]["bw_bytes"] + job["write"]["bw_bytes"])
                                          / MiB, 1)}

    # -- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything this run started, whatever state it is in."""
        if self.fio is not None and self.fio.poll() is None:
            self.fio.kill()
            self.fio.wait()
        if self.obs is not None:
            try:
                self.obs.close()
            except Exception:     # noqa: BLE001 - teardown goes on whatever the client does
                pass
        live = [s for s in self.c.sheep if s.running()]
        if live:
            say(f"stopping {len(live)} sheep (collie cluster shutdown)")
            try:
                collie(live[0], "cluster", "shutdown", timeout_s=30)
                deadline = time.monotonic() + 30
                while any(s.running() for s in live) and time.monotonic() < deadline:
                    time.sleep(0.2)
            except (subprocess.TimeoutExpired, OSError):
                pass
        list(POOL.map(lambda s: s.stop(10), self.c.sheep))   # SIGTERM, then SIGKILL
        self.c.zk.stop()
        (self.c.base / STATE_FILE).unlink(missing_ok=True)

    def log_summary(self) -> dict:
        """WARNING and ERROR lines over every sheep log; the commonest messages (digits as #)."""
        counts, messages = Counter(), Counter()
        for s in self.c.sheep:
            try:
                text = s.log_path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                parts = line.split(" ", 3)
                if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                    counts[parts[2]] += 1
                    messages[re.sub(r"[0-9a-f]{6,}|\d+", "#", parts[3])[:140]] += 1
        return {"warnings": counts["WARNING"], "errors": counts["ERROR"] + counts["CRITICAL"],
                "top": [f"{n}x {m}" for m, n in messages.most_common(8)]}


# -- output --------------------------------------------------------------------------------

TARGETS = [  # phase, figure, limit, "lt" (below) or "le" or "eq"
    ("start", "rss_mib_max", 50, "lt"), ("start", "formatted_s", 60, "le"),
    ("idle", "sheep_cpu_pct_of_one_core", 10, "lt"), ("idle", "sessions_lost", 0, "eq"),
    ("idle", "unplanned_epochs", 0, "eq"), ("io", "sessions_lost", 0, "eq"),
    ("io", "unplanned_epochs", 0, "eq"), ("io", "rss_idle_mib_max", 50, "lt"),
    ("kill", "epochs_made", 2, "le"), ("kill", "check_clean_s", 30, "le"),
    ("rejoin", "epochs_made", 2, "le"), ("rejoin", "check_clean_s", 30, "le"),
    ("storm", "client_errors", 0, "eq")]


def table(report: dict) -> str:
    lines = [f"scale bench: {report['config']}"]
    for phase, figures in report["phases"].items():
        lines.append(f"\n== {phase}")
        for key, value in figures.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = "; ".join(" ".join(f"{k}={v}" for k, v in d.items()) for d in value)
            elif isinstance(value, (dict, list)):
                value = json.dumps(value)
            lines.append(f"  {key:34} {value}")
    lines.append("\n== targets")
    for phase, key, limit, how in TARGETS:
        value = report["phases"].get(phase, {}).get(key)
        if value is None:
            continue
        ok = {"lt": value < limit, "le": value <= limit, "eq": value == limit}[how]
        sign = {"lt": "<", "le": "<=", "eq": "=="}[how]
        lines.append(f"  {phase + '.' + key:40} {value!s:>8}  (target {sign} {limit})  "
                     f"{'ok' if ok else 'MISSED'}")
    log = report.get("logs") or {}
    lines.append(f"\n== sheep logs: {log.get('warnings')} warnings, {log.get('errors')} errors")
    lines += [f"  {m}" for m in log.get("top", [])]
    if report.get("error"):
        lines.append(f"\nFAILED in phase {report['failed_phase']}: {report['error']}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--data-mib", type=int, default=400)
    ap.add_argument("--storm", type=int, default=20, help="sheep joining at once in the storm")
    ap.add_argument("--storm-mode", choices=("grow", "split"), default="grow")
    ap.add_argument("--kill", type=int, default=4, help="sheep SIGKILLed at once")
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--session-timeout", type=float, default=10.0,
                    help="the sheep's ZooKeeper session timeout (the daemon's default: 10)")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="limit of every wait")
    ap.add_argument("--log-level", default="INFO", help="the sheep's log level")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, the table on stderr")
    ap.add_argument("--keep", action="store_true", help="keep the base directory (logs)")
    for phase in ("idle", "io", "kill", "rejoin", "storm"):
        ap.add_argument(f"--no-{phase}", action="store_true", help=f"skip the {phase} phase")
    args = ap.parse_args(argv)
    if args.nodes < 3 or args.kill < 0:
        ap.error("--nodes must be at least 3")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt          # the same teardown as Ctrl-C
    signal.signal(signal.SIGTERM, on_sigterm)
    base = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    bench = Bench(args, base)
    phases = [("start", bench.phase_start)]
    if bench.split_storm():
        phases.append(("storm", bench.phase_storm))
    phases += [(p, getattr(bench, f"phase_{p}")) for p in ("idle", "io", "kill", "rejoin")
               if not getattr(args, f"no_{p}")
               and not (p == "rejoin" and args.no_kill)]
    if not args.no_storm and args.nodes > args.storm > 0 and not bench.split_storm():
        phases.append(("storm", bench.phase_storm))
    report = {"config": {k: v for k, v in vars(args).items() if not k.startswith("no_")}
              | {"base": str(base), "cpus": os.cpu_count()}, "phases": {}}
    current = None
    try:
        for current, fn in phases:
            say(f"phase {current}")
            report["phases"][current] = fn()
    except (BenchError, subprocess.TimeoutExpired) as exc:
        report.update(error=str(exc), failed_phase=current)
    except KeyboardInterrupt:
        report.update(error="interrupted", failed_phase=current)
    finally:
        bench.stop()
        report["logs"] = bench.log_summary()
    failed = "error" in report
    text = table(report)
    print(text, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, indent=2))
    if args.keep or failed:
        say(f"logs kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
