"""lazyfs keeps exactly what was fsynced across a crash (see tests/integration/lazyfs.py).

Every test works through a real mount with plain os calls, pulls the plug with
``crash()`` and mounts again to look at what survived.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.integration.lazyfs import LazyFS

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


@pytest.fixture
def fs(tmp_path):
    lazy = LazyFS(tmp_path / "backing", tmp_path / "mnt")
    lazy.mount()
    try:
        yield lazy
    finally:
        lazy.close()


def put(path, data: bytes, *, offset: int = 0, sync: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def get(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reboot(fs: LazyFS) -> None:
    fs.crash()
    fs.mount()


def test_fsynced_data_survives_and_unsynced_changes_are_lost(fs):
    m = fs.mountpoint
    put(m / "a", b"durable")
    put(m / "b", b"0123456789")
    sync_dir(m)
    put(m / "a", b"LOST", sync=False)                   # unsynced overwrite
    os.truncate(m / "a", 1 << 20)                       # unsynced growth
    os.truncate(m / "b", 3)                             # unsynced shrink
    assert get(m / "a")[:7] == b"LOSTble" and os.stat(m / "a").st_size == 1 << 20
    assert get(m / "b") == b"012"                       # reads see their own writes

    reboot(fs)
    assert get(m / "a") == b"durable"
    assert get(m / "b") == b"0123456789"


def test_names_need_a_directory_fsync(fs):
    m = fs.mountpoint
    put(m / "synced-file-unsynced-name", b"data")       # file fsynced, directory not
    reboot(fs)
    assert os.listdir(m) == []

    put(m / "unsynced-file", b"data", sync=False)       # name durable, contents not
    os.mkdir(m / "d")
    sync_dir(m)
    put(m / "d" / "inner", b"x")                        # d/ itself never fsynced
    reboot(fs)
    assert sorted(os.listdir(m)) == ["d", "unsynced-file"]
    assert get(m / "unsynced-file") == b""
    assert os.listdir(m / "d") == []

    os.unlink(m / "unsynced-file")                      # an unsynced unlink comes back
    reboot(fs)
    assert sorted(os.listdir(m)) == ["d", "unsynced-file"]
    os.unlink(m / "unsynced-file")
    sync_dir(m)
    reboot(fs)
    assert os.listdir(m) == ["d"]


def test_tmp_fsync_rename_dir_fsync_replaces_atomically(fs):
    m = fs.mountpoint
    put(m / "sheep.json", b'{"epoch": 1}')
    sync_dir(m)

    put(m / "sheep.json.tmp", b'{"epoch": 2}')
    os.rename(m / "sheep.json.tmp", m / "sheep.json")   # renamed, directory unsynced
    assert get(m / "sheep.json") == b'{"epoch": 2}'
    reboot(fs)
    assert sorted(os.listdir(m)) == ["sheep.json"]
    assert get(m / "sheep.json") == b'{"epoch": 1}'

    put(m / "sheep.json.tmp", b'{"epoch": 3}')
    os.replace(m / "sheep.json.tmp", m / "sheep.json")
    sync_dir(m)
    reboot(fs)
    assert sorted(os.listdir(m)) == ["sheep.json"]
    assert get(m / "sheep.json") == b'{"epoch": 3}'


def test_rename_between_directories_is_durable_per_directory(fs):
    m = fs.mountpoint
    for d in ("a", "b", "c", "d"):
        os.mkdir(m / d)
    put(m / "a" / "f", b"payload")
    put(m / "c" / "g", b"other")
    for d in ("a", "c", "."):
        sync_dir(m / d)

    os.rename(m / "a" / "f", m / "b" / "f")
    sync_dir(m / "b")                                   # only the destination
    os.rename(m / "c" / "g", m / "d" / "g")
    sync_dir(m / "c")                                   # only the source
    reboot(fs)
    # f comes back under both names (two links of one inode), g under neither.
    assert get(m / "a" / "f") == get(m / "b" / "f") == b"payload"
    assert os.stat(m / "a" / "f").st_ino == os.stat(m / "b" / "f").st_ino
    assert os.stat(m / "b" / "f").st_nlink == 2
    assert os.listdir(m / "c") == [] and os.listdir(m / "d") == []


def test_hard_link_made_durable_survives_unlink_of_the_original(fs):
    m = fs.mountpoint
    os.mkdir(m / "tmp")
    os.mkdir(m / "obj")
    sync_dir(m)
    put(m / "tmp" / "o1", b"object one")                # the daemon's pattern
    os.link(m / "tmp" / "o1", m / "obj" / "o1")
    assert os.stat(m / "obj" / "o1").st_nlink == 2
    assert os.stat(m / "obj" / "o1").st_ino == os.stat(m / "tmp" / "o1").st_ino
    put(m / "obj" / "o1", b"OBJECT", sync=False)        # through the other name
    fsync_file(m / "obj" / "o1")                        # any descriptor of the inode
    sync_dir(m / "obj")
    os.unlink(m / "tmp" / "o1")
    reboot(fs)
    assert os.listdir(m / "tmp") == []
    assert get(m / "obj" / "o1") == b"OBJECT one"
    assert os.stat(m / "obj" / "o1").st_nlink == 1


def test_xattrs_become_durable_with_fsync(fs):
    m = fs.mountpoint
    p = m / "f"
    put(p, b"x")
    sync_dir(m)
    os.setxattr(p, "user.kept", b"1")
    os.setxattr(p, "user.gone", b"2")
    fsync_file(p)
    os.setxattr(p, "user.kept", b"changed")
    os.removexattr(p, "user.gone")
    os.setxattr(p, "user.new", b"3")
    with pytest.raises(FileExistsError):
        os.setxattr(p, "user.new", b"4", os.XATTR_CREATE)
    assert sorted(os.listxattr(p)) == ["user.kept", "user.new"]
    reboot(fs)
    assert sorted(os.listxattr(p)) == ["user.gone", "user.kept"]
    assert os.getxattr(p, "user.kept") == b"1"
    with pytest.raises(OSError) as exc:
        os.getxattr(p, "user.new")
    assert exc.value.errno == errno.ENODATA


def test_clean_unmount_keeps_everything(fs):
    m = fs.mountpoint
    os.makedirs(m / "d" / "e")
    put(m / "d" / "e" / "f", b"never fsynced", sync=False)
    put(m / "d" / "sparse", b"tail", offset=8 << 20, sync=False)
    os.link(m / "d" / "e" / "f", m / "g")
    os.setxattr(m / "g", "user.k", b"v")
    os.chmod(m / "g", 0o600)
    os.utime(m / "g", ns=(1_000_000_000, 2_000_000_000))
    fs.unmount()
    fs.mount()
    assert get(m / "d" / "e" / "f") == b"never fsynced"
    assert get(m / "d" / "sparse") == bytes(8 << 20) + b"tail"
    assert os.stat(m / "d" / "sparse").st_blocks * 512 < 1 << 20
    st = os.stat(m / "g")
    assert (st.st_nlink, st.st_mode & 0o777, st.st_mtime_ns) == (2, 0o600, 2_000_000_000)
    assert os.getxattr(m / "d" / "e" / "f", "user.k") == b"v"


def test_injected_eio_fails_fsync_and_drops_unsynced_data(fs):
    m = fs.mountpoint
    os.mkdir(m / "obj")
    sync_dir(m)
    put(m / "obj" / "o", b"AAAA")
    put(m / "other", b"other")
    sync_dir(m / "obj")
    sync_dir(m)

    fd = os.open(m / "obj" / "o", os.O_RDWR)
    try:
        os.pwrite(fd, b"BBBBBBBB", 0)
        fs.fail_fsync("obj/", count=2)
        put(m / "other", b"OTHER")                      # outside the prefix: fine
        with pytest.raises(OSError) as exc:
            os.fsync(fd)
        assert exc.value.errno == errno.EIO
        assert os.pread(fd, 100, 0) == b"AAAA"          # dirty data dropped, like Linux
        assert os.fstat(fd).st_size == 4
        os.pwrite(fd, b"CC", 0)
        with pytest.raises(OSError):
            os.fsync(fd)                                # the second injected failure
        os.fsync(fd)                                    # then fsync succeeds again...
        assert os.pread(fd, 100, 0) == b"AAAA"          # ...but the data is gone
    finally:
        os.close(fd)
    stats = fs.stats()
    assert stats["failed_fsync"] == 2 and stats["faults"] == []
    reboot(fs)
    assert get(m / "obj" / "o") == b"AAAA"
    assert get(m / "other") == b"OTHER"


WRITER = textwrap.dedent("""
    import os, sys, time
    path = sys.argv[1]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"durable!", 0)
    os.fsync(fd)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.pwrite(fd, b"LOST", 0)
    os.pwrite(fd, b"x" * 65536, 1 << 20)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_crash_after_a_writer_is_killed_and_while_a_file_is_open(fs):
    m = fs.mountpoint
    procs = []
    try:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(m / "w")],
                                  stdout=subprocess.PIPE)
        procs.append(writer)
        assert writer.stdout.readline() == b"ready\n"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        assert get(m / "w")[:8] == b"LOSTble!"          # the kill flushed nothing...
        holder = subprocess.Popen([sys.executable, "-c",
                                   "import sys, time; f = open(sys.argv[1], 'rb'); "
                                   "print('open', flush=True); time.sleep(60)", str(m / "w")],
                                  stdout=subprocess.PIPE)
        procs.append(holder)
        assert holder.stdout.readline() == b"open\n"
        started = time.monotonic()
        reboot(fs)                                      # ...a file is still open
        assert time.monotonic() - started < 5
        assert get(m / "w") == b"durable!"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def test_posix_operations_the_daemon_uses(fs, tmp_path):
    m = fs.mountpoint
    fd = os.open(m / "x", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    with pytest.raises(FileExistsError):
        os.open(m / "x", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.pwrite(fd, b"end", 4 << 20)                      # sparse: a hole before it
    assert os.pread(fd, 8, 100) == bytes(8)
    assert os.fstat(fd).st_size == (4 << 20) + 3
    assert os.fstat(fd).st_blocks * 512 < 1 << 20
    try:
        assert os.preadv(fd, [bytearray(3)], 4 << 20, os.RWF_NOWAIT) == 3
    except OSError as exc:
        assert exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP)
    os.ftruncate(fd, 10)
    assert os.fstat(fd).st_size == 10
    os.fsync(fd)
    os.close(fd)
    put(m / "y", b"yyy")
    os.rename(m / "y", m / "x")                         # over an existing file
    assert get(m / "x") == b"yyy" and sorted(os.listdir(m)) == ["x"]
    os.makedirs(m / "d" / "e")
    with pytest.raises(OSError) as exc:
        os.rmdir(m / "d")
    assert exc.value.errno == errno.ENOTEMPTY
    os.rmdir(m / "d" / "e")
    assert os.stat(m / "d").st_nlink == 2
    os.chmod(m / "x", 0o640)
    os.utime(m / "x", ns=(5_000_000_000, 6_000_000_000))
    st = os.stat(m / "x")
    assert (st.st_mode & 0o777, st.st_mtime_ns, st.st_atime_ns) == (0o640, 6 * 10**9, 5 * 10**9)
    assert os.statvfs(m).f_blocks == os.statvfs(tmp_path).f_blocks
    fd = os.open(m / "x", os.O_RDWR)
    os.unlink(m / "x")                                  # an open, unlinked file still works
    os.pwrite(fd, b"Z", 0)
    assert os.pread(fd, 3, 0) == b"Zyy"
    os.fsync(fd)
    os.close(fd)
    sync_dir(m / "d")
    sync_dir(m)
    reboot(fs)
    assert os.listdir(m) == ["d"]


def test_a_4mib_file_in_4kib_writes_is_fast_and_stays_sparse_when_durable(fs):
    m = fs.mountpoint
    block = os.urandom(4096)
    started = time.monotonic()
    fd = os.open(m / "big", os.O_RDWR | os.O_CREAT, 0o644)
    for i in range(1024):
        os.pwrite(fd, block, i * 4096)
    os.pwrite(fd, block, 64 << 20)                      # and a hole of 60 MiB
    os.fsync(fd)
    os.close(fd)
    sync_dir(m)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"4 MiB in 4 KiB writes took {elapsed:.2f}s"
    reboot(fs)
    with open(m / "big", "rb") as f:
        assert f.read(4096) == block
        f.seek((4 << 20) - 4096)
        assert f.read(4096) == block
        assert f.read(4096) == bytes(4096)
        f.seek(64 << 20)
        assert f.read() == block
    assert os.stat(m / "big").st_blocks * 512 < 6 << 20
