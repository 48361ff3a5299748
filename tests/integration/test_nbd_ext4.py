"""A real ext4 filesystem on a VDI, through nbdfuse and a loop device.

There is no kernel NBD client (/dev/nbd*) here, so the export becomes a file
through ``nbdfuse`` (libnbd + FUSE) and a block device through ``losetup``.  The
kernel's ext4 then issues the I/O a VM's filesystem would: metadata at odd
places, journal writes, FLUSH/FUA on sync and unmount, discards.  The
``fuse_loop`` fixture undoes every mount, loop device and nbdfuse process, also
when the test fails.
"""
from __future__ import annotations

import hashlib
import os
import random

from tests.integration.fixtures_nbd import (MiB, create_vdi, fuse_loop, run, store,  # noqa: F401
                                            uri, wait_unlocked)


def tree_digest(root) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root`` (lost+found aside)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_ext4_written_through_one_node_is_clean_and_identical_through_another(
        cluster_factory, fuse_loop, tmp_path):
    cluster = cluster_factory(2, copies=2)
    a, b = cluster.sheep
    create_vdi(a, "fs", 128 * MiB)
    rng = random.Random(5)

    # attach through node 0: mkfs.ext4, mount, write files, sync, unmount, detach
    disk = fuse_loop(uri(a, "fs"))
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", disk.loop)
    mnt = disk.mount(tmp_path / "mnt")
    files = {
        "small.txt": b"hello sheepdog\n",
        "odd-size.bin": rng.randbytes(3 * MiB + 12345),      # spans 4 MiB objects unevenly
        "dir/nested/big.bin": rng.randbytes(9 * MiB),
        "dir/empty": b"",
    }
    for name, data in files.items():
        path = mnt / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    written = tree_digest(mnt)
    run("sync", "-f", mnt / "small.txt")
    disk.umount(mnt)
    disk.close()

    # the detach released the VDI lock; the data is on both replicas
    wait_unlocked(b, "fs")
    assert store(a)["objects"] > 0 and store(b)["objects"] == store(a)["objects"]

    # attach through node 1: fsck finds nothing to fix, the files are identical
    again = fuse_loop(uri(b, "fs"))
    fsck = run("fsck.ext4", "-n", "-f", again.loop, check=False)
    assert fsck.returncode == 0, fsck.stdout.decode() + fsck.stderr.decode()
    mnt2 = again.mount(tmp_path / "mnt2", "ro")
    assert tree_digest(mnt2) == written
    assert (mnt2 / "odd-size.bin").read_bytes() == files["odd-size.bin"]
    again.umount(mnt2)
    again.close()
    wait_unlocked(a, "fs")
