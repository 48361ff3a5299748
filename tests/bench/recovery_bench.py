"""Recovery benchmark (a script, not a test): time and MiB/s to restore full redundancy of
DATA (default 1 GiB) after a node is lost, and client write throughput during that recovery
against the throughput without it.

    python3 tests/bench/recovery_bench.py [--nodes 4] [--copies 2] [--data-mib 1024]

Starts a private ZooKeeper and NODES sheep (LocalCluster), writes DATA into one VDI through
NBD (qemu-io, patterned, so nothing is sparse), measures a client baseline with
``qemu-img bench`` on a second VDI, SIGKILLs one node, runs the same client bench while the
survivors recover, and reports everything as JSON.  Everything it starts is stopped.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sheepdog_local.local_cluster import LocalCluster  # noqa: E402

MiB = 1 << 20


def api(node, path, method="GET", **kw):
    r = requests.request(method, node.admin_url + path, timeout=120, headers=node.auth, **kw)
    r.raise_for_status()
    return r.json()


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def client_bench(node, name: str, mib: int) -> float:
    """MiB/s of 1 MiB writes at queue depth 4 through NBD (qemu-img bench)."""
    uri = f"nbd://127.0.0.1:{node.nbd_port}/{name}"
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "bench", "-f", "raw", "-w", "-t", "none", "-s", "1M",
                    "-c", str(mib), "-d", "4", uri], check=True, capture_output=True)
    return mib / (time.monotonic() - t0)


def recovered(nodes) -> bool:
    states = [api(n, "/node") for n in nodes]
    return len({s["epoch"] for s in states}) == 1 and all(
        s["recovery"]["state"] == "complete" and s["recovery"]["epoch"] == s["epoch"]
        for s in states)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--data-mib", type=int, default=1024)
    ap.add_argument("--client-mib", type=int, default=256)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="recovery-bench-"))
    c = LocalCluster(base, args.nodes, cluster="bench", fast_zk=True,
                     sheep_args=["--session-timeout", "4", "--log-level", "WARNING"])
    try:
        c.start()
        n0 = c.sheep[0]
        api(n0, "/cluster/format", "POST", json={"copies": args.copies})
        wait(lambda: all(api(n, "/node")["epoch"] >= 1 for n in c.sheep), 30, "epoch 1")
        api(n0, "/vdis", "POST", json={"name": "data", "size": args.data_mib * MiB})
        api(n0, "/vdis", "POST", json={"name": "client", "size": args.client_mib * MiB})
        t0 = time.monotonic()
        subprocess.run(["qemu-io", "-f", "raw", f"nbd://127.0.0.1:{n0.nbd_port}/data", "-c",
                        f"write -P 0x5a 0 {args.data_mib}M"], check=True, capture_output=True)
        fill_s = time.monotonic() - t0
        wait(lambda: recovered(c.sheep), 60, "initial recovery")
        client_bench(n0, "client", args.client_mib)   # allocate: every later bench overwrites
        baseline = client_bench(n0, "client", args.client_mib)

        # lose one node (not the client's gateway)
        victim = c.sheep[-1]
        survivors = c.sheep[:-1]
        epoch = api(n0, "/node")["epoch"]
        killed_at = time.monotonic()
        victim.kill()
        wait(lambda: all(api(n, "/node")["epoch"] > epoch for n in survivors), 30, "new epoch")
        epoch_at = time.monotonic()
        during = client_bench(n0, "client", args.client_mib)
        bench_end = time.monotonic()
        wait(lambda: recovered(survivors), 600, "recovery")
        done_at = time.monotonic()
        progress = [api(n, "/node")["recovery"] for n in survivors]
        pulled = sum(p["bytes"] for p in progress)
        rec_s = max(p["finished"] for p in progress) - min(p["started"] for p in progress)
        # client throughput again, after recovery, for comparison
        after = client_bench(n0, "client", args.client_mib)
        check = api(n0, "/cluster/check", "POST", json={"repair": False})
        report = {
            "nodes": args.nodes, "copies": args.copies, "data_mib": args.data_mib,
            "fill_mib_per_s": round(args.data_mib / fill_s, 1),
            "detect_s": round(epoch_at - killed_at, 2),
            "recovery_s": round(rec_s, 2),
            "kill_to_full_redundancy_s": round(done_at - killed_at, 2),
            "pulled_mib": round(pulled / MiB, 1),
            "recovery_mib_per_s": round(pulled / MiB / rec_s, 1) if rec_s > 0 else None,
            "client_mib_per_s_baseline": round(baseline, 1),
            "client_mib_per_s_during_recovery": round(during, 1),
            "client_bench_overlapped_recovery": bench_end < done_at,
            "client_mib_per_s_after": round(after, 1),
            "check_problems_after": check["problems"],
            "check_objects": check["objects"],
        }
        print(json.dumps(report, indent=2))
        return 0
    finally:
        c.stop()
        subprocess.run(["rm", "-rf", str(base)])


if __name__ == "__main__":
    sys.exit(main())
