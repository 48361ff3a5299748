"""The local launcher: one command brings a cluster up, another stops all of it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import requests

from sheepdog_local.zookeeper import free_port, pid_alive
from tests.integration.fixtures_cluster import poll


def free_block(count: int) -> int:
    """A base port such that base..base+count-1 are all free right now."""
    for _ in range(50):
        ports = [free_port() for _ in range(count)]   # handed out in turn
        if ports == list(range(ports[0], ports[0] + count)):
            return ports[0]
    raise RuntimeError("no block of free ports")


def launcher(*args, check=True, env=None):
    proc = subprocess.run([sys.executable, "-m", "sheepdog_local.launcher", *args],
                          capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_up_serves_a_demo_vdi_and_down_leaves_no_process(tmp_path):
    base = free_block(10)
    d = tmp_path / "local"
    home = tmp_path / "home"            # collie's per-user token file goes here
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHEEP_ADMIN_TOKEN")}
    env.update(HOME=str(home), XDG_CONFIG_HOME="")
    args = ["--dir", str(d), "--nodes", "2", "--zk-port", str(base), "--admin-base",
            str(base + 1), "--peer-base", str(base + 4), "--nbd-base", str(base + 7),
            "--vdi", "demo", "--vdi-size", "64M"]
    try:
        # one command: ZooKeeper, two sheep, format, a demo VDI, and how to reach it
        out = launcher("up", *args, env=env).stdout
        assert f"nbd://127.0.0.1:{base + 7}/demo" in out
        # the admin API wants the token; collie finds the copy `up` left for this user
        url = f"http://127.0.0.1:{base + 1}/vdis"
        assert requests.get(url, timeout=10).status_code == 401
        listed = subprocess.run([sys.executable, "-m", "collie", "-p", str(base + 1), "--json",
                                 "vdi", "list"], capture_output=True, text=True, env=env,
                                timeout=60)
        assert listed.returncode == 0, listed.stderr
        vdis = json.loads(listed.stdout)["vdis"]
        assert [(v["name"], v["size"]) for v in vdis] == [("demo", 64 << 20)]
        assert (home / ".config" / "collie" / "token").read_text() == \
            (d / "keys" / "admin.token").read_text()
        state = json.loads((d / "cluster.json").read_text())
        pids = [s["pid"] for s in state["sheep"]] + [state["zk"]["pid"]]
        assert all(pid_alive(p) for p in pids)

        # a second `up` on the same dir refuses instead of starting another cluster
        again = launcher("up", *args, check=False, env=env)
        assert again.returncode == 1 and "already" in again.stderr
        assert "running" in launcher("status", "--dir", str(d)).stdout
    finally:
        # the other command stops everything the first one started
        launcher("down", "--dir", str(d), check=False, env=env)
    poll(lambda: not any(pid_alive(p) for p in pids), 20, "every launched process gone")
    assert not (d / "cluster.json").exists()
    assert not (home / ".config" / "collie" / "token").exists()   # this cluster's: removed
    assert launcher("down", "--dir", str(d), check=False, env=env).returncode == 1
