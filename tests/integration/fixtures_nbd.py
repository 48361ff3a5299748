"""Helpers for driving real NBD clients against real sheep clusters.

* ``run`` / ``libnbd``: one-shot client commands; libnbd's Python binding exists
  only for Debian's ``/usr/bin/python3``, so libnbd checks are small scripts run
  with that interpreter that print one JSON document.
* ``NbdSession``: a long-lived libnbd client in a ``/usr/bin/python3`` child,
  driven one JSON command per line.  It holds an attachment (and therefore the
  VDI lock) open while the test does other things.
* ``module_cluster``: a cluster shared by one test module (each test uses its
  own VDI), stopped when the module ends; logs are printed if a test failed.
* ``FuseLoop``: an export as a file through ``nbdfuse`` and a loop device over
  it; every mount, loop device and nbdfuse process it made is undone in
  ``close()``, also after a failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from sheepdog_local.local_cluster import LocalCluster
from tests.integration.fixtures_cluster import api_json, poll, wait_epoch

MiB = 1 << 20
OBJ = 4 * MiB                          # default object size (block_size_shift 22)
SYSTEM_PYTHON = "/usr/bin/python3"


def run(*cmd, timeout: float = 60, check: bool = True, input: bytes | None = None):
    """Run a client command; AssertionError with its output when it fails and ``check``."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {res.returncode}\n"
                             f"stdout: {res.stdout.decode(errors='replace')}\n"
                             f"stderr: {res.stderr.decode(errors='replace')}")
    return res


def libnbd(script: str, *args, timeout: float = 60) -> dict:
    """Run a libnbd script with Debian's python3; it prints one JSON document last."""
    res = run(SYSTEM_PYTHON, "-c", textwrap.dedent(script), *args, timeout=timeout)
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def uri(node, name: str) -> str:
    return f"nbd://127.0.0.1:{node.nbd_port}/{name}"


def create_vdi(node, name: str, size: int) -> dict:
    return api_json(node, "/vdis", "POST", json={"name": name, "size": size})


def store(node) -> dict:
    return api_json(node, "/node")["store"]


def locks(node) -> dict:
    """VDI name -> lock record ({node_id, client, since, vid, name})."""
    return {lk["name"]: lk for lk in api_json(node, "/locks")["locks"]}


def check_reads(node, name: str, *cmds: str) -> None:
    """Read-only qemu-io through ``node``: every ``read -P`` must match."""
    run("qemu-io", "-r", "-f", "raw", *[a for c in cmds for a in ("-c", c)], uri(node, name))


def attached(node) -> set[str]:
    """Names of the VDIs some NBD connection has attached (holding the write right or not)."""
    answer = api_json(node, "/locks")
    return ({lk["name"] for lk in answer["locks"] if lk["attachments"]}
            | {e["name"] for e in answer["attached"]})


def wait_detached(node, name: str, timeout: float = 15) -> None:
    poll(lambda: name not in attached(node) and name not in locks(node), timeout,
         f"VDI {name!r} to be detached")


def wait_unlocked(node, name: str, timeout: float = 15) -> None:
    """Until VDI ``name`` has no lock: a client's disconnect releases it a moment
    after the client itself has exited."""
    poll(lambda: name not in locks(node), timeout, f"VDI {name!r} to be unlocked")


# -- a module-scoped cluster ----------------------------------------------------------------

def module_cluster(request, tmp_path_factory, nodes: int, copies: int, sheep_args=()):
    """Generator body for a module-scoped cluster fixture (ZooKeeper + ``nodes`` sheep)."""
    base = tmp_path_factory.mktemp("nbdcluster")
    c = LocalCluster(base, nodes, cluster=f"nbd{os.getpid()}{base.name}", fast_zk=True,
                     sheep_args=["--session-timeout", "4", *sheep_args])
    failed_before = request.session.testsfailed
    try:
        c.start()
        api_json(c.sheep[0], "/cluster/format", "POST", json={"copies": copies})
        wait_epoch(c.sheep, 1)
        yield c
    finally:
        if request.session.testsfailed > failed_before:
            print(c.logs())
        c.stop()


# -- a long-lived libnbd client -------------------------------------------------------------

_SESSION = r'''
import json, sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)                 # let the server judge ranges and flags
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)

def reply(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()

for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    try:
        if op == "connect":
            h.connect_uri(cmd["uri"]); reply(ok=True)
        elif op == "pwrite":
            flags = nbd.CMD_FLAG_FUA if cmd.get("fua") else 0
            h.pwrite(bytes([cmd["byte"]]) * cmd["length"], cmd["offset"], flags); reply(ok=True)
        elif op == "pread":
            data = h.pread(cmd["length"], cmd["offset"])
            reply(ok=True, bytes=sorted(set(data)))
        elif op == "flush":
            h.flush(); reply(ok=True)
        elif op == "trim":
            h.trim(cmd["length"], cmd["offset"]); reply(ok=True)
        elif op == "block_status":
            # [[length, flags], ...] covering [offset, offset + length)
            out, pos, end = [], cmd["offset"], cmd["offset"] + cmd["length"]
            while pos < end:
                got = []
                def cb(ctx, off, entries, err):
                    if ctx == nbd.CONTEXT_BASE_ALLOCATION:
                        got.extend(entries)
                    return 0
                h.block_status(end - pos, pos, cb)
                for i in range(0, len(got), 2):
                    n = min(got[i], end - pos)
                    if n:
                        out.append([n, got[i + 1]]); pos += n
            reply(ok=True, extents=out)
        elif op == "close":
            h.shutdown(); reply(ok=True); break
    except nbd.Error as e:
        reply(ok=False, errno=e.errno, error=e.string)
'''


class NbdSession:
    """A libnbd client process; each method sends one command and returns its JSON reply."""

    def __init__(self, node, name: str):
        self.uri = uri(node, name)
        self.proc = subprocess.Popen([SYSTEM_PYTHON, "-c", _SESSION], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def call(self, op: str, **kw) -> dict:
        self.send(op, **kw)
        return self.reply()

    def send(self, op: str, **kw) -> None:
        """Send one command without waiting for its reply (`reply` reads it)."""
        if op == "connect":
            kw.setdefault("uri", self.uri)
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def replied(self, timeout: float = 0.0) -> bool:
        """Whether the reply to the command sent is there (within ``timeout``)."""
        import select
        return bool(select.select([self.proc.stdout], [], [], timeout)[0])

    def reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"libnbd session died: {self.proc.stderr.read()}")
        return json.loads(line)

    def must(self, op: str, **kw) -> dict:
        r = self.call(op, **kw)
        assert r["ok"], f"{op} {kw} on {self.uri} failed: {r}"
        return r

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()      # EOF: the loop ends and libnbd disconnects
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()

    def __enter__(self) -> "NbdSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- nbdfuse + loop device ------------------------------------------------------------------

def fuse_loop_unavailable() -> str | None:
    """Why this environment cannot put a filesystem on an NBD export, or None."""
    import shutil
    for tool in ("nbdfuse", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "loop devices and mount need root; tests run as uid %d" % os.geteuid()
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE device in this container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc}"
    if "fuse" not in Path("/proc/filesystems").read_text():
        return "the kernel has no fuse filesystem (/proc/filesystems)"
    if not os.path.exists("/dev/loop-control"):
        return "/dev/loop-control does not exist (no loop devices in this container)"
    return None


class FuseLoop:
    """``uri`` as ``WORKDIR/fuse/disk`` (nbdfuse) and a loop device on it; mount helpers.

    ``close()`` unmounts what ``mount`` mounted, detaches the loop device,
    unmounts the FUSE file and ends nbdfuse, in that order, each step even if an
    earlier one failed.
    """

    def __init__(self, nbd_uri: str, workdir: Path):
        self.workdir = Path(workdir)
        self.fuse_dir = self.workdir / "fuse"
        self.fuse_dir.mkdir(parents=True, exist_ok=True)
        self.disk = self.fuse_dir / "disk"
        self.loop: str | None = None
        self.mounts: list[Path] = []
        self.log = open(self.workdir / "nbdfuse.log", "wb")
        self.proc = subprocess.Popen(["nbdfuse", str(self.disk), nbd_uri], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            poll(lambda: self._disk_ready(), 15, f"nbdfuse to show {self.disk}")
            self.loop = run("losetup", "-f", "--show", self.disk).stdout.decode().strip()
        except BaseException:
            self.close()
            raise

    def _disk_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nbdfuse exited {self.proc.returncode}: "
                                 f"{(self.workdir / 'nbdfuse.log').read_text(errors='replace')}")
        return os.path.ismount(self.fuse_dir) and self.disk.exists()

    def mount(self, where: Path, *opts: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        run("mount", *(("-o", ",".join(opts)) if opts else ()), self.loop, where)
        self.mounts.append(where)
        return where

    def umount(self, where: Path) -> None:
        run("umount", where)
        self.mounts.remove(where)

    def close(self) -> None:
        errors = []
        for where in reversed(list(self.mounts)):
            r = run("umount", where, check=False)
            if r.returncode != 0:
                r = run("umount", "-l", where, check=False)
            if r.returncode == 0:
                self.mounts.remove(where)
            else:
                errors.append(f"umount {where}: {r.stderr.decode(errors='replace')}")
        if self.loop:
            r = run("losetup", "-d", self.loop, check=False)
            if r.returncode != 0:
                errors.append(f"losetup -d {self.loop}: {r.stderr.decode(errors='replace')}")
            self.loop = None
        if os.path.ismount(self.fuse_dir):
            r = run("umount", self.fuse_dir, check=False)
            if r.returncode != 0:
                run("umount", "-l", self.fuse_dir, check=False)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)      # nbdfuse ends when its mount goes away
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.log.close()
        if errors:
            raise AssertionError("cleanup failed: " + "; ".join(errors))

    def __enter__(self) -> "FuseLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def fuse_loop(tmp_path):
    """Factory ``fuse_loop(uri) -> FuseLoop``; everything it made is undone at teardown."""
    reason = fuse_loop_unavailable()
    if reason:
        pytest.skip(f"cannot run a filesystem on an NBD export here: {reason}")
    made: list[FuseLoop] = []

    def make(nbd_uri: str) -> FuseLoop:
        fl = FuseLoop(nbd_uri, tmp_path / f"fl{len(made)}")
        made.append(fl)
        return fl

    try:
        yield make
    finally:
        for fl in reversed(made):
            fl.close()
