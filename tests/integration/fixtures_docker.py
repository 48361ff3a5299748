"""Fixtures for tests that run the docker-compose deployment (compose/) on a real Docker engine.

* `compose_images` (session): builds the images once with ``compose/cluster.sh build`` (base
  image by debootstrap when missing, wheels, ``docker-compose build``), under a file lock so
  parallel xdist workers never build at the same time.
* `compose_cluster` (function): a fresh cluster (ZooKeeper + 3 sheep + the one-shot format) under
  a unique compose project name, with fast test timings (ZooKeeper tick 500 ms, sheep session
  timeout 4 s) and every published port chosen by Docker on 127.0.0.1.  At teardown, even when
  the test failed, ``docker-compose down -v`` runs and then everything still labelled with the
  project (containers, networks, volumes) is removed through the Docker SDK; a failing test
  prints every container's log tail.

Docker is reached through the SDK (``docker.from_env()``); docker-compose (Debian's 1.29) is
run as a command, as an operator would.  Tests are skipped when no engine answers
(``compose/docker-setup.sh`` installs and starts one; CI runs it from ``.ci/install``).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.integration.fixtures_cluster import poll as cluster_poll

try:
    import docker
    from docker.errors import APIError, DockerException, NotFound
except ImportError:                                    # pragma: no cover
    docker = None

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
SERVICES = ("sheep1", "sheep2", "sheep3")
GATEWAYS = ("gateway1",)
ADMIN, NBD = "7000/tcp", "10809/tcp"
SESSION_TAG = uuid.uuid4().hex[:8]
COLLIE = shutil.which("collie")
QEMU_IO = shutil.which("qemu-io")

# The test configuration: what an operator would put in compose/.env, tuned for speed.
TEST_ENV = {
    "ZK_TICK_TIME": "500",
    "ZK_FORCE_SYNC": "no",
    "ZK_HEAP": "128m",
    "SHEEP_SESSION_TIMEOUT": "4",
    "SHEEP_IO_TIMEOUT": "30",
    "SHEEPDOG_HEALTH_INTERVAL": "1s",
    "SHEEPDOG_CLUSTER": "ci",
    "SHEEPDOG_COPIES": "3",
    "SHEEPDOG_RESTART": "unless-stopped",
    **{f"SHEEP{i}_{kind}_PORT": "" for i in (1, 2, 3) for kind in ("ADMIN", "NBD")},
    **{f"GATEWAY1_{kind}_PORT": "" for kind in ("ADMIN", "NBD")},
}


def poll(pred, timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    """`fixtures_cluster.poll`, also waiting through Docker API errors."""
    return cluster_poll(pred, timeout, what, interval, tolerate=(TypeError, APIError))


def docker_client():
    if docker is None:
        pytest.skip("the docker SDK is not installed (pip install docker)")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as exc:
        pytest.skip(f"no Docker engine answers ({exc}); run compose/docker-setup.sh")
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed; run compose/docker-setup.sh")
    return client


class ComposeCluster:
    """One docker-compose project of compose/docker-compose.yml."""

    def __init__(self, client, project: str, env: dict[str, str] | None = None,
                 files: tuple[str, ...] = ("docker-compose.yml",)) -> None:
        self.client = client
        self.project = project
        self.files = files
        self.env = {**os.environ, **TEST_ENV, **(env or {}), "COMPOSE_PROJECT_NAME": project}
        self._token: str | None = None

    # -- docker-compose ----------------------------------------------------------------
    def compose(self, *args: str, check: bool = True, timeout: float = 300):
        cmd = ["docker-compose", "--project-directory", str(COMPOSE_DIR)]
        for f in self.files:
            cmd += ["-f", str(COMPOSE_DIR / f)]
        cmd += ["-p", self.project, *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                                 f"{proc.stdout.decode(errors='replace')}"
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    def up(self, timeout: float = 120) -> "ComposeCluster":
        self.compose("up", "-d", "--no-build", timeout=timeout)
        fmt = self.container("format")
        poll(lambda: self._reload(fmt).status == "exited", timeout, "the format service to exit")
        code = fmt.attrs["State"]["ExitCode"]
        assert code == 0, f"format exited {code}:\n{fmt.logs().decode(errors='replace')}"
        for s in SERVICES + GATEWAYS:
            self.wait_healthy(s, timeout)
        return self

    def down(self) -> None:
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=180)
        finally:
            self.purge()

    def purge(self) -> None:
        """Remove whatever is still labelled with this project (a safety net after `down`)."""
        label = f"com.docker.compose.project={self.project}"
        for c in self.client.containers.list(all=True, filters={"label": label}):
            try:
                if c.status == "paused":
                    c.unpause()
                c.remove(force=True, v=True)
            except NotFound:
                pass
        for n in self.client.networks.list(filters={"label": label}):
            try:
                n.remove()
            except NotFound:
                pass
        for v in self.client.volumes.list(filters={"label": label}):
            try:
                v.remove(force=True)
            except NotFound:
                pass

    def leftovers(self) -> list[str]:
        label = f"com.docker.compose.project={self.project}"
        return ([c.name for c in self.client.containers.list(all=True, filters={"label": label})]
                + [n.name for n in self.client.networks.list(filters={"label": label})]
                + [v.name for v in self.client.volumes.list(filters={"label": label})])

    # -- containers ----------------------------------------------------------------------
    def pause(self, service: str) -> None:
        """`docker pause`, retried while the cgroup freezer cannot freeze yet (a process in
        uninterruptible I/O makes runc answer "unable to freeze"); any other error is raised."""
        def paused():
            try:
                self.container(service).pause()
                return True
            except APIError as exc:
                if "unable to freeze" not in str(exc):
                    raise
                return False
        poll(paused, 30, f"{service} paused")

    def container(self, service: str):
        found = self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={service}"]})
        assert len(found) == 1, f"expected one container for {service}, found {found}"
        return found[0]

    @staticmethod
    def _reload(c):
        c.reload()
        return c

    def wait_healthy(self, service: str, timeout: float = 60) -> None:
        c = self.container(service)
        poll(lambda: self._reload(c).attrs["State"].get("Health", {}).get("Status") == "healthy",
             timeout, f"{service} healthy")

    @property
    def network(self):
        return self.client.networks.get(f"{self.project}_default")

    def disconnect(self, service: str) -> None:
        self.network.disconnect(self.container(service))

    def connect(self, service: str) -> None:
        # the service name must resolve again for the other containers
        self.network.connect(self.container(service), aliases=[service])

    def host_port(self, service: str, port: str) -> int:
        c = self._reload(self.container(service))
        bindings = (c.attrs["NetworkSettings"]["Ports"] or {}).get(port)
        assert bindings, f"{service} publishes no {port} (state {c.status})"
        host_ip = bindings[0]["HostIp"]
        assert host_ip == "127.0.0.1", f"{service} {port} published on {host_ip}, not loopback"
        return int(bindings[0]["HostPort"])

    def admin_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.host_port(service, ADMIN)}"

    def nbd_uri(self, service: str, vdi: str) -> str:
        return f"nbd://127.0.0.1:{self.host_port(service, NBD)}/{vdi}"

    # -- the admin API and tools on the host -----------------------------------------
    @property
    def token(self) -> str:
        """The cluster's admin token, as the sheep wrote it into the shared keys volume."""
        if self._token is None:
            cluster = self.env.get("SHEEPDOG_CLUSTER", "default")
            rc, out = self.in_container("sheep1", "cat", f"/etc/sheepdog/{cluster}/admin.token")
            assert rc == 0 and out.strip(), f"no admin token in sheep1: {out}"
            self._token = out.strip()
        return self._token

    def api(self, service: str, path: str, method: str = "GET", timeout: float = 30, **kw):
        kw["headers"] = {"Authorization": f"Bearer {self.token}", **kw.get("headers", {})}
        if method == "POST" and "json" not in kw and "data" not in kw:
            kw["json"] = {}
        r = requests.request(method, self.admin_url(service) + path, timeout=timeout, **kw)
        assert r.status_code < 400, f"{service} {method} {path} -> {r.status_code} {r.text}"
        return r.json()

    def node(self, service: str) -> dict:
        return self.api(service, "/node", timeout=5)

    def collie(self, service: str, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [COLLIE or "collie", "-a", "127.0.0.1", "-p", str(self.host_port(service, ADMIN)),
               *args]
        env = {**os.environ, "SHEEP_ADMIN_TOKEN": self.token}
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    def qemu_io(self, service: str, vdi: str, *commands: str, timeout: float = 180) -> str:
        """Run qemu-io against one sheep's published NBD port; AssertionError on any failure."""
        cmd = [QEMU_IO or "qemu-io", "-f", "raw", self.nbd_uri(service, vdi)]
        for c in commands:
            cmd += ["-c", c]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        if "@" not in vdi and "Denied by server" not in out:
            self.wait_unlocked(service, vdi)
        assert proc.returncode == 0 and not qemu_io_failed(out), \
            f"qemu-io via {service} exited {proc.returncode}:\n{out[-3000:]}"
        return out

    def wait_unlocked(self, service: str, vdi: str, timeout: float = 15) -> None:
        """Until ``vdi`` has no lock: an NBD client exits right after its disconnect request,
        and the sheep releases the lock a moment later (the next attach must wait for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not any(lk.get("name") == vdi
                           for lk in self.api(service, "/locks", timeout=5)["locks"]):
                    return
            except (requests.RequestException, AssertionError, KeyError, ValueError):
                return          # that sheep cannot say (stopped, cut off): nothing to wait for
            time.sleep(0.05)

    def in_container(self, service: str, *cmd: str) -> tuple[int, str]:
        """Run a command inside a sheep's container (its own loopback: works while cut off)."""
        rc, out = self.container(service).exec_run(list(cmd), demux=False)
        return rc, (out or b"").decode(errors="replace")

    # -- cluster state ---------------------------------------------------------------------
    def members(self, service: str) -> list[str]:
        """The node ids of the newest epoch, as ``service`` sees it."""
        epochs = self.api(service, "/cluster")["epochs"]
        return sorted(epochs[-1]["members"]) if epochs else []

    def wait_members(self, service: str, expected: list[str], timeout: float = 60) -> None:
        poll(lambda: self.members(service) == sorted(expected), timeout,
             f"members {sorted(expected)} seen by {service}")

    def wait_converged(self, services=SERVICES, timeout: float = 90) -> list[dict]:
        """Every node on one epoch that has all of them, unfenced, recovery complete."""
        def done():
            nodes = [self.node(s) for s in services]
            epochs = {n["epoch"] for n in nodes}
            return len(epochs) == 1 and all(
                not n["fenced"] and n["recovery"]["state"] == "complete"
                and n["recovery"]["epoch"] == n["epoch"] for n in nodes) and \
                self.members(services[0]) == sorted(n["node_id"] for n in nodes) and nodes
        return poll(done, timeout, f"{list(services)} converged with recovery complete")

    def total_objects(self, services=SERVICES) -> int:
        return sum(self.node(s)["store"]["objects"] for s in services)

    def wait_full_redundancy(self, expected_objects: int, copies: int = 3,
                             timeout: float = 90) -> None:
        """Converged, and every object has its copies (as many stored objects as placed ones)."""
        def done():
            self.wait_converged(timeout=timeout)
            return self.total_objects() == expected_objects * copies
        poll(done, timeout, f"{expected_objects} objects x {copies} copies across the nodes")

    def logs(self, tail: int = 80) -> str:
        parts = []
        label = f"com.docker.compose.project={self.project}"
        for c in self.client.containers.list(all=True, filters={"label": label}):
            try:
                text = c.logs(tail=tail).decode(errors="replace")
            except (APIError, NotFound) as exc:
                text = f"(no logs: {exc})"
            parts.append(f"===== {c.name} ({c.status}) =====\n{text}")
        return "\n".join(parts)


def qemu_io_failed(output: str) -> bool:
    """qemu-io reports failed commands on its output but may still exit 0."""
    low = output.lower()
    return any(word in low for word in ("failed", "error", "pattern verification"))


def build_images() -> tuple[float, str]:
    """``compose/cluster.sh build`` under an exclusive lock; (seconds, output)."""
    lock_path = Path(os.environ.get("TMPDIR", "/tmp")) / "sheepdog-compose-build.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(COMPOSE_DIR / "cluster.sh"), "build"],
                              capture_output=True, timeout=1800,
                              env={**os.environ, "COMPOSE_PROJECT_NAME": "sheepdog-build"})
        elapsed = time.monotonic() - t0
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"compose/cluster.sh build exited {proc.returncode}:\n{out[-5000:]}")
    return elapsed, out


@pytest.fixture(scope="session")
def compose_images():
    """The images, built (or found in the build cache) once per test session."""
    docker_client()
    elapsed, out = build_images()
    print(f"\ncompose images ready in {elapsed:.1f}s")
    return {"seconds": elapsed, "output": out}


@pytest.fixture
def compose_cluster(compose_images, request):
    """A fresh, formatted, healthy cluster; removed with its volumes afterwards."""
    client = docker_client()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    project = f"sdtest{SESSION_TAG}{worker}{uuid.uuid4().hex[:4]}"
    cluster = ComposeCluster(client, project)
    try:
        cluster.up()
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(cluster.logs())
        cluster.down()
        left = cluster.leftovers()
        client.close()
        assert not left, f"compose project {project} left behind: {left}"
