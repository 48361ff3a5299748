"""Restarts under a running qemu: its local gateway (an upgrade) and a storage node.

qemu's NBD client with ``reconnect-delay`` pauses the requests of a lost connection and
reruns them once it is connected again.  A gateway sheep stopped with SIGTERM and started
again on the same ports therefore costs the VM a pause, not an I/O error, and loses
nothing; a storage node killed under the VM costs a pause until the next epoch.
"""
from __future__ import annotations

import signal
import threading

import pytest

from tests.integration.fixtures_cluster import poll, wait_epoch
from tests.integration.fixtures_nbd import MiB, check_reads, create_vdi, locks, store, uri
from tests.integration.qemu_vm import QEMU, Qemu, wrote

pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 not installed")


class Background:
    """One HMP qemu-io command run in a thread (it blocks while qemu reconnects)."""

    def __init__(self, vm: Qemu, command: str):
        self.output = None
        self.thread = threading.Thread(target=self._run, args=(vm, command), daemon=True)
        self.thread.start()

    def _run(self, vm, command):
        self.output = vm.qemu_io(command)

    def result(self, timeout: float = 60) -> str:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the VM's I/O did not come back"
        return self.output


def test_restarting_the_gateway_under_a_running_vm_pauses_it_and_loses_nothing(hypervisors, vms):
    c, (g, _) = hypervisors
    create_vdi(c.sheep[0], "vm", 32 * MiB)
    guest = vms("guest", uri(g, "vm"), reconnect_delay=30)
    assert wrote(guest.qemu_io("write -P 0x51 0 1M"))          # not flushed yet
    assert locks(c.sheep[0])["vm"]["node_id"] == g.node_id

    # an upgrade: SIGTERM, and the new daemon on the same ports
    g.signal(signal.SIGTERM)
    poll(lambda: not g.running(), 30, "the gateway to stop")
    pending = Background(guest, "write -P 0x52 1M 1M")         # waits for the reconnect
    g.start()
    g.wait_ready()
    assert wrote(pending.result()), pending.output
    assert guest.status() == "running"

    # the guest goes on through the new daemon; its FLUSH makes everything durable
    assert "read 1048576/1048576" in guest.qemu_io("read -P 0x51 0 1M")
    assert wrote(guest.qemu_io("write -P 0x53 2M 4k"))
    guest.qemu_io("flush")
    assert [store(n)["dirty_objects"] for n in c.sheep[:3]] == [0, 0, 0]
    check_reads(c.sheep[1], "vm", "read -P 0x51 0 1M", "read -P 0x52 1M 1M", "read -P 0x53 2M 4k")
    assert guest.quit() == 0


def test_a_storage_node_killed_under_a_running_vm_costs_a_pause_not_an_error(hypervisors, vms):
    c, (g, _) = hypervisors
    create_vdi(c.sheep[0], "vm2", 32 * MiB)
    guest = vms("guest", uri(g, "vm2"), reconnect_delay=30)
    assert wrote(guest.qemu_io("write -P 0x61 0 1M"))
    c.sheep[2].kill()
    # writes and reads go on (waiting for the next epoch where a replica is gone)
    assert wrote(guest.qemu_io("write -P 0x62 1M 1M"))
    assert "read 1048576/1048576" in guest.qemu_io("read -P 0x61 0 1M")
    wait_epoch(c.sheep[:2], 2)
    guest.qemu_io("flush")
    check_reads(c.sheep[0], "vm2", "read -P 0x61 0 1M", "read -P 0x62 1M 1M")
    assert guest.quit() == 0
