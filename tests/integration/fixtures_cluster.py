"""Fixtures and helpers for tests that run real `sheep` processes.

`cluster_factory` starts `LocalCluster`s (private ZooKeeper + N sheep on free
ports) under the test's tmp dir; every one is stopped at teardown even when the
test fails, and a failing test prints the log tail of every daemon.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from sheepdog_local.local_cluster import LocalCluster

COLLIE = shutil.which("collie")


def poll(pred, timeout: float = 30.0, what: str = "condition", interval: float = 0.05,
         tolerate: tuple = ()):
    """Call ``pred()`` until it returns something truthy; AssertionError after ``timeout``.

    Connection, lookup and parse errors (plus ``tolerate``) count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except (requests.RequestException, OSError, KeyError, ValueError, *tolerate) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def collie(node, *args, input: bytes | None = None, check: bool = True,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `collie` command against one sheep's admin port."""
    cmd = ([COLLIE] if COLLIE else [sys.executable, "-m", "collie"])
    cmd += ["-p", str(node.admin_port), *args]
    env = dict(os.environ)
    token_file = getattr(node, "token_file", None)
    if token_file is not None:
        env["SHEEP_ADMIN_TOKEN_FILE"] = str(token_file)
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


def api(node, path: str, method: str = "GET", **kwargs):
    """One admin API request with the node's token (a POST with no body sends ``{}``)."""
    headers = {**getattr(node, "auth", {}), **kwargs.pop("headers", {})}
    if method == "POST" and "json" not in kwargs and "data" not in kwargs:
        kwargs["json"] = {}
    return requests.request(method, node.admin_url + path, timeout=60, headers=headers, **kwargs)


def api_json(node, path: str, method: str = "GET", **kwargs):
    r = api(node, path, method, **kwargs)
    assert r.status_code < 400, f"{method} {path} -> {r.status_code} {r.text}"
    return r.json()


def node_epoch(node) -> int:
    return api_json(node, "/node")["epoch"]


def wait_epoch(nodes, epoch: int, timeout: float = 30.0) -> None:
    """Until every node in ``nodes`` is at ``epoch`` or later."""
    poll(lambda: all(node_epoch(n) >= epoch for n in nodes), timeout,
         f"epoch {epoch} on {[n.node_id for n in nodes]}")


def wait_recovered(nodes, timeout: float = 60.0) -> None:
    def done():
        states = [api_json(n, "/node") for n in nodes]
        epochs = {s["epoch"] for s in states}
        return len(epochs) == 1 and all(
            s["recovery"]["state"] == "complete" and s["recovery"]["epoch"] == s["epoch"]
            for s in states)
    poll(done, timeout, "recovery complete on every node")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def cluster_factory(tmp_path, request):
    started: list[LocalCluster] = []

    def make(nodes: int = 3, *, copies: int | None = 3, zones=None, sheep_args=None,
             start: bool = True) -> LocalCluster:
        c = LocalCluster(tmp_path / f"cluster{len(started)}", nodes,
                         cluster=f"t{os.getpid()}x{len(started)}", zones=zones, fast_zk=True,
                         sheep_args=["--session-timeout", "4", *(sheep_args or [])])
        started.append(c)
        if start:
            c.start()
            if copies:
                api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": copies})
                wait_epoch(c.sheep, 1)
        return c

    yield make
    rep = getattr(request.node, "rep_call", None)
    for c in started:
        if rep is not None and rep.failed:
            print(c.logs())
        c.stop()


def entry_json(proc: subprocess.CompletedProcess):
    return json.loads(proc.stdout)
