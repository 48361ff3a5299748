"""Live migration of a running qemu between two hypervisors' gateways, with real qemu.

Two `qemu-system-x86_64` (TCG, no guest OS: the disk is written and read from qemu's
block layer with HMP qemu-io, through the same NBD client a guest's I/O uses) on one
machine: the source attached through one gateway sheep, the destination (``-incoming``)
through another.  The destination attaches while the source holds the write right;
QMP ``migrate``; the source stops, drains and flushes; the destination's first write
takes the write right.  A ``cont`` on the old source must not change a byte, and
``migrate_cancel`` or kill -9 of either side leaves the VDI consistent and attachable.
"""
from __future__ import annotations

import pytest

from tests.integration.fixtures_cluster import poll
from tests.integration.fixtures_nbd import MiB, attached, check_reads, create_vdi, locks, uri
from tests.integration.qemu_vm import QEMU, free_port, migrate, start_slow_migration, wrote

pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 not installed")


def test_live_migration_moves_the_write_right_and_fences_the_source(hypervisors, vms):
    c, (g1, g2) = hypervisors
    storage = c.sheep[0]
    create_vdi(storage, "vm", 64 * MiB)

    # the VM runs on hypervisor 1 and writes
    src = vms("src", uri(g1, "vm"))
    assert wrote(src.qemu_io("write -P 0xaa 0 64k"))
    generation = locks(storage)["vm"]["generation"]

    # the destination on hypervisor 2 starts and attaches while the source holds the right
    port = free_port()
    dst = vms("dst", uri(g2, "vm"), incoming=port)
    assert dst.status() == "inmigrate"
    lk = locks(storage)["vm"]
    assert (lk["node_id"], lk["generation"]) == (g1.node_id, generation)
    assert [s["node_id"] for s in lk["standbys"]] == [g2.node_id]

    # migrate: the source stops and flushes; it keeps the right until the destination writes
    migrate(src, dst, port)
    assert (src.status(), dst.status()) == ("postmigrate", "running")
    assert locks(storage)["vm"]["node_id"] == g1.node_id

    # the destination's first write takes it, with a new generation
    assert wrote(dst.qemu_io("write -P 0xbb 64k 64k"))
    lk = locks(storage)["vm"]
    assert lk["node_id"] == g2.node_id and lk["generation"] > generation

    # split brain attempt: `cont` on the old source, then a write: EPERM, nothing changes
    src.qmp("cont")
    assert src.status() == "running"
    assert "Operation not permitted" in src.qemu_io("write -P 0xcc 0 4k")
    assert "Operation not permitted" in src.qemu_io("write -P 0xcc 64k 4k")
    check_reads(storage, "vm", "read -P 0xaa 0 64k", "read -P 0xbb 64k 64k")
    assert "read 4096/4096" in src.qemu_io("read -P 0xaa 0 4k")   # it may still read

    # the old source quits cleanly (its FLUSH succeeds); the destination goes on
    assert src.quit() == 0
    assert wrote(dst.qemu_io("write -P 0xdd 1M 64k"))
    dst.qemu_io("flush")
    assert dst.quit() == 0
    poll(lambda: "vm" not in attached(storage) and "vm" not in locks(storage), 15,
         "the VDI to be detached")
    check_reads(c.sheep[2], "vm", "read -P 0xaa 0 64k", "read -P 0xbb 64k 64k",
          "read -P 0xdd 1M 64k", "read -P 0 2M 1M")


def test_a_second_vm_on_the_same_disk_never_writes_while_the_first_is_dirty(hypervisors,
                                                                             vms):
    c, (g1, g2) = hypervisors
    create_vdi(c.sheep[0], "disk", 16 * MiB)
    first = vms("first", uri(g1, "disk"))
    assert wrote(first.qemu_io("write -P 0x11 0 64k"))      # acknowledged, not flushed

    # booted by mistake on another hypervisor: it attaches and reads, its write fails
    second = vms("second", uri(g2, "disk"))
    assert "read 65536/65536" in second.qemu_io("read -P 0x11 0 64k")
    refused = second.qemu_io("write -P 0x22 0 4k")
    assert "Input/output error" in refused, refused
    assert locks(c.sheep[0])["disk"]["node_id"] == g1.node_id
    assert wrote(first.qemu_io("write -P 0x12 64k 4k"))     # the first was never pre-empted
    check_reads(c.sheep[1], "disk", "read -P 0x11 0 64k", "read -P 0x12 64k 4k")


def test_migrate_cancel_leaves_the_source_the_writer(hypervisors, vms):
    c, (g1, g2) = hypervisors
    create_vdi(c.sheep[0], "cancel", 16 * MiB)
    src = vms("src", uri(g1, "cancel"))
    assert wrote(src.qemu_io("write -P 0x31 0 64k"))
    port = free_port()
    dst = vms("dst", uri(g2, "cancel"), incoming=port)

    # a migration slowed to a crawl, cancelled midway
    start_slow_migration(src, port)
    src.qmp("migrate_cancel")
    poll(lambda: src.migration().get("status") == "cancelled", 30, "the cancel")
    assert src.status() == "running"
    dst.stop()                                  # a failed incoming qemu is thrown away

    # the source keeps the right and writes on; the VDI is consistent and attachable
    assert wrote(src.qemu_io("write -P 0x32 64k 64k"))
    assert locks(c.sheep[0])["cancel"]["node_id"] == g1.node_id
    assert src.quit() == 0
    check_reads(c.sheep[2], "cancel", "read -P 0x31 0 64k", "read -P 0x32 64k 64k")


def test_kill_9_of_either_side_leaves_the_vdi_consistent_and_attachable(hypervisors, vms):
    c, (g1, g2) = hypervisors
    create_vdi(c.sheep[0], "k9", 16 * MiB)

    # the source dies in the middle of a (slowed) migration: the destination never ran
    src = vms("src", uri(g1, "k9"))
    assert wrote(src.qemu_io("write -P 0x41 0 64k"))
    port = free_port()
    dst = vms("dst", uri(g2, "k9"), incoming=port)
    start_slow_migration(src, port)
    src.kill()
    dst.stop()
    poll(lambda: "k9" not in locks(c.sheep[0]), 15, "the dead source's right to go")
    check_reads(c.sheep[1], "k9", "read -P 0x41 0 64k")

    # a completed migration, then the destination dies with unflushed writes
    src = vms("src2", uri(g1, "k9"))
    port = free_port()
    dst = vms("dst2", uri(g2, "k9"), incoming=port)
    migrate(src, dst, port)
    assert wrote(dst.qemu_io("write -P 0x42 64k 64k"))     # acknowledged: on every replica
    dst.kill()
    src.quit()
    poll(lambda: "k9" not in locks(c.sheep[0]) and "k9" not in attached(c.sheep[0]), 15,
         "the dead destination's right to go")

    # a new VM attaches anywhere and sees every acknowledged write
    again = vms("again", uri(c.sheep[2], "k9"))
    assert "read 65536/65536" in again.qemu_io("read -P 0x41 0 64k")
    assert "read 65536/65536" in again.qemu_io("read -P 0x42 64k 64k")
    assert wrote(again.qemu_io("write -P 0x43 0 4k"))
    assert again.quit() == 0
