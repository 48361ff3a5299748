"""A cluster of real `sheep` processes on loopback, with a private ZooKeeper.

Used by the `sheepdog-local` launcher and by the integration tests.  Every
process is started in its own session and recorded (pid, ports, dirs) in
``BASE/cluster.json`` so that another invocation (``sheepdog-local down``) can
stop exactly what this one started.  Plain subprocess: no gevent here.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from sheepdog_local.zookeeper import ZooKeeperServer, free_port, pid_alive

log = logging.getLogger(__name__)

STATE_FILE = "cluster.json"


@dataclass
class SheepProcess:
    """One `sheep` daemon process."""

    index: int
    dir: Path
    zk_hosts: str
    cluster: str
    port: int
    admin_port: int
    nbd_port: int
    zone: str = ""
    addr: str = "127.0.0.1"
    keys_dir: Path | None = None  # cluster.secret and admin.token (default: next to the store)
    extra_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None   # default: the store dir's parent (set it when that is a mount)
    pid: int | None = None
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return (self.log_dir or self.dir.parent) / f"sheep{self.index}.log"

    @property
    def node_id(self) -> str:
        return f"{self.addr}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.addr}:{self.admin_port}"

    @property
    def secret_file(self) -> Path:
        return (self.keys_dir or self.dir.parent) / "cluster.secret"

    @property
    def token_file(self) -> Path:
        return (self.keys_dir or self.dir.parent) / "admin.token"

    @property
    def token(self) -> str | None:
        """The cluster's admin token as this sheep wrote it down (None: not yet)."""
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def auth(self) -> dict:
        """The admin API's request headers: ``Authorization: Bearer <token>``."""
        token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "sheep.daemon", "--dir", str(self.dir), "--zk", self.zk_hosts,
               "--cluster", self.cluster, "--addr", self.addr, "--port", str(self.port),
               "--admin-port", str(self.admin_port), "--nbd-port", str(self.nbd_port),
               "--secret-file", str(self.secret_file), "--admin-token-file", str(self.token_file)]
        if self.zone:
            cmd += ["--zone", self.zone]
        return cmd + list(self.extra_args)

    def start(self) -> "SheepProcess":
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        logf.close()
        self.pid = self._proc.pid
        return self

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Until the admin API answers; RuntimeError with the log tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                break
            try:
                if requests.get(self.admin_url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sheep {self.index} not ready on {self.admin_url}; "
                           f"log tail:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.pid is not None and self.running():
            os.kill(self.pid, sig)

    def stop(self, timeout_s: float = 15) -> int | None:
        """SIGTERM, wait, SIGKILL after ``timeout_s``; returns the exit code if known."""
        if self.pid is None:
            return None
        if self.running():
            os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            os.kill(self.pid, signal.SIGTERM)
        rc = self._wait(timeout_s)
        if rc is None and self.running():
            os.kill(self.pid, signal.SIGKILL)
            rc = self._wait(5)
        self.pid, self._proc = None, None
        return rc

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.pid is not None and self.running():
            os.kill(self.pid, signal.SIGKILL)
            self._wait(5)
        self.pid, self._proc = None, None

    def _wait(self, timeout_s: float) -> int | None:
        if self._proc is not None:
            try:
                return self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(self.pid):
                return 0
            time.sleep(0.05)
        return None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalCluster:
    """ZooKeeper + N sheep under one base directory."""

    def __init__(self, base: Path, nodes: int = 3, *, cluster: str = "local",
                 zk_port: int | None = None, ports: list[tuple[int, int, int]] | None = None,
                 zones: list[str] | None = None, fast_zk: bool = False,
                 sheep_args: list[str] | None = None) -> None:
        self.base = Path(base).resolve()
        self.cluster = cluster
        self.zk = ZooKeeperServer(self.base / "zookeeper", zk_port or free_port(), fast=fast_zk)
        self.sheep_args = list(sheep_args or [])
        self.keys_dir = self.base / "keys"     # one cluster secret and token file for all
        self.sheep: list[SheepProcess] = []
        for i in range(nodes):
            port, admin, nbd = ports[i] if ports else (free_port(), free_port(), free_port())
            self.sheep.append(SheepProcess(
                index=i, dir=self.base / f"sheep{i}" / "store", zk_hosts=self.zk.hosts,
                cluster=cluster, port=port, admin_port=admin, nbd_port=nbd,
                zone=(zones[i] if zones else ""), keys_dir=self.keys_dir,
                extra_args=self.sheep_args))

    def add_node(self, zone: str = "", *, gateway: bool = False) -> SheepProcess:
        """One more sheep (not started); ``gateway``: a gateway-only one (``--gateway``)."""
        i = len(self.sheep)
        node = SheepProcess(index=i, dir=self.base / f"sheep{i}" / "store",
                            zk_hosts=self.zk.hosts, cluster=self.cluster, port=free_port(),
                            admin_port=free_port(), nbd_port=free_port(), zone=zone,
                            keys_dir=self.keys_dir,
                            extra_args=self.sheep_args + (["--gateway"] if gateway else []))
        self.sheep.append(node)
        return node

    def start(self, timeout_s: float = 60) -> "LocalCluster":
        self.base.mkdir(parents=True, exist_ok=True)
        self.zk.start()
        self.save()
        for s in self.sheep:
            s.start()
        self.save()
        for s in self.sheep:
            s.wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        for s in self.sheep:
            s.stop()
        self.zk.stop()
        state = self.base / STATE_FILE
        if state.exists():
            state.unlink()

    def save(self) -> None:
        state = {"cluster": self.cluster, "zk": {"port": self.zk.port, "pid": self.zk.pid},
                 "sheep": [{"index": s.index, "dir": str(s.dir), "pid": s.pid, "port": s.port,
                            "admin_port": s.admin_port, "nbd_port": s.nbd_port,
                            "node_id": s.node_id, "log": str(s.log_path)}
                           for s in self.sheep]}
        (self.base / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def logs(self) -> str:
        parts = [f"===== zookeeper =====\n{self.zk.log_tail()}"]
        for s in self.sheep:
            parts.append(f"===== sheep {s.index} ({s.node_id}) =====\n{s.log_tail(200)}")
        return "\n".join(parts)


def stop_recorded(base: Path, timeout_s: float = 15) -> list[int]:
    """Stop every process recorded in ``BASE/cluster.json``; returns the pids signalled."""
    path = Path(base) / STATE_FILE
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    pids = [s["pid"] for s in state.get("sheep", []) if s.get("pid")]
    zk_pid = state.get("zk", {}).get("pid")
    stopped = []
    for group in (pids, [zk_pid] if zk_pid else []):
        for pid in group:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
        deadline = time.monotonic() + timeout_s
        for pid in group:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    path.unlink()
    return stopped
