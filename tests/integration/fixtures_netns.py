"""Several hosts on one machine with network namespaces: each sheep, ZooKeeper and the test's
client run in their own namespace on a private bridge (10.99.X.0/24, X from the pid).

Traffic only ever goes to addresses inside namespaces this fixture created: the root
namespace gets a blackhole route for the subnet while it exists, and the test reaches the
hosts only from inside a namespace (``ip netns exec``).  Everything (processes, namespaces,
veths, the route) is removed at teardown, also on failure.  Names carry a pid-based prefix so
parallel runs never collide.

Partitions: ``cut(host)`` sets the host's interface down (no peer, no ZooKeeper);
``drop_to(host, addr, port)`` adds an nftables rule in the host's namespace that drops its
packets to one address/port (e.g. only ZooKeeper) and ``heal(host)`` removes every cut.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sheepdog_local.local_cluster import SheepProcess
from sheepdog_local.zookeeper import ZooKeeperServer

# the installed command, else the module (a checkout run without the venv on PATH)
COLLIE = [shutil.which("collie") or sys.executable] + ([] if shutil.which("collie") else ["-m", "collie"])

ZK_PORT = 2181


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')}")
    return proc


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "curl"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"'{tool}' is not installed"
    name = f"sdprobe{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if probe.returncode != 0:
        return f"'ip netns add' fails: {probe.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class NetnsZooKeeper(ZooKeeperServer):
    def __init__(self, ns: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ns = ns

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *super().command()]

    def _check_port_free(self) -> None:
        pass                            # a fresh namespace has nothing listening

    def start(self, timeout_s: float = 30) -> "NetnsZooKeeper":
        self.write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(self.command(), stdout=self._log_file,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        check = ("import sys; from sheepdog_local.zookeeper import four_letter_word as f; "
                 f"sys.exit(0 if 'Mode:' in f('{self.host}', {self.port}, 'srvr', timeout_s=0.5) "
                 "else 1)")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._proc.poll() is None:
            if sh("ip", "netns", "exec", self.ns, "python3", "-c", check,
                  check=False).returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper in {self.ns} not serving; log:\n{self.log_tail()}")


class NetnsSheep(SheepProcess):
    ns: str = ""

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *super().command()]

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.running():
            if self.net.curl(self.net.client, self, "/health", check=False) is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"sheep {self.index} in {self.ns} not ready; log:\n{self.log_tail()}")


class NetnsCluster:
    """ZooKeeper + N sheep, each its own host on one bridge; a client host for the test."""

    def __init__(self, base: Path, nodes: int, cluster: str):
        self.base = base
        self.prefix = f"sd{os.getpid() % 100000}"
        self.subnet = f"10.99.{os.getpid() % 250 + 1}"
        self.bridge_ns = f"{self.prefix}br"
        self.namespaces: list[str] = []
        self.route = False
        self.client = self._ns("cl")
        self.zk = None
        self.sheep: list[NetnsSheep] = []
        self.nodes = nodes
        self.cluster = cluster
        self.addrs: dict[str, str] = {}

    # -- topology ---------------------------------------------------------------------
    def _ns(self, short: str) -> str:
        return f"{self.prefix}{short}"

    def setup(self) -> None:
        sh("ip", "route", "add", "blackhole", f"{self.subnet}.0/24")
        self.route = True
        sh("ip", "netns", "add", self.bridge_ns)
        self.namespaces.append(self.bridge_ns)
        br = ["ip", "netns", "exec", self.bridge_ns]
        sh(*br, "ip", "link", "add", "br0", "type", "bridge")
        sh(*br, "ip", "link", "set", "br0", "up")
        sh(*br, "ip", "link", "set", "lo", "up")
        hosts = [("cl", 250), ("zk", 1)] + [(f"n{i}", 10 + i) for i in range(self.nodes)]
        for short, octet in hosts:
            self._host(short, octet)
        self.zk = NetnsZooKeeper(self._ns("zk"), self.base / "zookeeper", ZK_PORT,
                                 host=self.addrs[self._ns("zk")], fast=True)
        self.zk.start()
        for i in range(self.nodes):
            ns = self._ns(f"n{i}")
            s = NetnsSheep(index=i, dir=self.base / f"sheep{i}" / "store", zk_hosts=self.zk.hosts,
                           cluster=self.cluster, port=7100, admin_port=7000, nbd_port=10809,
                           addr=self.addrs[ns], keys_dir=self.base / "keys",
                           # the test's client is another host: admin on the host's address
                           extra_args=["--session-timeout", "4",
                                       "--listen-admin", self.addrs[ns]])
            s.ns, s.net = ns, self
            self.sheep.append(s)
        for s in self.sheep:
            s.start()
        for s in self.sheep:
            s.wait_ready()

    def _host(self, short: str, octet: int) -> None:
        ns = self._ns(short)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        inner, outer = f"{self.prefix}{short}i", f"{self.prefix}{short}o"
        sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "netns", self.bridge_ns)
        br = ["ip", "netns", "exec", self.bridge_ns]
        sh(*br, "ip", "link", "set", outer, "master", "br0")
        sh(*br, "ip", "link", "set", outer, "up")
        ex = ["ip", "netns", "exec", ns]
        sh(*ex, "ip", "link", "set", "lo", "up")
        sh(*ex, "ip", "link", "set", inner, "name", "eth0")
        sh(*ex, "ip", "addr", "add", f"{self.subnet}.{octet}/24", "dev", "eth0")
        sh(*ex, "ip", "link", "set", "eth0", "up")
        self.addrs[ns] = f"{self.subnet}.{octet}"

    def teardown(self) -> None:
        for s in self.sheep:
            try:
                s.stop(timeout_s=10)
            except Exception:           # keep tearing down
                pass
        if self.zk is not None:
            self.zk.stop()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        if self.route:
            sh("ip", "route", "del", "blackhole", f"{self.subnet}.0/24", check=False)

    # -- the client -------------------------------------------------------------------
    def curl(self, ns: str, node, path: str, method: str = "GET", body=None, check=True):
        cmd = ["ip", "netns", "exec", ns, "curl", "-s", "-m", "10", "-X", method,
               f"http://{node.addr}:{node.admin_port}{path}"]
        if node.token:
            cmd += ["-H", f"Authorization: Bearer {node.token}"]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        proc = sh(*cmd, check=False)
        if proc.returncode != 0 or not proc.stdout:
            if check:
                raise AssertionError(f"curl {path} in {ns}: rc={proc.returncode}")
            return None
        return json.loads(proc.stdout)

    def collie(self, ns: str, node, *args, input: bytes | None = None, check: bool = True,
               timeout: float = 120):
        """Run collie inside ``ns``; a command still running after ``timeout`` is killed and
        reported as exit code 124 (like timeout(1))."""
        cmd = ["ip", "netns", "exec", ns, *COLLIE, "-a", node.addr, "-p", str(node.admin_port),
               *args]
        env = {**os.environ, "SHEEP_ADMIN_TOKEN_FILE": str(node.token_file)}
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                                  env=env)
        except subprocess.TimeoutExpired as exc:
            proc = subprocess.CompletedProcess(cmd, 124, exc.stdout or b"", exc.stderr or b"")
        if check and proc.returncode != 0:
            raise AssertionError(f"collie {' '.join(args)} -> {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    # -- partitions -------------------------------------------------------------------
    def cut(self, node) -> None:
        sh("ip", "netns", "exec", node.ns, "ip", "link", "set", "eth0", "down")

    def drop_to(self, node, addr: str, port: int) -> None:
        ex = ["ip", "netns", "exec", node.ns, "nft"]
        sh(*ex, "add", "table", "ip", "sdcut")
        sh(*ex, "add", "chain", "ip", "sdcut", "out",
           "{ type filter hook output priority 0 ; }")
        sh(*ex, "add", "rule", "ip", "sdcut", "out", "ip", "daddr", addr, "tcp", "dport",
           str(port), "drop")

    def heal(self, node) -> None:
        sh("ip", "netns", "exec", node.ns, "nft", "delete", "table", "ip", "sdcut", check=False)
        sh("ip", "netns", "exec", node.ns, "ip", "link", "set", "eth0", "up")

    def logs(self) -> str:
        parts = [f"===== zookeeper =====\n{self.zk.log_tail() if self.zk else ''}"]
        parts += [f"===== sheep {s.index} ({s.node_id}) =====\n{s.log_tail(150)}"
                  for s in self.sheep]
        return "\n".join(parts)


@pytest.fixture
def netns_cluster(tmp_path, request):
    """``make(nodes)`` -> a started NetnsCluster; skipped (with the reason) without netns."""
    why = netns_unavailable()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")
    made: list[NetnsCluster] = []

    def make(nodes: int = 3) -> NetnsCluster:
        c = NetnsCluster(tmp_path / f"net{len(made)}", nodes, f"n{os.getpid()}x{len(made)}")
        made.append(c)
        c.setup()
        return c

    try:
        yield make
    finally:
        rep = getattr(request.node, "rep_call", None)
        for c in made:
            if rep is not None and rep.failed:
                print(c.logs())
            c.teardown()
