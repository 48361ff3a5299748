"""Bad input through the real collie against a real cluster: exit codes and one clear line."""
from __future__ import annotations

from sheepdog_local.zookeeper import free_port
from tests.integration.fixtures_cluster import api_json, collie, entry_json


def one_line_error(proc) -> str:
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in lines[0]
    return lines[0]


def test_errors_get_documented_exit_codes(cluster_factory):
    c = cluster_factory(2, copies=None)
    n0 = c.sheep[0]

    # before format: the cluster is not ready (2)
    p = collie(n0, "vdi", "create", "v", "1G", check=False)
    assert p.returncode == 2 and "format" in one_line_error(p)
    assert entry_json(collie(n0, "cluster", "info", "--json"))["state"] == "unformatted"

    collie(n0, "cluster", "format", "--copies", "2")
    p = collie(n0, "cluster", "format", "--copies", "2", check=False)
    assert p.returncode == 3, p.stderr

    # usage errors (64): bad sizes, missing arguments
    for args in (["vdi", "create", "v", "12Q"], ["vdi", "create", "v", "0"],
                 ["vdi", "create", "v"], ["vdi", "frobnicate"]):
        p = collie(n0, *args, check=False)
        assert p.returncode == 64, (args, p.stderr)
        one_line_error(p)

    collie(n0, "vdi", "create", "v", "10M")
    # duplicate name (3)
    p = collie(n0, "vdi", "create", "v", "20M", check=False)
    assert p.returncode == 3 and "already exists" in one_line_error(p)
    # unknown VDI (5)
    for args in (["vdi", "read", "nope"], ["vdi", "delete", "nope"],
                 ["vdi", "resize", "nope", "1G"]):
        p = collie(n0, *args, check=False)
        assert p.returncode == 5, (args, p.stderr)
        assert "nope" in one_line_error(p)
    # read past the end (1), write past the end (4: no space, like NBD's ENOSPC)
    p = collie(n0, "vdi", "read", "v", "10M", "1", check=False)
    assert p.returncode == 1 and "past the end" in one_line_error(p)
    p = collie(n0, "vdi", "write", "v", str(10 * 2**20 - 2), "4", input=b"abcd", check=False)
    assert p.returncode == 4, p.stderr
    one_line_error(p)
    # shrinking is refused (1) and the size is unchanged
    p = collie(n0, "vdi", "resize", "v", "1M", check=False)
    assert p.returncode == 1 and "grow" in one_line_error(p)
    collie(n0, "vdi", "resize", "v", "20M")
    assert api_json(n0, "/vdis/v")["size"] == 20 * 2**20
    # nothing was lost by the failed commands
    assert [e["name"] for e in api_json(n0, "/vdis")["vdis"]] == ["v"]

    # an unreachable admin address (2)
    class Nowhere:
        admin_port = free_port()
    p = collie(Nowhere, "node", "list", check=False)
    assert p.returncode == 2 and "reach" in one_line_error(p)


def test_store_of_another_cluster_is_refused(cluster_factory, tmp_path):
    c = cluster_factory(1, copies=1)
    node = c.sheep[0]
    node.stop()
    # the same store directory, started for a different cluster name
    node.cluster = node.cluster + "-other"
    node.start()
    rc = node._proc.wait(timeout=30)
    assert rc == 1
    assert "belongs to cluster" in node.log_tail()
