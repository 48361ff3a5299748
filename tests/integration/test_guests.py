"""Real Linux guests (Debian's kernel, busybox) whose only disk is a VDI.

Each guest runs a verifying workload on /dev/vda (tests/guest/init.sh) and reports
GUEST-OK or GUEST-FAIL on its serial console: raw writes read back on a fresh boot through
another gateway; ext4 files fsynced, the power cut, and verified after journal replay on
the next boot; a guest writing while it is live-migrated, while its gateway sheep
restarts, and while a storage node dies.
"""
from __future__ import annotations

import signal
import subprocess

from tests.integration.fixtures_cluster import poll
from tests.integration.fixtures_nbd import MiB, create_vdi, uri
from tests.integration.qemu_vm import free_port, migrate


def test_raw_writes_read_back_on_a_fresh_boot_through_another_gateway(hypervisors, guests):
    c, (g1, g2) = hypervisors
    create_vdi(c.sheep[0], "raw", 16 * MiB)
    guests("writer", uri(g1, "raw"), "raw-write", seed=11, count=24).finish()
    guests("reader", uri(g2, "raw"), "raw-verify", seed=11, count=24).finish()


def test_ext4_fsynced_files_survive_a_power_cut(hypervisors, guests, tmp_path):
    c, (g1, g2) = hypervisors
    create_vdi(c.sheep[0], "fs", 64 * MiB)
    image = tmp_path / "fs.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "64M"], check=True)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image),
                    uri(c.sheep[0], "fs")], check=True, capture_output=True)
    writer = guests("writer", uri(g1, "fs"), "ext4-write", count=30, pause=60000000)
    writer.wait_for("GUEST-SYNCED")
    writer.kill()                                   # the power goes before the unmount
    guests("reader", uri(g2, "fs"), "ext4-verify", count=30).finish()


def test_a_guest_writing_while_it_is_live_migrated_never_sees_an_error(hypervisors, guests):
    c, (g1, g2) = hypervisors
    create_vdi(c.sheep[0], "live", 32 * MiB)
    opts = dict(seed=21, count=60, pause=100000)
    src = guests("src", uri(g1, "live"), "loop", **opts)
    port = free_port()
    dst = guests("dst", uri(g2, "live"), "loop", incoming=port, **opts)
    src.wait_for("GUEST: progress 10")
    migrate(src, dst, port, vcpu_paused=True)     # TCG: see `migrate`
    assert "GUEST-OK" not in src.console()          # it finished on the destination
    dst.finish()
    assert "GUEST: progress 59" in dst.console()
    assert "I/O error" not in src.console() + dst.console()
    src.quit()
    guests("after", uri(c.sheep[1], "live"), "raw-verify", seed=21, count=60).finish()


def test_a_guest_keeps_writing_through_a_restart_of_its_gateway(hypervisors, guests):
    c, (g1, _) = hypervisors
    create_vdi(c.sheep[0], "upgrade", 32 * MiB)
    guest = guests("guest", uri(g1, "upgrade"), "loop", seed=31, count=40, pause=100000,
                   reconnect_delay=60)
    guest.wait_for("GUEST: progress 5")
    g1.signal(signal.SIGTERM)
    poll(lambda: not g1.running(), 30, "the gateway to stop")
    g1.start()
    g1.wait_ready()
    guest.finish()
    assert "I/O error" not in guest.console()


def test_a_guest_keeps_writing_when_a_storage_node_dies(hypervisors, guests):
    c, (g1, _) = hypervisors
    create_vdi(c.sheep[0], "degraded", 32 * MiB)
    guest = guests("guest", uri(g1, "degraded"), "loop", seed=41, count=40, pause=100000)
    guest.wait_for("GUEST: progress 5")
    c.sheep[2].kill()
    guest.finish()
    assert "I/O error" not in guest.console()
    guests("after", uri(c.sheep[0], "degraded"), "raw-verify", seed=41, count=40).finish()
