"""What the scale bench observes in a running cluster: admin API calls, /metrics scrapes,
/proc figures (CPU ticks, resident memory), epochs from ZooKeeper, recovery states.

Helpers of `tests/bench/scale_bench.py` (a script, not a test); nothing here starts or stops
a process except `collie` and `run`.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from kazoo.client import KazooClient

from coordinator.layout import Layout, decode, epoch_numbers

MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
COLLIE = shutil.which("collie")
POOL = ThreadPoolExecutor(16)         # concurrent admin requests: a poll of 100 nodes is quick
START = time.monotonic()
COUNTERS = ("sheep_zk_session_losses_total", "sheep_fencing_events_total",
            "sheep_peer_requests_total", "sheep_peer_errors_total",
            "sheep_recovery_pulled_objects_total", "sheep_recovery_pulled_bytes_total")
LIST_FIELDS = ("asked", "listed", "listed_bytes")   # added by the scale work; null if absent
RECOVERY_OPS = ("list_all", "fetch_any", "version_any")   # the peer ops recovery adds
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
OP_LABEL = re.compile(r'\bop="([^"]*)"')


class BenchError(Exception):
    """A phase could not go on (timed out, a client failed); the message says what."""


def say(msg: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def wait(pred, timeout_s: float, what: str, interval_s: float = 0.25):
    """``pred()`` until truthy (returned); BenchError "timed out waiting for WHAT"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = pred()
            if value:
                return value
        except (requests.RequestException, OSError, KeyError, ValueError, TypeError):
            pass
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def api(node, path: str, method: str = "GET", timeout_s: float = 30, **kw):
    r = requests.request(method, node.admin_url + path, timeout=timeout_s, headers=node.auth, **kw)
    r.raise_for_status()
    return r.json()


def each(fn, nodes) -> list:
    """``fn(node)`` for every node, concurrently; None where it raised."""
    def safe(n):
        try:
            return fn(n)
        except (requests.RequestException, OSError, ValueError):
            return None
    return list(POOL.map(safe, nodes))


def collie(node, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    cmd = ([COLLIE] if COLLIE else [sys.executable, "-m", "collie"]) + \
          ["-p", str(node.admin_port), *args]
    env = {**os.environ, "SHEEP_ADMIN_TOKEN_FILE": str(node.token_file)}
    return subprocess.run(cmd, capture_output=True, timeout=timeout_s, env=env)


def run(cmd: list, timeout_s: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return proc


# -- ZooKeeper, read as an anonymous client (the cluster's znodes are world-readable) ---------

class Observer:
    def __init__(self, hosts: str, cluster: str) -> None:
        self.layout = Layout(cluster)
        self.zk = KazooClient(hosts=hosts, timeout=30)
        self.zk.start(timeout=30)

    def members(self) -> set[str]:
        if not self.zk.exists(self.layout.members):
            return set()
        return set(self.zk.get_children(self.layout.members))

    def epochs(self) -> list[int]:
        if not self.zk.exists(self.layout.epochs):
            return []
        return epoch_numbers(self.zk.get_children(self.layout.epochs))

    def epoch(self, n: int) -> dict:
        return decode(self.zk.get(self.layout.epoch(n))[0])

    def latest(self) -> dict | None:
        nums = self.epochs()
        return self.epoch(nums[-1]) if nums else None

    def latest_number(self) -> int:
        nums = self.epochs()
        return nums[-1] if nums else 0

    def leader(self) -> str | None:
        contenders = self.zk.Election(self.layout.leader).contenders()
        return contenders[0] if contenders else None

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()


# -- processes: CPU and memory from /proc --------------------------------------------------

def cpu_ticks(pid: int | None) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return 0
    return int(fields[11]) + int(fields[12])      # utime, stime (fields 14 and 15)


def rss_mib(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return None


def rss_figures(nodes) -> dict:
    """min/median/max VmRSS over ``nodes`` and the three largest (which sheep they are)."""
    found = sorted(((v, s.index) for s in nodes for v in [rss_mib(s.pid)] if v is not None),
                   reverse=True)
    if not found:
        return {"rss_mib_min": None, "rss_mib_median": None, "rss_mib_max": None}
    values = [v for v, _ in found]
    return {"rss_mib_min": round(values[-1], 1),
            "rss_mib_median": round(statistics.median(values), 1),
            "rss_mib_max": round(values[0], 1),
            "rss_mib_largest": [f"sheep{i}={v:.1f}" for v, i in found[:3]]}


# -- metrics and recovery state of the sheep ------------------------------------------------

def scrape(nodes) -> dict:
    """node id -> (pid, Counter of (series, op) -> value) for the counters in COUNTERS."""
    def one(s):
        text = requests.get(s.admin_url + "/metrics", timeout=30).text
        out = Counter()
        for line in text.splitlines():
            m = METRIC_LINE.match(line)
            if m and m.group(1) in COUNTERS:
                op = OP_LABEL.search(m.group(2) or "")
                out[(m.group(1), op.group(1) if op else "")] += float(m.group(3))
        return s.pid, out
    return {s.node_id: r for s, r in zip(nodes, each(one, nodes)) if r is not None}


def counter_delta(before: dict, after: dict) -> Counter:
    """What happened between two scrapes, over the nodes of ``after``; a node restarted in
    between (another pid) counts from zero."""
    total = Counter()
    for node_id, (pid, values) in after.items():
        old_pid, old = before.get(node_id, (None, Counter()))
        base = old if old_pid == pid else Counter()
        for key, v in values.items():
            total[key] += v - base.get(key, 0)
    return total


def sessions_lost(delta: Counter) -> int:
    return int(sum(v for (name, _), v in delta.items() if name == "sheep_zk_session_losses_total"))


def by_op(delta: Counter, series: str) -> dict:
    return {op: int(v) for (name, op), v in sorted(delta.items()) if name == series and v}


def states(nodes) -> dict:
    return {s.node_id: st for s, st in zip(nodes, each(lambda n: api(n, "/node", timeout_s=10),
                                                       nodes))}


def settled(obs: Observer, nodes):
    """The node states once the newest epoch's members are exactly ``nodes`` and every one
    of them has applied it and completed its recovery pass for it; else None."""
    latest = obs.latest()
    if latest is None or {m["node_id"] for m in latest["members"]} != {n.node_id for n in nodes}:
        return None
    st = states(nodes)
    ok = all(s is not None and s["epoch"] == latest["epoch"] and s["recovery"]
             and s["recovery"]["state"] == "complete" and s["recovery"]["epoch"] == latest["epoch"]
             for s in st.values())
    return st if ok else None


def recovery_sums(st: dict) -> dict:
    """Sums of the last pass's figures over the nodes; a field no node reports is null."""
    records = [s["recovery"] for s in st.values() if s and s.get("recovery")]
    out = {}
    for name in (*LIST_FIELDS, "pulled", "bytes"):
        present = [r[name] for r in records if r.get(name) is not None]
        out[name] = sum(present) if present else None
    return out


def epochs_since(obs: Observer, before: int, wall0: float) -> list[dict]:
    return [{"epoch": n, "members": len(e["members"]),
             "at_s": round(float(e.get("created") or 0) - wall0, 2)}
            for n in obs.epochs() if n > before for e in [obs.epoch(n)]]


# -- the bench -----------------------------------------------------------------------------
