"""Real guests for the tests: Debian's kernel and a busybox initramfs (`tests.guest`)."""
from __future__ import annotations

import pytest

from tests.guest.build import GuestImage, build
from tests.integration.fixtures_cluster import poll
from tests.integration.qemu_vm import QEMU, Qemu


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
