"""Helpers for the volume tests (snapshots, clones, rollback, reclaim): NBD clients and
object counts on real sheep."""
from __future__ import annotations

import json
import subprocess

from tests.integration.fixtures_cluster import api, api_json, collie, poll
from tests.integration.fixtures_nbd import wait_unlocked

SYSTEM_PYTHON = "/usr/bin/python3"     # Debian's python: the one with libnbd
MiB = 1 << 20


def nbd_uri(node, export: str) -> str:
    return f"nbd://127.0.0.1:{node.nbd_port}/{export}"


def qemu_io(node, export: str, *commands: str, readonly: bool = False,
            check: bool = True) -> str:
    """Run qemu-io commands on an export; AssertionError when one fails (qemu-io prints
    "failed" for an I/O error or a pattern mismatch)."""
    cmd = ["qemu-io", "-f", "raw"] + (["-r"] if readonly else []) + [nbd_uri(node, export)]
    for c in commands:
        cmd += ["-c", c]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    if "@" not in export and "Denied by server" not in out:
        wait_unlocked(node, export)     # its lock goes a moment after the client exits
    if check and (proc.returncode != 0 or "failed" in out.lower()):
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}: {out}")
    return out


def libnbd(script: str, *args: str, timeout: float = 60) -> dict:
    """Run a libnbd script with Debian's python; it prints one JSON document."""
    proc = subprocess.run([SYSTEM_PYTHON, "-c", script, *args], capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def vdis(node) -> list[dict]:
    return json.loads(collie(node, "vdi", "list", "--json").stdout)["vdis"]


def vdi_of(node, name: str, tag: str | None = None) -> dict:
    for v in vdis(node):
        if v["name"] == name and (v.get("tag") == tag if tag is not None else not v["snapshot"]):
            return v
    raise AssertionError(f"no VDI {name} tag {tag} in {vdis(node)}")


def snapshot_bytes(node, name: str, tag: str, offset: int, length: int) -> bytes:
    r = api(node, f"/vdis/{name}/snapshots/{tag}/data", params={"offset": offset,
                                                                "length": length})
    assert r.status_code == 200, r.text
    return r.content


def data_objects(node) -> int:
    """Data objects (not inodes) in one node's store directory."""
    return sum(1 for p in (node.dir / "obj").iterdir()
               if len(p.name) == 16 and not int(p.name, 16) >> 63)


def object_counts(cluster) -> list[int]:
    return [data_objects(n) for n in cluster.sheep]


def wait_counts(cluster, expected: list[int], what: str) -> None:
    poll(lambda: object_counts(cluster) == expected, 30,
         f"{what}: data objects {expected} (now {object_counts(cluster)})")


def stderr_line(proc) -> str:
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


__all__ = ["api_json", "collie", "poll"]
