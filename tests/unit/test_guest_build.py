"""The test guest's builder: its initramfs archive and kernel module order (pure parts)."""
from __future__ import annotations

import gzip

import pytest

from tests.guest.build import GuestImage, _Cpio, _init_of, _modules_in_order


def test_the_newc_archive_holds_what_was_put_in_and_init_can_be_read_back(tmp_path):
    cpio = _Cpio()
    cpio.dir("bin")
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", b"\x7fELF" + bytes(5), 0o755)
    cpio.file("init", b"#!/bin/busybox sh\necho hi\n", 0o755)
    data = cpio.finish()
    assert data.startswith(b"070701") and data.count(b"070701") == 5 and len(data) % 4 == 0
    assert b"TRAILER!!!" in data
    (tmp_path / "initrd.gz").write_bytes(gzip.compress(data))
    image = GuestImage(tmp_path / "vmlinuz", tmp_path / "initrd.gz")
    assert _init_of(image) == b"#!/bin/busybox sh\necho hi\n"


def module(tmp_path, name: str, depends: str) -> None:
    (tmp_path / f"{name}.ko").write_bytes(b"\0ELF..." + f"depends={depends}\0".encode() + b"x")


def test_modules_come_after_what_they_depend_on(tmp_path):
    module(tmp_path, "ext4", "jbd2,mbcache,crc16")
    for name in ("jbd2", "mbcache", "crc16", "virtio_ring"):
        module(tmp_path, name, "")
    module(tmp_path, "virtio", "virtio_ring")
    module(tmp_path, "virtio_blk", "virtio,virtio_ring")
    order = [p.stem for p in _modules_in_order(tmp_path, ("virtio_blk", "ext4"))]
    assert order == ["virtio_ring", "virtio", "virtio_blk", "jbd2", "mbcache", "crc16", "ext4"]
    with pytest.raises(RuntimeError, match="not_there"):
        _modules_in_order(tmp_path, ("not_there",))
