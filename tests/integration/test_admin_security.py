"""The admin API against hostile and mistaken clients: tokens, CORS simple requests, DNS
rebinding, loopback binding, rotation, body caps and slow clients (real sheep)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from tests.integration.fixtures_cluster import (api, api_json, cluster_factory, collie,  # noqa: F401
                                                poll)

WORKERS = 4
HEAD_TIMEOUT_S = 1.0


@pytest.fixture
def cluster(cluster_factory):  # noqa: F811
    return cluster_factory(2, copies=2, sheep_args=[
        "--admin-workers", str(WORKERS), "--admin-timeout", str(HEAD_TIMEOUT_S),
        "--admin-max-body", str(1 << 20)])


def bare(node, path, method="GET", **kw):
    """A request with no token (what a stranger or a web page sends)."""
    return requests.request(method, node.admin_url + path, timeout=10, **kw)


def collie_as(node, *args, env=None):
    """collie with exactly the environment given (no token unless it names one)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHEEP_ADMIN_TOKEN")}
    base.update(HOME="/nonexistent", XDG_CONFIG_HOME="/nonexistent", **(env or {}))
    return subprocess.run([sys.executable, "-m", "collie", "-p", str(node.admin_port), *args],
                          capture_output=True, text=True, env=base, timeout=60)


def test_every_route_but_health_and_metrics_needs_the_token(cluster):
    n0 = cluster.sheep[0]
    for method, path in [("GET", "/vdis"), ("GET", "/node"), ("GET", "/cluster"),
                         ("GET", "/locks"), ("DELETE", "/vdis/x"), ("GET", "/vdis/x/data")]:
        r = bare(n0, path, method)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert bare(n0, "/health").json() == {"ok": True}
    assert b"sheep_" in bare(n0, "/metrics").content
    r = bare(n0, "/vdis", headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 401 and r.json()["error"] == "wrong admin token"
    assert api(n0, "/vdis").status_code == 200


def test_collie_without_or_with_a_wrong_token_exits_2_with_one_line(cluster, tmp_path):
    n0 = cluster.sheep[0]
    missing = collie_as(n0, "vdi", "list")
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1 and "needs a token" in missing.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("definitely-not-the-token\n")
    bad = collie_as(n0, "--token-file", str(wrong), "vdi", "list")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "wrong admin token" in bad.stderr and str(wrong) in bad.stderr
    unreadable = collie_as(n0, "--token-file", str(tmp_path / "nope"), "vdi", "list")
    assert unreadable.returncode == 2 and "cannot read token file" in unreadable.stderr
    good = collie_as(n0, "vdi", "list", env={"SHEEP_ADMIN_TOKEN": n0.token})
    assert good.returncode == 0, good.stderr


def test_a_web_pages_simple_request_cannot_shut_the_cluster_down(cluster):
    n0 = cluster.sheep[0]
    # fetch(url, {method: "POST", mode: "no-cors"}): no token, a "simple" content type
    r = bare(n0, "/cluster/shutdown", "POST", data=b"x",
             headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert r.status_code == 401
    # even a request carrying the token must say it is JSON
    r = bare(n0, "/cluster/shutdown", "POST", data=b"{}",
             headers={**n0.auth, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    # DNS rebinding: evil.example resolved to this sheep; the browser still says so in Host
    r = bare(n0, "/vdis", headers={**n0.auth, "Host": f"evil.example:{n0.admin_port}"})
    assert r.status_code == 421 and "evil.example" in r.json()["error"]
    assert all(s.running() for s in cluster.sheep)
    assert api_json(n0, "/cluster")["state"] == "running"


def test_the_admin_api_listens_on_loopback_unless_told(cluster):
    n0 = cluster.sheep[0]
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{n0.admin_port}"],
                               capture_output=True, text=True, check=True).stdout
    assert f"127.0.0.1:{n0.admin_port}" in listening, listening
    assert f"0.0.0.0:{n0.admin_port}" not in listening


def test_the_token_is_private_in_zookeeper_and_in_its_file(cluster):
    n0 = cluster.sheep[0]
    assert oct(n0.token_file.stat().st_mode & 0o777) == "0o600"
    zk = KazooClient(hosts=cluster.zk.hosts)
    zk.start(timeout=15)
    try:
        with pytest.raises(NoAuthError):
            zk.get(f"/sheepdog/{cluster.cluster}/admin_token")
    finally:
        zk.stop()
        zk.close()


def test_rotating_the_token_reaches_every_sheep_and_refuses_the_old_one(cluster, tmp_path):
    n0, n1 = cluster.sheep
    old = n0.token
    mine = tmp_path / "token"
    mine.write_text(old + "\n")
    out = collie_as(n0, "--token-file", str(mine), "cluster", "rotate-token")
    assert out.returncode == 0, out.stderr
    new = mine.read_text().strip()
    assert new != old and str(mine) in out.stdout
    for node in (n0, n1):
        poll(lambda: node.token == new, 15, f"{node.node_id} writes the new token down")
        poll(lambda: bare(node, "/vdis", headers={"Authorization": f"Bearer {old}"})
             .status_code == 401, 15, f"{node.node_id} refuses the old token")
        assert api(node, "/vdis").status_code == 200


def test_bodies_over_the_cap_are_refused_before_they_are_read(cluster):
    n0 = cluster.sheep[0]
    # a declared 10 GiB body: refused at once, nothing of it read
    with socket.create_connection(("127.0.0.1", n0.admin_port), timeout=10) as s:
        s.sendall(f"PUT /vdis/x/data HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                  f"{n0.token}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {10 << 30}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    # a chunked JSON body (no length) longer than the cap
    def chunks():
        for _ in range(3):
            yield b" " * (512 << 10)
    r = bare(n0, "/vdis", "POST", data=chunks(),
             headers={**n0.auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and "over" in r.json()["error"]
    assert api(n0, "/vdis").status_code == 200


def test_slow_and_idle_clients_cannot_hold_the_admin_api(cluster):
    n0 = cluster.sheep[0]
    rss_before = _rss_kib(n0.pid)
    hostile = []
    try:
        for _ in range(WORKERS * 4):        # every worker taken, more waiting in the backlog
            s = socket.create_connection(("127.0.0.1", n0.admin_port), timeout=10)
            s.sendall(b"GET /vdis HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")   # never finished
            hostile.append(s)
        started = time.monotonic()
        assert api(n0, "/vdis").status_code == 200       # served once heads time out
        waited = time.monotonic() - started
        # each round of WORKERS hostile heads is cut at the deadline
        assert waited < 4 * HEAD_TIMEOUT_S + 10, waited
        for s in hostile[:WORKERS]:       # the server closed each unfinished request
            _read_to_eof(s, HEAD_TIMEOUT_S + 10)
    finally:
        for s in hostile:
            s.close()
    assert _rss_kib(n0.pid) - rss_before < 64 << 10
    assert api(n0, "/vdis").status_code == 200


def test_refused_clients_that_never_send_their_body_do_not_hold_workers(cluster):
    n0 = cluster.sheep[0]
    hostile = []
    try:
        for length in [100, 10 ** 12] * WORKERS:   # more than every worker
            s = socket.create_connection(("127.0.0.1", n0.admin_port), timeout=10)
            s.sendall(f"POST /vdis HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      f"application/json\r\nContent-Length: {length}\r\n\r\n{{".encode())
            hostile.append(s)
        for s in hostile:                  # each is answered 401 and closed, body unread
            assert _read_to_eof(s, 10).startswith(b"HTTP/1.1 401")
        started = time.monotonic()
        assert requests.get(n0.admin_url + "/vdis", headers=n0.auth, timeout=5).ok
        assert time.monotonic() - started < HEAD_TIMEOUT_S + 2
    finally:
        for s in hostile:
            s.close()


def _read_to_eof(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes; socket.timeout if it never does."""
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
