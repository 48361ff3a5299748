"""VMs for the tests: hypervisor-like clusters, bare qemu processes, and real guests
(Debian's kernel and a busybox initramfs, `tests.guest`)."""
from __future__ import annotations

import pytest

from tests.guest.build import GuestImage, build
from tests.integration.fixtures_cluster import node_epoch, poll
from tests.integration.qemu_vm import QEMU, Qemu

HANDOFF_TIMEOUT_S = 3       # the hypervisors' --handoff-timeout


@pytest.fixture
def hypervisors(cluster_factory):
    """Three storage sheep (copies 3) and two gateway sheep, one per "hypervisor"."""
    if QEMU is None:
        pytest.skip("qemu-system-x86 not installed")
    c = cluster_factory(3, copies=3, sheep_args=[
        "--handoff-idle", "0.2", "--handoff-timeout", str(HANDOFF_TIMEOUT_S)])
    gateways = [c.add_node(gateway=True) for _ in range(2)]
    for g in gateways:
        g.start()
    for g in gateways:
        g.wait_ready()
    poll(lambda: all(g.running() and node_epoch(g) == 1 for g in gateways), 30,
         "the gateways at epoch 1")
    return c, gateways


@pytest.fixture
def vms(tmp_path):
    """``vms(name, nbd_uri, **Qemu options)`` starts a qemu (no guest OS); all are stopped
    at the end of the test."""
    started: list[Qemu] = []

    def start(name: str, nbd: str, **kw) -> Qemu:
        vm = Qemu(tmp_path / "vms", name, nbd, **kw)
        started.append(vm)
        return vm.start()
    yield start
    for vm in started:
        vm.stop()


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    if QEMU is None:
        pytest.skip("qemu-system-x86 not installed")
    return build()


class Guest(Qemu):
    """A VM booting the test guest with ``mode`` (see tests/guest/init.sh); its serial
    console goes to ``<name>.serial``."""

    def __init__(self, image: GuestImage, workdir, name: str, nbd_uri: str, mode: str, **kw):
        args = {k: kw.pop(k) for k in ("seed", "count", "pause") if k in kw}
        super().__init__(workdir, name, nbd_uri, kernel=image.kernel, initrd=image.initrd,
                         append=image.cmdline(mode, **args),
                         serial=workdir / f"{name}.serial", **kw)
        self.mode = mode

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, text: str, timeout: float = 120) -> None:
        poll(lambda: text in self.console() or "GUEST-FAIL" in self.console()
             or not self.running(), timeout, f"{self.name}: {text!r} on the console")
        assert "GUEST-FAIL" not in self.console(), self.console()[-3000:]
        assert text in self.console(), f"{self.name} exited:\n{self.console()[-3000:]}"

    def finish(self, timeout: float = 180) -> None:
        """Until the guest powers off; its workload must have ended with GUEST-OK."""
        self.wait_for(f"GUEST-OK {self.mode}", timeout)
        self.proc.wait(timeout=30)


@pytest.fixture
def guests(tmp_path, guest_image):
    started: list[Guest] = []

    def boot(name: str, nbd_uri: str, mode: str, **kw) -> Guest:
        g = Guest(guest_image, tmp_path, name, nbd_uri, mode, **kw)
        started.append(g)
        return g.start()
    yield boot
    for g in started:
        g.stop()
