"""A private, single-server ZooKeeper run from the Debian ``zookeeper`` package.

Used by the integration tests (one throw-away server per test module) and by the
local launcher.  Plain ``subprocess`` and ``socket``: no gevent here, so it works
in any process, patched or not.

Contract:

* ``start()`` writes ``DATA_DIR/zoo.cfg``, starts ``QuorumPeerMain`` and returns only
  once the server answers ``srvr`` with a ``Mode:`` line (``ruok`` says ``imok``
  before the server actually serves).  On failure the process is stopped and a
  ``RuntimeError`` carrying the tail of the server log is raised.
* ``stop()`` sends SIGTERM, waits, then SIGKILLs; it is idempotent and leaves no
  process behind.
* ``fast=True`` adds ``-Dzookeeper.forceSync=no`` (no fsync of the transaction log):
  for tests only, never for data anyone cares about.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
SLF4J_JAR = "/usr/share/java/slf4j-simple.jar"
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
JVM_FLAGS = ("-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


PORT_BASE = 20000          # below Linux's ephemeral range (32768-60999 by default)
PORT_BLOCK = 1500         # ports per pytest-xdist worker (8 blocks fit below 32768)
_port_cursor: dict[str, int] = {}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now, for a server about to bind it.

    Taken outside the kernel's ephemeral range, so no outgoing connection can grab it
    between this call and the bind, and from a block of its own per pytest-xdist worker
    (``PYTEST_XDIST_WORKER``), so parallel test processes never pick the same one.
    Within a process ports are handed out in turn, each checked by binding it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker[2:].isdigit() else 0
    start = PORT_BASE + (index % 8) * PORT_BLOCK
    cursor = _port_cursor.get(host, start + (os.getpid() % PORT_BLOCK))
    for _ in range(PORT_BLOCK):
        port = start + (cursor - start) % PORT_BLOCK
        cursor = port + 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _port_cursor[host] = cursor
        return port
    raise RuntimeError(f"no free port in {start}..{start + PORT_BLOCK - 1}")


def four_letter_word(host: str, port: int, word: str, timeout_s: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command and return the whole answer ('' on error)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(word.encode("ascii"))
            chunks = []
            while True:
                data = s.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode("utf-8", "replace")
    except OSError:
        return ""


class ZooKeeperServer:
    """One standalone ZooKeeper server process with its own data directory and port."""

    def __init__(self, data_dir: Path, port: int, *, host: str = "127.0.0.1", tick_ms: int = 500,
                 log_path: Path | None = None, fast: bool = False):
        self.data_dir = Path(data_dir)
        self.port = int(port)
        self.host = host
        self.tick_ms = int(tick_ms)
        self.log_path = Path(log_path) if log_path else self.data_dir / "zookeeper.log"
        self.fast = fast
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    # -- properties -----------------------------------------------------------------

    @property
    def hosts(self) -> str:
        """The connection string for clients, ``HOST:PORT``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while started, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "zoo.cfg"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------

    def write_config(self) -> Path:
        """Write ``zoo.cfg`` for a throw-away standalone server and return its path."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_ms}",
            f"dataDir={self.data_dir / 'data'}",
            f"clientPort={self.port}",
            f"clientPortAddress={self.host}",
            "maxClientCnxns=0",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "initLimit=10",
            "syncLimit=5",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def command(self) -> list[str]:
        flags = list(JVM_FLAGS)
        if self.fast:
            flags.append("-Dzookeeper.forceSync=no")
        return ["java", *flags, "-cp", f"{ZOOKEEPER_JAR}:{SLF4J_JAR}", MAIN_CLASS,
                str(self.config_path)]

    def start(self, timeout_s: float = 30) -> "ZooKeeperServer":
        """Start the server and wait until it serves; raise RuntimeError with the log tail if not."""
        if self.running():
            return self
        self._check_port_free()
        self.write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(self.command(), stdout=self._log_file,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        log.info("zookeeper starting pid=%s port=%s dir=%s", self._proc.pid, self.port, self.data_dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if "Mode:" in four_letter_word(self.host, self.port, "srvr", timeout_s=0.5):
                log.info("zookeeper serving pid=%s hosts=%s", self._proc.pid, self.hosts)
                return self
            time.sleep(0.05)
        rc = self._proc.poll()
        self.stop()
        reason = f"exited with {rc}" if rc is not None else f"not serving after {timeout_s}s"
        raise RuntimeError(f"ZooKeeper on {self.hosts} {reason}; log tail:\n{self.log_tail()}")

    def _check_port_free(self) -> None:
        # Readiness is judged by an answer on the port: another server already there would
        # answer for us, so refuse up front instead of "succeeding" with the wrong server.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT is fine
            try:
                s.bind((self.host, self.port))
            except OSError as e:
                raise RuntimeError(f"ZooKeeper port {self.hosts} is in use: {e}") from None

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM, wait up to timeout_s, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("zookeeper pid=%s ignored SIGTERM, killing", proc.pid)
                    proc.kill()
                    proc.wait()
            log.info("zookeeper stopped pid=%s rc=%s", proc.pid, proc.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "ZooKeeperServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ZooKeeperServer(hosts={self.hosts!r}, pid={self.pid})"


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (and is not a zombie we reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
