"""`collie vdi list -l` and `collie node recovery --watch` against real clusters.

`vdi list -l` names the node and NBD client holding a VDI's write right (a real libnbd
client), the other attachment, and `-` for a VDI attached nowhere.  `node recovery --watch`
follows a real recovery (32 MiB in 1 MiB objects, one of three nodes stopped, throttled to
a few objects per second so refreshes see it move) and exits 0 by itself once every node
is complete; a watch whose sheep is killed exits 2 with one line.  Every collie process
runs under a deadline and is killed if it outlives the test.
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time

import pytest

from tests.integration.fixtures_cluster import (COLLIE, api_json, collie, poll, wait_epoch,
                                                wait_recovered)
from tests.integration.fixtures_nbd import NbdSession, create_vdi

MiB = 1 << 20
WATCH_DEADLINE_S = 90


def start_collie(node, *args) -> subprocess.Popen:
    """The real `collie` (as `collie()` runs it) in the background, stdout piped."""
    cmd = ([COLLIE] if COLLIE else ["python", "-m", "collie"]) + ["-p", str(node.admin_port), *args]
    env = {**os.environ, "SHEEP_ADMIN_TOKEN_FILE": str(node.token_file)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


class Output:
    """What a background process has written to stdout so far, read without blocking."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.text = proc, ""

    def read_until(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while needle not in self.text:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} in collie's output after {timeout}s: {self.text!r}"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, f"collie ended before printing {needle!r}: {self.text!r}"
                self.text += chunk.decode()
        return self.text

    def finish(self, timeout: float) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.text += out.decode()
        return self.proc.returncode, self.text, err.decode()


@pytest.fixture
def background():
    """Start background collie processes; each is killed at teardown if still running."""
    procs: list[subprocess.Popen] = []

    def start(node, *args) -> Output:
        procs.append(start_collie(node, *args))
        return Output(procs[-1])
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        for stream in (p.stdout, p.stderr):
            stream.close()


def long_rows(node) -> dict[str, list[str]]:
    """`collie vdi list -l` rows of working VDIs by name (the columns split on blanks)."""
    lines = collie(node, "vdi", "list", "-l").stdout.decode().splitlines()
    assert lines[0].split()[-3:] == ["Writer", "Client", "Standbys"], lines[0]
    return {line.split()[0]: line.split() for line in lines[1:] if not line.startswith("s")}


def test_vdi_list_long_shows_where_each_vdi_is_attached(cluster_factory):
    c = cluster_factory(2, copies=2)
    a, b = c.sheep
    create_vdi(a, "busy", 16 * MiB)
    create_vdi(a, "idle", 16 * MiB)
    with NbdSession(b, "busy") as writer, NbdSession(a, "busy") as standby:
        writer.must("connect")
        writer.must("pwrite", offset=0, length=4096, byte=0x5a)     # the first write takes the lock
        standby.must("connect")
        lock = poll(lambda: next((lk for lk in api_json(a, "/locks")["locks"]
                                  if lk["name"] == "busy" and len(lk["standbys"]) == 1), None),
                    20, "the writer's lock and one standby")
        rows = long_rows(a)
        assert rows["busy"][-3] == b.node_id
        assert re.fullmatch(r"127\.0\.0\.1:\d+", rows["busy"][-2]) and rows["busy"][-2] == lock["client"]
        assert rows["busy"][-1] == f"{lock['standbys'][0]['client']}@{a.node_id}"
        assert rows["idle"][-3:] == ["-", "-", "-"]

        doc = {v["name"]: v for v in json.loads(collie(a, "vdi", "list", "-l", "--json").stdout)["vdis"]}
        assert doc["busy"]["lock"]["node_id"] == b.node_id
        assert {x["node_id"] for x in doc["busy"]["attachments"]} == {a.node_id, b.node_id}
        assert doc["idle"]["lock"] is None and doc["idle"]["attachments"] == []


def test_watch_follows_a_recovery_until_it_is_complete(cluster_factory, background):
    c = cluster_factory(3, copies=None)
    api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": 2, "block_size_shift": 20})
    wait_epoch(c.sheep, 1)
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vol", "32M")
    collie(n0, "vdi", "write", "vol", "0", str(32 * MiB), input=os.urandom(32 * MiB))
    collie(n0, "cluster", "recover", "disable")        # the watch starts before recovery does
    collie(n0, "node", "recovery", "set-throttle", "--objects", "5")
    n2.stop()
    wait_epoch([n0, n1], 2)

    watch = background(n0, "node", "recovery", "--watch", "--interval", "0.2")
    watch.read_until("recovery is disabled", 30)
    collie(n0, "cluster", "recover", "enable")
    code, out, err = watch.finish(WATCH_DEADLINE_S)
    assert code == 0, err
    assert err == "" and "\x1b" not in out                  # a pipe: plain blocks, no ANSI
    blocks = [b for b in out.split("\n\n") if b]
    heads = [b.splitlines()[1] for b in blocks]              # after each "[HH:MM:SS]" line
    assert all(re.fullmatch(r"\[\d\d:\d\d:\d\d\]", b.splitlines()[0]) for b in blocks)
    moving = [h for h in heads if re.search(r"objects ([1-9]\d*)/(\d+) \(\d+ left\).*ETA", h)]
    assert moving, f"no block with objects in progress: {heads}"
    assert any(re.search(r"ETA \d+:\d\d", h) for h in moving), heads   # a rate was observed
    final = blocks[-1]
    assert final.splitlines()[1].startswith("Recovery: complete (epoch 2): objects ")
    assert final.splitlines()[1].endswith("moved, complete")
    rows = final.splitlines()[3:5]                           # then the throttle line
    assert final.splitlines()[5:] == ["Recovery throttle: 5 objects/s"]
    assert {r.split()[1] for r in rows} == {n0.node_id, n1.node_id}
    assert all(r.split()[2] == "complete" and r.split()[-1] == "done" for r in rows)
    wait_recovered([n0, n1])          # the API agrees the watch ended on a complete cluster


def test_watch_exits_2_when_its_sheep_dies(cluster_factory, background):
    c = cluster_factory(1, copies=1)
    n0 = c.sheep[0]
    collie(n0, "cluster", "recover", "disable")        # the new epoch's recovery never ends
    new = c.add_node()
    new.start()
    new.wait_ready()
    wait_epoch([n0, new], 2)

    watch = background(new, "node", "recovery", "--watch", "--interval", "0.2", "--json")
    watch.read_until('"state": "disabled"', 30)
    new.kill()
    code, _, err = watch.finish(WATCH_DEADLINE_S)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("collie: watch stopped: cannot reach sheep"), err
