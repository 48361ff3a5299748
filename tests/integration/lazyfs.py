"""lazyfs: a FUSE filesystem that forgets everything not fsynced when the plug is pulled.

For power-loss tests, in the spirit of Jepsen's lazyfs: a storage daemon runs on the
mount, the test "pulls the plug" (`LazyFS.crash`), mounts again and checks that what
the daemon flushed is there and that nothing depends on what it did not flush.

Theory of operation
-------------------
The filesystem is mounted at MOUNTPOINT and keeps its state in BACKING, a directory
the test owns.  Two states exist side by side:

* The **live** state is what every operation sees at once, like a page cache: reads
  see their own writes, names appear and disappear immediately.  It is kept in the
  FUSE process's memory (namespace, modes, xattrs) and in ``BACKING/live/<ino>``
  (file contents, real sparse files, so holes read as zeros and ``st_blocks``
  follows allocation).
* The **durable** state is what survives a power loss.  It is kept per inode (not
  per path: a file keeps its identity across rename and link) in
  ``BACKING/durable/data/<ino>`` (contents) and ``BACKING/durable/journal`` (one JSON
  line per durable change, each holding whole inode records: mode, owner, times,
  xattrs, and a file's size or a directory's entries ``{name: ino}``).

Durability rules (the exact contract):

1. ``fsync``/``fdatasync`` of a file (any descriptor of it, any of its names) makes
   that inode's contents, size, xattrs, mode, owner and times durable.  It makes no
   name durable.
2. ``fsync`` of a directory (``open(dir, O_RDONLY|O_DIRECTORY)`` + ``fsync``; FUSE
   calls fsyncdir) makes that directory's list of entries durable as it is now (a
   snapshot of create, mkdir, link, unlink, rename and rmdir results in that
   directory), plus the directory's own mode and xattrs.  Nothing else: not the
   contents of the files it names, not its subdirectories' entries.
3. A name made durable for an inode that was never fsynced brings the inode back
   empty: a file of size 0 without xattrs, an empty directory.
4. An inode whose contents were fsynced but that no durable entry names does not
   come back.
5. Each directory's entries are durable independently.  So a rename between two
   directories needs both fsynced: with only the destination fsynced the file comes
   back under both names (two links); with only the source fsynced it is gone.  A
   directory that would come back under two names keeps the first one found
   (depth first from the root, names sorted) and loses the others.
6. A crash while an fsync is in progress (it has not returned) may leave that file
   with a mix of its old durable and new contents, like a real disk; fsyncs that
   returned are never lost.  A crash never tears the journal: a partly written last
   line is ignored.

A crash (`LazyFS.crash`) SIGKILLs the FUSE process, detaches the mount
(``fusermount3 -uz``) and rewrites BACKING to hold exactly the durable state
(`recover`: replay and compact the journal, drop unreachable inodes, delete
``live/``).  The next mount rebuilds the live state from it.  Because the durable
state is written as the operations happen, killing the FUSE process at any moment
loses nothing durable.  A clean unmount (`LazyFS.unmount`, SIGTERM, ``fusermount3
-u``) is a clean shutdown: everything is made durable first.

Fault injection: `LazyFS.fail_fsync(prefix, count)` makes the next ``count`` fsyncs
of files whose path (relative to the mount root, e.g. ``"obj/"``) starts with
``prefix`` fail with EIO.  As on Linux, where a failed fsync drops the dirty pages,
the file's unsynced contents and size are then discarded from the live state too
(it reads as its durable version; its xattrs stay as they are) and the next fsync
succeeds.

The FUSE process (``python -m tests.integration.lazyfs BACKING MOUNTPOINT``) is
controlled through its stdin/stdout: one JSON request per line on stdin, one JSON
answer per line on stdout (``{"ready": true}`` is printed once mounted).  When stdin
closes (the test process died) it detaches the mount and exits.  Mounted with
``direct_io`` and no attribute cache, so the kernel caches nothing that could hide
a discarded write; ``hard_remove`` and ``use_ino``, so unlinked open files keep
working and hard links show one inode number.

Limits: an unlinked file that is still open can be read, written, truncated, fsynced
and closed, but not fstat'ed (ESTALE: libfuse no longer has a path for it), chmod'ed
or given xattrs.  ``preadv2(RWF_NOWAIT)`` fails with EOPNOTSUPP or EAGAIN.  No
symlinks, device nodes, fallocate, lseek SEEK_DATA/SEEK_HOLE or RENAME_EXCHANGE;
locks are the kernel's local ones; permissions are not checked (run it as root).
"""

from __future__ import annotations

import argparse
import errno
import functools
import itertools
import json
import logging
import os
import re
import resource
import select
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import mfusepy
from mfusepy import FuseOSError

log = logging.getLogger(__name__)

ROOT = 1                        # the root directory's inode number
CHUNK = 64 * 1024               # granularity of the dirty-range tracking
RENAME_NOREPLACE = 1
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


# ---------------------------------------------------------------- the durable image

class _Image:
    """Paths inside BACKING."""

    def __init__(self, backing) -> None:
        self.backing = str(backing)
        self.journal = os.path.join(self.backing, "durable", "journal")
        self.data_dir = os.path.join(self.backing, "durable", "data")
        self.live_dir = os.path.join(self.backing, "live")

    def data(self, ino: int) -> str:
        return os.path.join(self.data_dir, str(ino))

    def live(self, ino: int) -> str:
        return os.path.join(self.live_dir, str(ino))


def _root_record() -> dict:
    now = time.time_ns()
    return {"ino": ROOT, "mode": stat.S_IFDIR | 0o755, "uid": os.getuid(), "gid": os.getgid(),
            "atime": now, "mtime": now, "ctime": now, "xattrs": {}, "entries": {}}


def _write_snapshot(img: _Image, records) -> None:
    tmp = img.journal + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps({"r": list(records)}, separators=(",", ":")) + "\n")
    os.replace(tmp, img.journal)


def recover(backing) -> dict[int, dict]:
    """Rewrite BACKING to hold exactly its durable state; return its inode records.

    Replays the journal (a torn last line is ignored), keeps what the root reaches
    (rules 4 and 5 of the module docstring), cuts data files to their durable size,
    deletes the others, compacts the journal and empties ``live/``.  Idempotent.
    """
    img = _Image(backing)
    os.makedirs(img.data_dir, exist_ok=True)
    records: dict[int, dict] = {}
    try:
        with open(img.journal, "rb") as f:
            for line in f:
                try:
                    batch = json.loads(line)["r"]
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: ignoring a torn journal line", img.journal)
                    continue
                for rec in batch:
                    records[rec["ino"]] = rec
    except FileNotFoundError:
        pass
    records.setdefault(ROOT, _root_record())

    reachable: dict[int, dict] = {}
    stack, seen = [ROOT], {ROOT}
    while stack:
        rec = records[stack.pop()]
        reachable[rec["ino"]] = rec
        if "entries" not in rec:
            continue
        kept = {}
        for name in sorted(rec["entries"]):
            child = rec["entries"][name]
            crec = records.get(child)
            if crec is None or ("entries" in crec and child in seen):
                continue        # dangling, or a second name for a directory
            if child not in seen:
                seen.add(child)
                stack.append(child)
            kept[name] = child
        rec["entries"] = kept

    for name in os.listdir(img.data_dir):
        path = os.path.join(img.data_dir, name)
        rec = reachable.get(int(name)) if name.isdigit() else None
        if rec is None or "entries" in rec:
            os.unlink(path)
        else:
            os.truncate(path, rec["size"])
    _write_snapshot(img, reachable.values())
    shutil.rmtree(img.live_dir, ignore_errors=True)
    os.makedirs(img.live_dir)
    return reachable


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, length, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = os.pwrite(dst, os.pread(src, min(length, 1 << 20), offset), offset)
        if n == 0:
            break
        offset += n
        length -= n


def _copy_data(src: int, dst: int, start: int, end: int) -> None:
    """Copy the data (not the holes) of src in [start, end) to the same offsets of dst."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return          # only a hole up to the end of the file
            raise
        if data >= end:
            return
        hole = min(os.lseek(src, data, os.SEEK_HOLE), end)
        _copy_range(src, dst, data, hole - data)
        pos = hole


def _clone(src_path: str, dst_path: str, size: int) -> None:
    """dst := the first ``size`` bytes of src (a missing src reads as empty), sparse."""
    dst = os.open(dst_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            src = os.open(src_path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                _copy_data(src, dst, 0, size)
            finally:
                os.close(src)
        os.ftruncate(dst, size)
    finally:
        os.close(dst)


def _runs(chunks: set[int]):
    """Coalesce chunk numbers into [first, last + 1) runs."""
    first = last = None
    for c in sorted(chunks):
        if last is not None and c == last + 1:
            last = c
            continue
        if first is not None:
            yield first, last + 1
        first = last = c
    if first is not None:
        yield first, last + 1


# ---------------------------------------------------------------- the FUSE filesystem

class _Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "atime", "mtime", "ctime", "xattrs", "links",
                 "entries", "subdirs", "fd", "opens", "dirty", "low")

    def __init__(self, rec: dict) -> None:
        self.ino = rec["ino"]
        self.mode = rec["mode"]
        self.uid, self.gid = rec["uid"], rec["gid"]
        self.atime, self.mtime, self.ctime = rec["atime"], rec["mtime"], rec["ctime"]
        self.xattrs = {k: bytes.fromhex(v) for k, v in rec["xattrs"].items()}
        self.entries: dict[str, int] | None = (dict(rec["entries"]) if "entries" in rec
                                               else None)
        self.links = 0          # live names
        self.subdirs = 0        # live subdirectories (a directory's st_nlink - 2)
        self.fd: int | None = None
        self.opens = 0          # open FUSE handles
        self.dirty: set[int] = set()            # chunks written since the last fsync
        self.low = rec.get("size", 0)           # lowest size since the last fsync

    @property
    def is_dir(self) -> bool:
        return self.entries is not None

    def touch(self, *, data: bool = True) -> None:
        self.ctime = now = time.time_ns()
        if data:
            self.mtime = now


def _locked(method):
    @functools.wraps(method)
    def wrapper(self, *args):
        with self.mutex:
            return method(self, *args)
    return wrapper


class LazyOps(mfusepy.Operations):
    """The filesystem (runs in the FUSE process).  Every operation holds ``mutex``."""

    use_ns = True

    def __init__(self, backing) -> None:
        self.img = _Image(backing)
        self.mutex = threading.Lock()
        self.reply = None                       # the control channel's answers
        self.durable = recover(backing)         # ino -> durable record
        self.dref: dict[int, int] = {}          # ino -> durable entries naming it
        self.inodes: dict[int, _Inode] = {}     # the live inodes
        for ino, rec in self.durable.items():
            node = self.inodes[ino] = _Inode(rec)
            if not node.is_dir:
                _clone(self.img.data(ino), self.img.live(ino), rec["size"])
        for node in list(self.inodes.values()):
            for child in (node.entries or {}).values():
                self.dref[child] = self.dref.get(child, 0) + 1
                self.inodes[child].links += 1
                node.subdirs += self.inodes[child].is_dir
        self.next_ino = max(self.durable) + 1
        self.handles: dict[int, tuple[int, int]] = {}   # fh -> (ino, open flags)
        self.fhs = itertools.count(1)
        self.faults: list[list] = []            # [path prefix, fsyncs left to fail]
        self.counters = {"fsync": 0, "fsyncdir": 0, "failed_fsync": 0}
        self.journal_fd = os.open(self.img.journal, os.O_WRONLY | os.O_APPEND)
        self.journal_records = len(self.durable)

    # ------------------------------------------------------------ helpers

    def _lookup(self, path: str) -> _Inode:
        node = self.inodes[ROOT]
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            node = self.inodes[ino]
        return node

    def _parent(self, path: str) -> tuple[_Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head)
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> _Inode:
        if fh is not None and fh in self.handles:
            return self.inodes[self.handles[fh][0]]
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self._lookup(path)

    def _new_inode(self, mode: int) -> _Inode:
        uid, gid, _ = mfusepy.fuse_get_context()
        now = time.time_ns()
        rec = {"ino": self.next_ino, "mode": mode, "uid": uid, "gid": gid, "atime": now,
               "mtime": now, "ctime": now, "xattrs": {}}
        if stat.S_ISDIR(mode):
            rec["entries"] = {}
        self.next_ino += 1
        node = self.inodes[rec["ino"]] = _Inode(rec)
        return node

    def _fd(self, node: _Inode) -> int:
        if node.fd is None:
            node.fd = os.open(self.img.live(node.ino), os.O_RDWR)
        return node.fd

    def _release_fd(self, node: _Inode) -> None:
        if node.opens == 0 and node.fd is not None:
            os.close(node.fd)
            node.fd = None

    def _open_handle(self, node: _Inode, flags: int) -> int:
        fh = next(self.fhs)
        self.handles[fh] = (node.ino, flags)
        node.opens += 1
        return fh

    def _close_handle(self, fh: int) -> None:
        ino, _ = self.handles.pop(fh)
        node = self.inodes[ino]
        node.opens -= 1
        self._release_fd(node)
        self._forget(node)

    def _add_entry(self, parent: _Inode, name: str, node: _Inode) -> None:
        parent.entries[name] = node.ino
        parent.subdirs += node.is_dir
        parent.touch()
        node.links += 1
        node.touch(data=False)

    def _remove_entry(self, parent: _Inode, name: str) -> None:
        node = self.inodes[parent.entries.pop(name)]
        parent.subdirs -= node.is_dir
        parent.touch()
        node.links -= 1
        node.touch(data=False)
        self._forget(node)

    def _forget(self, node: _Inode) -> None:
        """Drop a live inode that has no name and no open handle."""
        if node.links or node.opens or node.ino == ROOT:
            return
        del self.inodes[node.ino]
        if not node.is_dir:
            os.unlink(self.img.live(node.ino))
        self._gc_durable(node.ino)

    def _gc_durable(self, ino: int) -> None:
        """Drop a durable record that is neither live nor named by a durable entry."""
        if ino == ROOT or ino in self.inodes or self.dref.get(ino, 0):
            return
        self.dref.pop(ino, None)
        rec = self.durable.pop(ino, None)
        if rec is None:
            return
        if "entries" in rec:
            for child in rec["entries"].values():
                self._unref(child)
        else:
            try:
                os.unlink(self.img.data(ino))
            except FileNotFoundError:
                pass

    def _unref(self, ino: int) -> None:
        self.dref[ino] -= 1
        if not self.dref[ino]:
            self._gc_durable(ino)

    def _record(self, node: _Inode, *, empty: bool = False, size: int = 0) -> dict:
        rec = {"ino": node.ino, "mode": node.mode, "uid": node.uid, "gid": node.gid,
               "atime": node.atime, "mtime": node.mtime, "ctime": node.ctime,
               "xattrs": {} if empty else {k: v.hex() for k, v in node.xattrs.items()}}
        if node.is_dir:
            rec["entries"] = {} if empty else dict(node.entries)
        else:
            rec["size"] = size
        return rec

    def _append(self, records: list[dict]) -> None:
        line = (json.dumps({"r": records}, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self.journal_fd, view):]
        self.journal_records += len(records)
        if self.journal_records > max(1000, 4 * len(self.durable)):
            self._compact()

    def _compact(self) -> None:
        _write_snapshot(self.img, self.durable.values())
        os.close(self.journal_fd)
        self.journal_fd = os.open(self.img.journal, os.O_WRONLY | os.O_APPEND)
        self.journal_records = len(self.durable)

    def _sync_file(self, node: _Inode) -> dict:
        """Rule 1: make the file's contents, size and metadata durable."""
        fd = self._fd(node)
        try:
            size = os.fstat(fd).st_size
            if node.dirty or node.low != size:
                dfd = os.open(self.img.data(node.ino), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    os.ftruncate(dfd, node.low)
                    for first, end in _runs(node.dirty):
                        _copy_data(fd, dfd, first * CHUNK, min(end * CHUNK, size))
                    os.ftruncate(dfd, size)
                finally:
                    os.close(dfd)
            node.dirty.clear()
            node.low = size
        finally:
            self._release_fd(node)
        rec = self.durable[node.ino] = self._record(node, size=size)
        return rec

    def _sync_dir(self, node: _Inode) -> list[dict]:
        """Rules 2 and 3: make the directory's entries durable."""
        records = []
        for child in node.entries.values():
            if child not in self.durable:
                rec = self.durable[child] = self._record(self.inodes[child], empty=True)
                records.append(rec)
        rec = self._record(node)
        old = self.durable.get(node.ino)
        self.durable[node.ino] = rec
        records.append(rec)
        for child in rec["entries"].values():
            self.dref[child] = self.dref.get(child, 0) + 1
        for child in (old or {}).get("entries", {}).values():
            self._unref(child)
        return records

    def _sync_all(self) -> None:
        nodes = list(self.inodes.values())
        for node in nodes:
            if not node.is_dir:
                self._sync_file(node)
        for node in nodes:
            if node.is_dir:
                self._sync_dir(node)
        self._compact()

    def _discard_unsynced(self, node: _Inode) -> None:
        """After a failed fsync: the live contents go back to the durable ones."""
        size = self.durable[node.ino]["size"] if node.ino in self.durable else 0
        live = self.img.live(node.ino)
        _clone(self.img.data(node.ino), live + ".discard", size)
        os.replace(live + ".discard", live)
        if node.fd is not None:
            os.close(node.fd)
            node.fd = os.open(live, os.O_RDWR)
        node.dirty.clear()
        node.low = size

    def _truncate(self, node: _Inode, length: int) -> None:
        if node.is_dir:
            raise FuseOSError(errno.EISDIR)
        try:
            os.ftruncate(self._fd(node), length)
        finally:
            self._release_fd(node)
        node.low = min(node.low, length)
        node.touch()

    # ------------------------------------------------------------ control channel

    def control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "fail_fsync":
            self.faults.append([req["prefix"], int(req.get("count", 1))])
        elif cmd == "clear_faults":
            self.faults.clear()
        elif cmd == "sync":
            self._sync_all()
        elif cmd == "stats":
            return {"ok": True, **self.counters, "faults": self.faults}
        else:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return {"ok": True}

    def _say(self, msg: dict) -> None:
        if self.reply is not None:
            self.reply.write(json.dumps(msg) + "\n")
            self.reply.flush()

    # ------------------------------------------------------------ FUSE operations

    @_locked
    def init_with_config(self, conn, config) -> None:
        if config is not None:
            config.use_ino = 1
            config.hard_remove = 1
            config.direct_io = 1
            config.attr_timeout = 0.0
            config.negative_timeout = 0.0
        self._say({"ready": True})

    @_locked
    def destroy(self, path) -> None:
        self._sync_all()
        log.info("lazyfs %s: clean shutdown, everything made durable", self.img.backing)

    @_locked
    def getattr(self, path, fh=None):
        node = self._node(path, fh)
        st = {"st_ino": node.ino, "st_mode": node.mode, "st_uid": node.uid,
              "st_gid": node.gid, "st_atime": node.atime, "st_mtime": node.mtime,
              "st_ctime": node.ctime, "st_blksize": 4096}
        if node.is_dir:
            st.update(st_nlink=2 + node.subdirs, st_size=4096, st_blocks=8)
        else:
            real = (os.fstat(node.fd) if node.fd is not None
                    else os.stat(self.img.live(node.ino)))
            st.update(st_nlink=node.links, st_size=real.st_size, st_blocks=real.st_blocks)
        return st

    @_locked
    def statfs(self, path):
        sv = os.statvfs(self.img.backing)
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                            "f_bavail", "f_files", "f_ffree", "f_favail",
                                            "f_namemax")}

    @_locked
    def create(self, path, mode, flags):
        parent, name = self._parent(path)
        if name in parent.entries:
            if flags & os.O_EXCL:
                raise FuseOSError(errno.EEXIST)
            node = self.inodes[parent.entries[name]]
            if node.is_dir:
                raise FuseOSError(errno.EISDIR)
            if flags & os.O_TRUNC:
                self._truncate(node, 0)
            return self._open_handle(node, flags)
        node = self._new_inode(stat.S_IFREG | (mode & 0o7777))
        node.fd = os.open(self.img.live(node.ino), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._add_entry(parent, name, node)
        return self._open_handle(node, flags)

    @_locked
    def open(self, path, flags):
        node = self._lookup(path)
        if node.is_dir:
            raise FuseOSError(errno.EISDIR)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            self._truncate(node, 0)
        return self._open_handle(node, flags)

    @_locked
    def release(self, path, fh):
        self._close_handle(fh)

    @_locked
    def read(self, path, size, offset, fh):
        node = self.inodes[self.handles[fh][0]]
        return os.pread(self._fd(node), size, offset)

    @_locked
    def write(self, path, data, offset, fh):
        ino, flags = self.handles[fh]
        node = self.inodes[ino]
        fd = self._fd(node)
        if flags & os.O_APPEND:
            offset = os.fstat(fd).st_size
        n = os.pwrite(fd, data, offset)
        if n:
            node.dirty.update(range(offset // CHUNK, (offset + n - 1) // CHUNK + 1))
        node.touch()
        return n

    @_locked
    def truncate(self, path, length, fh=None):
        self._truncate(self._node(path, fh), length)

    @_locked
    def fsync(self, path, datasync, fh):
        node = self._node(path, fh)
        if node.is_dir:         # the kernel sends fsyncdir instead; just in case
            self.counters["fsyncdir"] += 1
            self._append(self._sync_dir(node))
            return
        self.counters["fsync"] += 1
        rel = (path or "").lstrip("/")
        for rule in self.faults:
            if path is not None and rel.startswith(rule[0]):
                rule[1] -= 1
                if rule[1] <= 0:
                    self.faults.remove(rule)
                self.counters["failed_fsync"] += 1
                self._discard_unsynced(node)
                log.warning("lazyfs: injected EIO on fsync of %s; its unsynced data is "
                            "discarded", rel)
                raise FuseOSError(errno.EIO)
        self._append([self._sync_file(node)])

    @_locked
    def opendir(self, path):
        node = self._lookup(path)
        if not node.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return self._open_handle(node, 0)

    @_locked
    def releasedir(self, path, fh):
        self._close_handle(fh)

    @_locked
    def readdir(self, path, fh):
        node = self._node(path, fh)
        out = [(".", {"st_mode": stat.S_IFDIR, "st_ino": node.ino}, 0),
               ("..", {"st_mode": stat.S_IFDIR}, 0)]
        for name, ino in node.entries.items():
            out.append((name, {"st_mode": self.inodes[ino].mode, "st_ino": ino}, 0))
        return out

    @_locked
    def fsyncdir(self, path, datasync, fh):
        node = self._node(path, fh)
        self.counters["fsyncdir"] += 1
        self._append(self._sync_dir(node))

    @_locked
    def mkdir(self, path, mode):
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        self._add_entry(parent, name, self._new_inode(stat.S_IFDIR | (mode & 0o7777)))

    @_locked
    def rmdir(self, path):
        parent, name = self._parent(path)
        if name not in parent.entries:
            raise FuseOSError(errno.ENOENT)
        node = self.inodes[parent.entries[name]]
        if not node.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        if node.entries:
            raise FuseOSError(errno.ENOTEMPTY)
        self._remove_entry(parent, name)

    @_locked
    def unlink(self, path):
        parent, name = self._parent(path)
        if name not in parent.entries:
            raise FuseOSError(errno.ENOENT)
        if self.inodes[parent.entries[name]].is_dir:
            raise FuseOSError(errno.EISDIR)
        self._remove_entry(parent, name)

    @_locked
    def link(self, target, source):
        node = self._lookup(source)
        if node.is_dir:
            raise FuseOSError(errno.EPERM)
        parent, name = self._parent(target)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        self._add_entry(parent, name, node)

    @_locked
    def rename(self, old, new, flags=0):
        if flags & ~RENAME_NOREPLACE:
            raise FuseOSError(errno.EINVAL)
        src_dir, src_name = self._parent(old)
        if src_name not in src_dir.entries:
            raise FuseOSError(errno.ENOENT)
        node = self.inodes[src_dir.entries[src_name]]
        dst_dir, dst_name = self._parent(new)
        if dst_name in dst_dir.entries:
            if flags & RENAME_NOREPLACE:
                raise FuseOSError(errno.EEXIST)
            victim = self.inodes[dst_dir.entries[dst_name]]
            if victim is node:
                return
            if victim.is_dir and not node.is_dir:
                raise FuseOSError(errno.EISDIR)
            if node.is_dir and not victim.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if victim.is_dir and victim.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            self._remove_entry(dst_dir, dst_name)
        del src_dir.entries[src_name]
        src_dir.subdirs -= node.is_dir
        src_dir.touch()
        dst_dir.entries[dst_name] = node.ino
        dst_dir.subdirs += node.is_dir
        dst_dir.touch()
        node.touch(data=False)

    @_locked
    def chmod(self, path, mode):
        node = self._lookup(path)
        node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        node.touch(data=False)

    @_locked
    def chown(self, path, uid, gid):
        node = self._lookup(path)
        if uid != -1:
            node.uid = uid
        if gid != -1:
            node.gid = gid
        node.touch(data=False)

    @_locked
    def utimens(self, path, times=None):
        node = self._lookup(path)
        now = time.time_ns()
        atime, mtime = times if times is not None else (UTIME_NOW, UTIME_NOW)
        if atime != UTIME_OMIT:
            node.atime = now if atime == UTIME_NOW else atime
        if mtime != UTIME_OMIT:
            node.mtime = now if mtime == UTIME_NOW else mtime
        node.ctime = now

    @_locked
    def getxattr(self, path, name, *args):
        try:
            return self._lookup(path).xattrs[name]
        except KeyError:
            raise FuseOSError(errno.ENODATA) from None

    @_locked
    def listxattr(self, path):
        return list(self._lookup(path).xattrs)

    @_locked
    def setxattr(self, path, name, value, options, *args):
        node = self._lookup(path)
        if options & os.XATTR_CREATE and name in node.xattrs:
            raise FuseOSError(errno.EEXIST)
        if options & os.XATTR_REPLACE and name not in node.xattrs:
            raise FuseOSError(errno.ENODATA)
        node.xattrs[name] = bytes(value)
        node.touch(data=False)

    @_locked
    def removexattr(self, path, name):
        node = self._lookup(path)
        if node.xattrs.pop(name, None) is None:
            raise FuseOSError(errno.ENODATA)
        node.touch(data=False)


class _FUSE(mfusepy.FUSE):
    """mfusepy drops rename's flags and ftruncate's handle; pass them on."""

    def rename_fuse_3(self, old, new, flags):
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def truncate_fuse_3(self, path, length, fip):
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(
            None if path is None else path.decode(self.encoding, self.errors), length, fh)


def _lines(fd: int):
    """Lines read from fd with plain os.read (no buffered reader for exit to wait on)."""
    buf = b""
    while chunk := os.read(fd, 65536):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines


def _control_loop(ops: LazyOps, mountpoint: str) -> None:
    for line in _lines(0):
        try:
            req = json.loads(line)
            with ops.mutex:
                resp = ops.control(req)
        except Exception as exc:   # noqa: BLE001 - reported to the caller
            log.exception("lazyfs control request %r failed", line)
            resp = {"ok": False, "error": repr(exc)}
        with ops.mutex:
            ops._say(resp)
    log.warning("lazyfs %s: control channel closed; detaching the mount and exiting",
                mountpoint)
    subprocess.run(["fusermount3", "-u", "-q", "-z", mountpoint], check=False)
    os._exit(1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--debug", action="store_true", help="log every FUSE request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s lazyfs[%(process)d] %(levelname)s %(message)s")
    if not args.debug:
        logging.getLogger("fuse").setLevel(logging.WARNING)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ops = LazyOps(args.backing)
    ops.reply = os.fdopen(os.dup(1), "w")      # answers; stray prints go to stderr
    os.dup2(2, 1)
    threading.Thread(target=_control_loop, args=(ops, args.mountpoint), daemon=True).start()
    _FUSE(ops, args.mountpoint, foreground=True, nothreads=True, debug=args.debug,
          allow_other=os.geteuid() == 0, fsname="lazyfs", subtype="lazyfs")


# ---------------------------------------------------------------- the harness

def _is_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if point == path:
                return True
    return False


class LazyFS:
    """A lazyfs mount run by a child process; see the module docstring.

    ``mount()`` starts it, ``unmount()`` is a clean shutdown (everything becomes
    durable), ``crash()`` a power loss (only the durable state remains).  After
    either, BACKING holds exactly the durable state and ``mount()`` may be called
    again.  As a context manager it mounts and, at the end, unmounts cleanly.
    """

    def __init__(self, backing, mountpoint, *, debug: bool = False) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.debug = debug
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._point = os.path.realpath(self.mountpoint)
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    @property
    def mounted(self) -> bool:
        return self.proc is not None

    def mount(self, timeout: float = 10.0) -> None:
        """Start the FUSE process; return once the mount serves requests."""
        if self.proc is not None:
            raise RuntimeError(f"lazyfs {self.mountpoint} is already mounted")
        cmd = [sys.executable, os.path.abspath(__file__), str(self.backing), self._point]
        if self.debug:
            cmd.append("--debug")
        self._buf = b""
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0)
        try:
            if not self._read(timeout).get("ready"):
                raise RuntimeError("lazyfs did not say it was ready")
        except BaseException:
            self._kill()
            raise
        log.info("lazyfs mounted at %s (backing %s, pid %d)", self._point, self.backing,
                 self.proc.pid)

    def unmount(self, timeout: float = 10.0) -> None:
        """Clean shutdown: everything live becomes durable, then the mount goes away."""
        if self.proc is None:
            return
        self._request("sync", timeout=timeout)
        if not self._umount(lazy=False):
            log.warning("lazyfs %s is busy; detaching it lazily", self._point)
            self._umount(lazy=True)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("lazyfs pid %d did not exit; killing it (everything was synced)",
                        self.proc.pid)
        self._kill()
        recover(self.backing)

    def crash(self) -> None:
        """Power loss: kill the FUSE process, detach the mount, keep only the durable state."""
        if self.proc is None:
            raise RuntimeError(f"lazyfs {self.mountpoint} is not mounted")
        self._kill()
        recover(self.backing)
        log.info("lazyfs %s crashed; %s holds the durable state", self._point, self.backing)

    def close(self) -> None:
        """Unmount cleanly if mounted; if that fails, kill and detach."""
        if self.proc is None:
            return
        try:
            self.unmount(timeout=5.0)
        except Exception:
            log.exception("lazyfs %s: clean unmount failed; killing it", self._point)
            self._kill()

    def fail_fsync(self, prefix: str, count: int = 1) -> None:
        """The next ``count`` fsyncs of files whose mount-relative path starts with
        ``prefix`` fail with EIO and discard that file's unsynced data."""
        self._request("fail_fsync", prefix=prefix, count=count)

    def clear_faults(self) -> None:
        self._request("clear_faults")

    def sync(self) -> None:
        """Make the whole live state durable, like sync(1) without a shutdown."""
        self._request("sync")

    def stats(self) -> dict:
        """Counters: fsync, fsyncdir, failed_fsync, and the pending faults."""
        resp = self._request("stats")
        resp.pop("ok")
        return resp

    def __enter__(self) -> LazyFS:
        self.mount()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _request(self, cmd: str, timeout: float = 10.0, **args) -> dict:
        if self.proc is None:
            raise RuntimeError(f"lazyfs {self.mountpoint} is not mounted")
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        resp = self._read(timeout)
        if not resp.get("ok"):
            raise RuntimeError(f"lazyfs {cmd}: {resp.get('error')}")
        return resp

    def _read(self, timeout: float) -> dict:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"lazyfs {self.mountpoint} did not answer")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"lazyfs process exited (rc={self.proc.wait()})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _umount(self, *, lazy: bool) -> bool:
        cmd = ["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + [self._point]
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return True
        if lazy and _is_mounted(self._point):
            return subprocess.run(["umount", "-l", self._point],
                                  capture_output=True).returncode == 0
        return not _is_mounted(self._point)

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._umount(lazy=True)
        proc.stdin.close()
        proc.stdout.close()


if __name__ == "__main__":
    main()
