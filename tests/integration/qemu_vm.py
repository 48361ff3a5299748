"""Real qemu-system-x86_64 processes for the tests: QMP, HMP qemu-io, migration.

`Qemu` starts one VM (TCG, no network, no display) whose only disk is an NBD export, with
a QMP socket; the tests drive it through QMP (`qmp`) and write or read its disk from the
host side of qemu's block layer with HMP `qemu-io` (which goes through the same NBD
client, flushes and all, as a guest's I/O would).  `stop()` ends it whatever happened.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.fixtures_cluster import poll

QEMU = shutil.which("qemu-system-x86_64")
STDBUF = ["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf") else []


class QmpError(AssertionError):
    pass


class Qemu:
    def __init__(self, workdir: Path, name: str, nbd_uri: str, *, incoming: int | None = None,
                 kernel: Path | None = None, initrd: Path | None = None, append: str = "",
                 memory_mb: int = 128, drive_opts: str = "", serial: Path | None = None,
                 reconnect_delay: int | None = None, accel: str = "tcg"):
        self.name = name
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.qmp_path = self.dir / f"{name}.qmp"
        self.log_path = self.dir / f"{name}.log"
        drive = f"if=none,id=drive0,format=raw,cache=none,file={nbd_uri}"
        if reconnect_delay is not None:
            # the nbd driver's own options (a URI cannot carry reconnect-delay)
            host, port, export = _split_nbd_uri(nbd_uri)
            drive = ("if=none,id=drive0,driver=raw,cache=none,file.driver=nbd,"
                     f"file.server.type=inet,file.server.host={host},file.server.port={port},"
                     f"file.export={export},file.reconnect-delay={reconnect_delay}")
        if drive_opts:
            drive += "," + drive_opts
        # line-buffered stdout: HMP qemu-io prints there, read back from the log
        self.cmd = [*STDBUF, QEMU, "-M", "q35", "-accel", accel, "-m", str(memory_mb), "-nodefaults",
                    "-display", "none", "-monitor", "none",
                    "-drive", drive, "-device", "virtio-blk-pci,drive=drive0,id=vd0",
                    "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        self.cmd += (["-serial", f"file:{serial}"] if serial else ["-serial", "none"])
        self.serial = serial
        if kernel:
            self.cmd += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
                         "-no-reboot"]
        if incoming is not None:
            self.cmd += ["-incoming", f"tcp:127.0.0.1:{incoming}"]
        self.proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self.events: list[dict] = []

    # -- process ----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "Qemu":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu {self.name} exited {self.proc.returncode}:\n"
                                     f"{self.log()}")
            try:
                self._connect()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"qemu {self.name}: no QMP socket\n{self.log()}")
                time.sleep(0.05)

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(self.qmp_path))
        except OSError:
            s.close()
            raise
        s.settimeout(60)
        self._sock, self._buf = s, b""
        greeting = self._message()
        assert "QMP" in greeting, greeting
        self.qmp("qmp_capabilities")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: qemu dies with whatever was in flight."""
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close()

    def quit(self, timeout: float = 30) -> int:
        """QMP quit (qemu flushes its disks first) and wait for the exit code."""
        if self.running():
            try:
                self.qmp("quit")
            except (OSError, QmpError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()
        return self.proc.returncode if self.proc else 0

    def stop(self) -> None:
        """End the VM whatever state it is in (tests call it in their cleanup)."""
        if self.running():
            self.kill()
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- QMP --------------------------------------------------------------------------
    def _message(self) -> dict:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError(f"qemu {self.name}: QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def qmp(self, command: str, **arguments):
        """One QMP command; its ``return`` value, QmpError on an ``error`` answer."""
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            answer = self._message()
            if "event" in answer:
                self.events.append(answer)
                continue
            if "error" in answer:
                raise QmpError(f"qemu {self.name}: {command}: {answer['error']}")
            return answer.get("return")

    def hmp(self, command_line: str) -> str:
        return self.qmp("human-monitor-command", **{"command-line": command_line})

    def qemu_io(self, command: str) -> str:
        """HMP ``qemu-io drive0 "<command>"``: what it printed (qemu-io prints on qemu's
        stdout, errors included, not in the HMP answer)."""
        before = self.log_path.stat().st_size
        answer = self.hmp(f'qemu-io drive0 "{command}"')
        with open(self.log_path, "rb") as f:
            f.seek(before)
            return answer + f.read().decode(errors="replace")

    def status(self) -> str:
        return self.qmp("query-status")["status"]

    def migration(self) -> dict:
        return self.qmp("query-migrate")


def wrote(output: str) -> bool:
    """HMP qemu-io output of a write that succeeded."""
    return "wrote " in output and "failed" not in output and "error" not in output


def start_slow_migration(src: Qemu, port: int) -> None:
    """A migration slowed to a crawl (1 KiB/s), seen running."""
    src.qmp("migrate-set-parameters", **{"max-bandwidth": 1024})
    src.qmp("migrate", uri=f"tcp:127.0.0.1:{port}")
    poll(lambda: src.migration().get("status") == "active", 30, "the migration to start")


def migrate(src: Qemu, dst: Qemu, port: int, *, vcpu_paused: bool = False) -> None:
    """Migrate and wait until the destination runs (the source reports "completed" a
    moment before the destination has loaded the last of the state and resumed).

    ``vcpu_paused``: stop the source's vCPU first and resume it on the destination. The
    disk's side is the same as in a live migration (qemu drains the guest's requests at
    the stop and hands the disk over at completion); only the RAM copy no longer races a
    running TCG vCPU, which now and then resumed a guest on a stale page
    (docs/internals.md, "Test guests migrate with their vCPU stopped")."""
    if vcpu_paused:
        src.qmp("stop")
    src.qmp("migrate", uri=f"tcp:127.0.0.1:{port}")
    poll(lambda: src.migration().get("status") in ("completed", "failed"), 60,
         "the migration to end")
    assert src.migration()["status"] == "completed", src.migration()
    if vcpu_paused:
        poll(lambda: dst.status() == "paused", 30, "the destination to load the state")
        dst.qmp("cont")
    poll(lambda: dst.status() == "running", 30, "the destination to run")


def _split_nbd_uri(nbd_uri: str) -> tuple[str, int, str]:
    """``nbd://HOST:PORT/EXPORT`` -> (host, port, export)."""
    rest = nbd_uri.removeprefix("nbd://")
    address, _, export = rest.partition("/")
    host, _, port = address.rpartition(":")
    return host, int(port), export


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
