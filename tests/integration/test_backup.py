"""Incremental backup and restore through the real collie, and the diff meta context over
real NBD clients: three snapshots with different changes, each increment backed up and
restored onto a fresh clone of the base (and a full chain onto a new VDI), every step's
md5 equal to the original's; truncated, edited and mismatched streams refused with
nothing written."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import vdi.backup as backup_stream
from tests.integration.fixtures_cluster import api_json, collie, poll
from tests.integration.fixtures_volumes import (libnbd, nbd_uri, object_counts, qemu_io,
                                                snapshot_bytes, stderr_line, vdi_of, vdis)

MiB = 1 << 20
OBJ = 4 * MiB
SIZE = 40 * MiB                 # ten objects


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def read_vdi(node, name: str) -> bytes:
    return collie(node, "vdi", "read", name).stdout


def snap_md5(node, name: str, tag: str, size: int) -> str:
    return md5(snapshot_bytes(node, name, tag, 0, size))


def backup(node, tmp_path, name: str, tag: str, since: str | None = None) -> bytes:
    args = ["vdi", "backup", "-s", tag] + (["-F", since] if since else []) + [name]
    raw = collie(node, *args).stdout
    (tmp_path / f"{name}-{since or 'full'}-{tag}.bk").write_bytes(raw)
    return raw


def restore(node, name: str, tag: str, stream: bytes | None = None, path=None,
            extra=(), check=True) -> subprocess.CompletedProcess:
    """``collie vdi restore`` from a pipe (``stream``) or with stdin a regular file."""
    if path is None:
        return collie(node, "vdi", "restore", "-s", tag, *extra, name, input=stream,
                      check=check)
    cmd = ["collie", "-p", str(node.admin_port), "vdi", "restore", "-s", tag, *extra, name]
    env = {**os.environ, "SHEEP_ADMIN_TOKEN_FILE": str(node.token_file)} \
        if getattr(node, "token_file", None) else None
    with open(path, "rb") as f:
        proc = subprocess.run(cmd, stdin=f, capture_output=True, timeout=120, env=env)
    assert not check or proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def snapshots_of(node, name: str) -> list[str]:
    return [v["tag"] for v in vdis(node) if v["name"] == name and v["snapshot"]]


def make_history(c) -> dict[str, str]:
    """vm with snapshots s1, s2, s3 (each a different kind of change); tag -> md5."""
    n0, n1, n2 = c.sheep
    collie(n0, "vdi", "create", "vm", "40M")
    # s1: random data in objects 0-5, a partial write in object 7
    collie(n0, "vdi", "write", "vm", "0", input=os.urandom(24 * MiB))
    collie(n1, "vdi", "write", "vm", "29M", input=os.urandom(100 * 1024))
    collie(n0, "vdi", "snapshot", "-s", "s1", "vm")
    # s2: overwrite part of object 1 (copy on write), trim object 3 whole, zero part of
    # object 4, new data in object 8
    qemu_io(n1, "vm", "write -P 0x42 5M 64k", "discard 12M 4M", "write -z 17M 1M",
            "write -P 0x43 33M 2M")
    collie(n2, "vdi", "snapshot", "-s", "s2", "vm")
    # s3: discard objects 0 and 1, rewrite object 3 (a hole in s2), grow by two objects
    # and write into the new one
    qemu_io(n2, "vm", "discard 0 8M", "write -P 0x44 13M 4k")
    collie(n0, "vdi", "resize", "vm", "48M")
    collie(n0, "vdi", "write", "vm", "45M", input=b"\x45" * MiB)
    collie(n0, "vdi", "snapshot", "-s", "s3", "vm")
    return {"s1": snap_md5(n0, "vm", "s1", SIZE), "s2": snap_md5(n0, "vm", "s2", SIZE),
            "s3": snap_md5(n0, "vm", "s3", 48 * MiB)}


def test_incremental_backups_restore_step_by_step(cluster_factory, tmp_path):
    c = cluster_factory(3, copies=2)
    n0, n1, n2 = c.sheep
    want = make_history(c)
    assert len(set(want.values())) == 3

    # back up s1 whole, then each increment; increments carry only what changed
    full1 = backup(n0, tmp_path, "vm", "s1")
    inc12 = backup(n1, tmp_path, "vm", "s2", since="s1")
    inc23 = backup(n2, tmp_path, "vm", "s3", since="s2")
    # whole objects: three changed (12 MiB) in s2, two in s3; s1 has seven
    assert 12 * MiB < len(inc12) < 13 * MiB and 8 * MiB < len(inc23) < 9 * MiB
    assert 28 * MiB < len(full1) < 29 * MiB
    diff = api_json(n0, "/vdis/vm/snapshots/s2/diff", params={"from": "s1"})
    assert [e[0] // OBJ for e in diff["extents"]] == [1, 3, 4, 8]
    assert [e[2] for e in diff["extents"]] == ["data", "zero", "data", "data"]

    # restore each increment onto a fresh clone of the base (stdin a regular file)
    collie(n0, "vdi", "clone", "-s", "s1", "vm", "r")
    out = restore(n1, "r", "s2", path=tmp_path / "vm-s1-s2.bk").stdout.decode().strip()
    assert out.startswith("vdi 'r' restored as snapshot 's2' (") and "zeroed)" in out
    assert md5(read_vdi(n2, "r")) == want["s2"] == snap_md5(n0, "r", "s2", SIZE)
    restore(n2, "r", "s3", path=tmp_path / "vm-s2-s3.bk")
    assert md5(read_vdi(n0, "r")) == want["s3"] == snap_md5(n1, "r", "s3", 48 * MiB)
    assert vdi_of(n0, "r")["size"] == 48 * MiB and snapshots_of(n0, "r") == ["s2", "s3"]
    # the restored snapshots carry the source's states: a backup of r@s3 since r@s2 is
    # the same increment (same base and result states, same records)
    again = backup_stream.decode(backup(n1, tmp_path, "r", "s3", since="s2"))
    orig = backup_stream.decode(inc23)
    assert again[1:-1] == orig[1:-1]
    for side in ("from", "to"):
        assert again[0].header[side]["state"] == orig[0].header[side]["state"]

    # the whole chain onto a new, empty VDI, through pipes (spooled, then unspooled)
    collie(n0, "vdi", "create", "f", "40M")
    restore(n0, "f", "s1", full1)
    assert md5(read_vdi(n0, "f")) == want["s1"]
    restore(n1, "f", "s2", inc12)
    assert md5(read_vdi(n1, "f")) == want["s2"]
    restore(n2, "f", "s3", inc23, extra=["--no-spool"])
    assert md5(read_vdi(n2, "f")) == want["s3"]
    tree = collie(n0, "vdi", "tree").stdout.decode()
    assert "f [s3]" in tree and "f (you are here)" in tree


def test_bad_streams_and_wrong_bases_are_refused_with_nothing_written(cluster_factory,
                                                                        tmp_path):
    c = cluster_factory(3, copies=2)
    n0, n1, n2 = c.sheep
    want = make_history(c)
    full1 = backup(n0, tmp_path, "vm", "s1")
    inc12 = backup(n0, tmp_path, "vm", "s2", since="s1")
    inc23 = backup(n0, tmp_path, "vm", "s3", since="s2")
    collie(n0, "vdi", "clone", "-s", "s1", "vm", "t")
    before = object_counts(c)

    def unchanged():
        assert md5(read_vdi(n1, "t")) == want["s1"]
        assert snapshots_of(n0, "t") == []

    # an increment whose base is s2, onto a copy of s1
    p = restore(n0, "t", "x", inc23, check=False)
    assert p.returncode == 1 and "not at the stream's base" in stderr_line(p)
    assert "descends from 'vm' snapshot 's1'" in stderr_line(p)
    unchanged()
    # truncated (in the middle of a record), from a file and from a pipe
    (tmp_path / "cut.bk").write_bytes(inc12[:len(inc12) // 2])
    for p in (restore(n1, "t", "x", path=tmp_path / "cut.bk", check=False),
              restore(n1, "t", "x", inc12[:-1], check=False)):
        assert p.returncode == 1 and "truncated" in stderr_line(p)
        assert "nothing was restored" in stderr_line(p)
    unchanged()
    # one byte edited in a data payload: the checksum says so
    edited = bytearray(inc12)
    edited[len(edited) // 2] ^= 0x01
    p = restore(n2, "t", "x", bytes(edited), check=False)
    assert p.returncode == 1 and "checksum does not match" in stderr_line(p)
    unchanged()
    # unspooled, the sheep finds it at the end: it wrote into a hidden entry, which it
    # discards; the target and the object counts are as before
    p = restore(n2, "t", "x", bytes(edited), extra=["--no-spool"], check=False)
    assert p.returncode == 1 and "checksum does not match" in stderr_line(p)
    assert "nothing was restored" in stderr_line(p)
    unchanged()
    poll(lambda: object_counts(c) == before, 30, f"objects back to {before}")
    # not a backup stream at all
    p = restore(n0, "t", "x", b"hello world" * 10, check=False)
    assert p.returncode == 1 and "not a sheepdog-py backup stream" in stderr_line(p)

    # a copy of the base written since: refused; rolled back it is accepted
    qemu_io(n0, "t", "write -P 9 0 4k")
    p = restore(n0, "t", "x", inc12, check=False)
    assert p.returncode == 1 and "written since 'vm' snapshot 's1'" in stderr_line(p)
    # a full backup onto a VDI holding data of its own needs -f
    p = restore(n0, "t", "x", full1, check=False)
    assert p.returncode == 1 and "pass -f" in stderr_line(p)
    restore(n0, "t", "s1", full1, extra=["-f"])
    assert md5(read_vdi(n0, "t")) == want["s1"]
    restore(n1, "t", "s2", inc12)
    # the tag exists now: exit 3; an unknown VDI: exit 5; a terminal or usage: 64
    p = restore(n1, "t", "s2", inc12, check=False)
    assert p.returncode == 3 and "already has a snapshot tagged 's2'" in stderr_line(p)
    p = restore(n1, "nosuch", "s2", inc12, check=False)
    assert p.returncode == 5 and "not found" in stderr_line(p)
    p = collie(n0, "vdi", "backup", "-s", "nosuch", "vm", check=False)
    assert p.returncode == 5 and "not found" in stderr_line(p)
    p = collie(n0, "vdi", "restore", "t", input=inc12, check=False)
    assert p.returncode == 64
    # an attached VDI is not restored into
    holder = subprocess.Popen(["qemu-io", "-f", "raw", nbd_uri(n1, "t")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from tests.integration.fixtures_nbd import attached
        poll(lambda: "t" in attached(n0), what="t attached")
        p = restore(n0, "t", "y", inc23, check=False)
        assert p.returncode == 1 and "attached" in stderr_line(p)
    finally:
        holder.communicate(b"quit\n", timeout=30)
    assert md5(read_vdi(n0, "t")) == want["s2"]


_MAP = r"""
import json, sys, nbd
uri, ctx = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.add_meta_context(ctx)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
seen = {}
def cb(metacontext, offset, entries, err):
    seen[metacontext] = [[entries[i], entries[i + 1]] for i in range(0, len(entries), 2)]
    return 0
h.block_status(h.get_size(), 0, cb)         # one request, one chunk per context
print(json.dumps({"can": [h.can_meta_context(ctx), h.can_meta_context("base:allocation")],
                  "seen": seen}))
"""

_LIST = r"""
import json, sys, nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
out = {}
for query in sys.argv[2:]:
    h.clear_meta_contexts()
    if query != "-":
        h.add_meta_context(query)
    names = []
    h.opt_list_meta_context(lambda name: names.append(name) or 0)
    out[query] = sorted(names)
h.opt_abort()
print(json.dumps(out))
"""

# a backup tool: copy what changed in vm@TO since FROM onto a writable copy of FROM
_COPY = r"""
import json, sys, nbd
src_uri, dst_uri, ctx = sys.argv[1:4]
src, dst = nbd.NBD(), nbd.NBD()
src.add_meta_context(ctx)
src.connect_uri(src_uri)
dst.connect_uri(dst_uri)
size = src.get_size()
if dst.get_size() < size:
    raise SystemExit("target too small")
pos, copied, zeroed = 0, 0, 0
while pos < size:
    extents = []
    src.block_status(min(size - pos, 64 << 20), pos,
                     lambda m, o, e, err: extents.extend(e) or 0)
    for i in range(0, len(extents), 2):
        n, flags = min(extents[i], size - pos), extents[i + 1]
        if flags & 2:
            dst.zero(n, pos); zeroed += n
        elif flags & 1:
            for off in range(pos, pos + n, 4 << 20):
                k = min(4 << 20, pos + n - off)
                dst.pwrite(src.pread(k, off), off)
            copied += n
        pos += n
dst.flush()
dst.shutdown()
print(json.dumps({"copied": copied, "zeroed": zeroed}))
"""


def test_the_diff_meta_context_over_nbd(cluster_factory):
    c = cluster_factory(2, copies=2)
    n0, n1 = c.sheep
    want = make_history_two_nodes(c)
    node = n1

    # nbdinfo --map with the diff context: the changed objects of s2 since s1
    out = subprocess.run(["nbdinfo", "--map=x-sheepdog:diff:s1", "--json",
                          nbd_uri(node, "vm@s2")], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    extents = json.loads(out.stdout)
    changed = [(e["offset"] // OBJ, e["length"] // OBJ, e["type"]) for e in extents if e["type"]]
    assert changed == [(1, 1, 1), (3, 1, 3), (4, 1, 1), (8, 1, 1)], extents
    assert sum(e["length"] for e in extents) == SIZE
    # the same as the admin API's diff, and base:allocation as it always was
    api_diff = api_json(node, "/vdis/vm/snapshots/s2/diff", params={"from": "s1"})["extents"]
    assert [(e[0] // OBJ, e[1] // OBJ, 3 if e[2] == "zero" else 1) for e in api_diff] == changed
    plain = subprocess.run(["nbdinfo", "--map", "--json", nbd_uri(node, "vm@s2")],
                           capture_output=True, timeout=60)
    holes = [e["offset"] // OBJ for e in json.loads(plain.stdout) if e["type"] == 3]
    assert holes == [3, 6, 9]

    # both contexts on one connection: one chunk each per request
    got = libnbd(_MAP, nbd_uri(node, "vm@s3"), "x-sheepdog:diff:s2")
    assert got["can"] == [1, 1]
    diff_s3, alloc = got["seen"]["x-sheepdog:diff:s2"], got["seen"]["base:allocation"]
    assert sum(n for n, _ in diff_s3) == sum(n for n, _ in alloc) == 48 * MiB
    changed, pos = [], 0
    for n, flags in diff_s3:
        if flags:
            changed.append((pos // OBJ, n // OBJ, flags))
        pos += n
    assert changed == [(0, 2, 3), (3, 1, 1), (11, 1, 1)]

    # LIST_META_CONTEXT: the namespace, the prefix, one exact name; none on a working VDI
    listed = libnbd(_LIST, nbd_uri(node, "vm@s2"), "-", "x-sheepdog:diff:", "x-sheepdog:",
                    "x-sheepdog:diff:s3", "x-sheepdog:diff:nope", "base:allocation")
    diffs = ["x-sheepdog:diff:s1", "x-sheepdog:diff:s3"]
    assert listed == {"-": ["base:allocation", *diffs], "x-sheepdog:diff:": diffs,
                      "x-sheepdog:": diffs, "x-sheepdog:diff:s3": ["x-sheepdog:diff:s3"],
                      "x-sheepdog:diff:nope": [], "base:allocation": ["base:allocation"]}
    assert libnbd(_LIST, nbd_uri(node, "vm"), "-", "x-sheepdog:") == {
        "-": ["base:allocation"], "x-sheepdog:": []}
    info = subprocess.run(["nbdinfo", "--json", nbd_uri(node, "vm@s2")], capture_output=True,
                          timeout=60)
    contexts = json.loads(info.stdout)["exports"][0]["contexts"]
    assert sorted(contexts) == ["base:allocation", *diffs]

    # a backup tool over NBD: the changes of s3 since s2 onto a clone of s2
    collie(n0, "vdi", "clone", "-s", "s2", "vm", "copy")
    collie(n0, "vdi", "resize", "copy", "48M")
    done = libnbd(_COPY, nbd_uri(node, "vm@s3"), nbd_uri(n0, "copy"), "x-sheepdog:diff:s2")
    assert done["copied"] > 0 and done["zeroed"] >= 2 * OBJ
    assert md5(read_vdi(n0, "copy")) == want["s3"]


def make_history_two_nodes(c) -> dict[str, str]:
    """make_history on a two-node cluster (the helper addresses three nodes)."""
    class Three:
        sheep = [c.sheep[0], c.sheep[1], c.sheep[0]]
    return make_history(Three)

