#!/usr/bin/env python3
"""NBD block benchmark: qemu-nbd on a raw file vs. sheep exports, same fio jobs, one run.

    python3 tests/bench/nbd_bench.py [--runtime S] [--size BYTES] [--targets a,b,c]
                                     [--workdir DIR] [--json FILE] [--markdown]

Targets, all started and stopped by this script:

* ``qemu-nbd``: ``qemu-nbd -f raw --cache=none -t -e 4`` serving a local raw file
  (the reference: one hop, the kernel's page cache bypassed);
* ``sheep-1x1``: a 1-node cluster formatted with copies 1, one VDI;
* ``sheep-3x3``: a 3-node cluster formatted with copies 3 (every write goes to
  three replicas on this same machine), one VDI, attached through node 0.

Each target's region (``--size``, default 256 MiB) is prefilled with 1 MiB
sequential writes first so that reads hit data, not holes.  Then every fio job
(``ioengine=nbd``, one connection each, ``--time_based`` with a 1 s ramp) runs
against every target: 4 KiB random read and write at queue depth 1 and 16,
1 MiB sequential read and write at queue depth 4.  The table gives each figure
and its ratio to qemu-nbd; latencies are fio's mean and 99th percentile; the CPU
microseconds per I/O of every server process (user + system from /proc/PID/stat,
over fio's measured window; for sheep ``gw`` is node 0, the gateway fio attaches
through, ``r1``/``r2`` its remote replicas); and the load average.

Needs fio (with the nbd engine), qemu-nbd, nbdinfo, and a ZooKeeper install
(see compose/zookeeper.py).  Runs from the repository root (or anywhere with the
package installed).  No gevent: plain processes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sheepdog_local.local_cluster import LocalCluster  # noqa: E402
from sheepdog_local.zookeeper import free_port  # noqa: E402

MiB = 1 << 20

# name, fio rw, block size, iodepth
JOBS = [
    ("seqwrite_1m_qd4", "write", "1M", 4),
    ("seqread_1m_qd4", "read", "1M", 4),
    ("randwrite_4k_qd1", "randwrite", "4k", 1),
    ("randwrite_4k_qd16", "randwrite", "4k", 16),
    ("randread_4k_qd1", "randread", "4k", 1),
    ("randread_4k_qd16", "randread", "4k", 16),
]


@dataclass
class Result:
    value: float            # IOPS (4k jobs) or MiB/s (1M jobs)
    unit: str
    lat_mean_us: float
    lat_p99_us: float | None
    ios: int = 0            # I/Os completed in the measured window
    cpu_us_per_io: dict = field(default_factory=dict)   # process name -> CPU us per I/O
    load: float = 0.0       # 1-minute load average at the end of the job


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Target:
    name: str
    uri: str
    stop: callable
    before_job: callable = lambda: None        # e.g. wait until the VDI lock is free
    pids: callable = lambda: {}                # process name -> pid, for CPU per I/O
    results: dict[str, Result] = field(default_factory=dict)
    prefill_s: float = 0.0


def run_fio(uri: str, name: str, rw: str, bs: str, qd: int, size: int, runtime_s: float | None,
            outdir: Path, pids: dict | None = None) -> Result:
    out = outdir / f"{name}.json"
    cmd = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
           f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", "--norandommap", "--randrepeat=0",
           "--lat_percentiles=1", "--output-format=json", f"--output={out}"]
    if runtime_s:
        cmd += ["--time_based", f"--runtime={runtime_s}", "--ramp_time=1"]
    pids = pids or {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if runtime_s:
        time.sleep(1.0)             # the ramp: fio does not count it, neither do we
    cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
    stdout, stderr = proc.communicate()
    cpu1 = {n: cpu_seconds(pid) for n, pid in pids.items()}
    if proc.returncode != 0:
        raise RuntimeError(f"fio {name} on {uri} failed: {stdout[-500:]} {stderr[-500:]}")
    text = out.read_text()
    job = json.loads(text[text.index("{"):])["jobs"][0]    # fio may print a banner first
    if job.get("error"):
        raise RuntimeError(f"fio {name} on {uri}: job error {job['error']}")
    side = job["write"] if "write" in rw else job["read"]
    lat = side.get("lat_ns", {})
    p99 = lat.get("percentile", {}).get("99.000000")
    if bs == "4k":
        value, unit = side["iops"], "IOPS"
    else:
        value, unit = side["bw_bytes"] / MiB, "MiB/s"
    ios = int(side.get("total_ios") or 0)
    cpu = {n: (cpu1[n] - cpu0[n]) * 1e6 / ios for n in pids} if ios else {}
    return Result(value, unit, lat.get("mean", 0) / 1000, p99 / 1000 if p99 else None, ios, cpu,
                  os.getloadavg()[0])


def wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (requests.RequestException, OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


# -- targets ------------------------------------------------------------------------------

def start_qemu_nbd(workdir: Path, size: int) -> Target:
    image = workdir / "qemu-nbd.raw"
    with open(image, "wb") as f:
        f.truncate(size)
    port = free_port()
    log = open(workdir / "qemu-nbd.log", "wb")
    proc = subprocess.Popen(["qemu-nbd", "-f", "raw", "--cache=none", "-t", "-e", "4",
                             "-b", "127.0.0.1", "-p", str(port), "-x", "bench", str(image)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    uri = f"nbd://127.0.0.1:{port}/bench"

    def stop():
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    try:
        wait(lambda: proc.poll() is None and subprocess.run(
            ["nbdinfo", "--size", uri], capture_output=True).returncode == 0, 15, "qemu-nbd")
    except BaseException:
        stop()
        raise
    return Target("qemu-nbd", uri, stop, pids=lambda: {"qemu-nbd": proc.pid})


def start_sheep(workdir: Path, name: str, nodes: int, copies: int, size: int) -> Target:
    cluster = LocalCluster(workdir / name, nodes, cluster=f"bench{os.getpid()}{name}",
                           fast_zk=True)
    try:
        cluster.start()
        node = cluster.sheep[0]
        requests.post(node.admin_url + "/cluster/format", json={"copies": copies},
                      headers=node.auth, timeout=30).raise_for_status()
        wait(lambda: all(requests.get(s.admin_url + "/node", headers=s.auth, timeout=5).json()["epoch"] >= 1
                         for s in cluster.sheep), 30, f"{name} epoch 1")
        requests.post(node.admin_url + "/vdis", json={"name": "bench", "size": size},
                      headers=node.auth, timeout=30).raise_for_status()
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        cluster.stop()
        raise

    def unlocked() -> None:
        # a finished fio's disconnect releases the VDI lock a moment later
        wait(lambda: not requests.get(node.admin_url + "/locks", headers=node.auth, timeout=5).json()["locks"],
             15, f"{name}: VDI lock released")

    def pids() -> dict:
        # node 0 is the gateway (fio attaches through it); the others are its remote replicas
        return {("gw" if i == 0 else f"r{i}"): s.pid for i, s in enumerate(cluster.sheep)}

    return Target(name, f"nbd://127.0.0.1:{node.nbd_port}/bench", cluster.stop, unlocked,
                  pids=pids)


# -- report -------------------------------------------------------------------------------

def fmt(r: Result | None) -> str:
    if r is None:
        return "-"
    return f"{r.value:,.0f}" if r.unit == "IOPS" else f"{r.value:,.1f}"


def fmt_lat(r: Result | None) -> str:
    if r is None:
        return "-"
    p99 = f"{r.lat_p99_us:,.0f}" if r.lat_p99_us is not None else "-"
    return f"{r.lat_mean_us:,.0f} / {p99}"


def fmt_cpu(r: Result | None) -> str:
    if r is None or not r.cpu_us_per_io:
        return "-"
    return " / ".join(f"{n} {v:,.0f}" for n, v in r.cpu_us_per_io.items())


def table(targets: list[Target], markdown: bool) -> str:
    ref = next((t for t in targets if t.name == "qemu-nbd"), None)
    header = ["job", "unit"]
    for t in targets:
        header.append(t.name)
        if ref is not None and t is not ref:
            header.append("ratio")
    header += [f"{t.name} lat us (mean / p99)" for t in targets]
    header += [f"{t.name} CPU us per I/O" for t in targets]
    header.append("load")
    rows = []
    for name, _rw, _bs, _qd in JOBS:
        any_r = next((t.results[name] for t in targets if name in t.results), None)
        row = [name, any_r.unit if any_r else "-"]
        for t in targets:
            r = t.results.get(name)
            row.append(fmt(r))
            if ref is not None and t is not ref:
                base = ref.results.get(name)
                row.append(f"{r.value / base.value:.2f}" if r and base and base.value else "-")
        row += [fmt_lat(t.results.get(name)) for t in targets]
        row += [fmt_cpu(t.results.get(name)) for t in targets]
        loads = [t.results[name].load for t in targets if name in t.results]
        row.append(f"{max(loads):.1f}" if loads else "-")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                               for i, (x, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", type=float, default=6, help="seconds per fio job (plus 1 s ramp)")
    ap.add_argument("--size", type=int, default=256 * MiB, help="region in bytes (default 256 MiB)")
    ap.add_argument("--targets", default="qemu-nbd,sheep-1x1,sheep-3x3")
    ap.add_argument("--jobs", default=",".join(j[0] for j in JOBS), help="comma list of jobs")
    ap.add_argument("--workdir", help="where images and stores go (default: a temp dir, removed)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args(argv)

    for tool in ("fio", "qemu-nbd", "nbdinfo"):
        if not shutil.which(tool):
            print(f"{tool} is not installed", file=sys.stderr)
            return 3
    wanted = set(args.jobs.split(","))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="nbd-bench.", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    starters = {
        "qemu-nbd": lambda: start_qemu_nbd(workdir, args.size),
        "sheep-1x1": lambda: start_sheep(workdir, "sheep-1x1", 1, 1, args.size),
        "sheep-3x3": lambda: start_sheep(workdir, "sheep-3x3", 3, 3, args.size),
    }
    print(f"# fio {subprocess.run(['fio', '--version'], capture_output=True, text=True).stdout.strip()}"
          f", {os.cpu_count()} CPUs, region {args.size // MiB} MiB, {args.runtime:g} s per job"
          f" (+1 s ramp), workdir {workdir}", flush=True)
    targets: list[Target] = []
    try:
        for tname in args.targets.split(","):
            # one target at a time: the others must not compete for the 2 CPUs
            target = starters[tname]()
            targets.append(target)
            try:
                t0 = time.monotonic()
                target.before_job()
                run_fio(target.uri, "prefill", "write", "1M", 8, args.size, None, workdir)
                target.prefill_s = time.monotonic() - t0
                print(f"# {tname}: {target.uri}, prefill {target.prefill_s:.1f} s, load average "
                      f"{os.getloadavg()[0]:.1f} (other work on the machine skews every figure)",
                      flush=True)
                for name, rw, bs, qd in JOBS:
                    if name not in wanted:
                        continue
                    target.before_job()
                    r = run_fio(target.uri, f"{tname}-{name}", rw, bs, qd, args.size,
                                args.runtime, workdir, target.pids())
                    target.results[name] = r
                    print(f"#   {name}: {fmt(r)} {r.unit}, lat {fmt_lat(r)} us, CPU us per I/O "
                          f"{fmt_cpu(r)}, load {r.load:.1f}", flush=True)
            finally:
                target.stop()
            print(f"# {tname} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(targets, args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {t.name: {k: vars(v) for k, v in t.results.items()} for t in targets}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
