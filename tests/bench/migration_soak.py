#!/usr/bin/env python3
"""Ping-pong migrations of the test guest over plain qemu-nbd: does the guest survive them?

    python3 tests/bench/migration_soak.py [--migrations N] [--vcpu-paused] [--accel ACCEL]

Boots the test guest (`tests.guest`, mode ``loop``: blocks written, fsynced and checked)
on a raw file served by ``qemu-nbd``, then migrates it from qemu to a fresh qemu N times,
watching the destination's console for a kernel oops or a guest failure for 1.5 s after
each.  qemu-nbd as the disk keeps the project's storage out of the picture: this measures
qemu's migration under TCG on this machine (docs/internals.md, "Test guests migrate with
their vCPU stopped").  Run a few at once, or next to a busy loop, to see a loaded host.
Prints one line per migration and a summary; exit code 1 at the first crash.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sheepdog_local.zookeeper import free_port  # noqa: E402
from tests.guest.build import build  # noqa: E402
from tests.integration.fixtures_guest import Guest  # noqa: E402
from tests.integration.qemu_vm import migrate  # noqa: E402

WATCH_S = 1.5
CRASH_SIGNS = ("Oops", "BUG:", "Kernel panic", "GUEST-FAIL")


def guest(image, workdir: Path, name: str, uri: str, accel: str, **kw) -> Guest:
    return Guest(image, workdir, name, uri, "loop", seed=21, count=9000, pause=20000,
                 accel=accel, **kw).start()


def crashed(g: Guest) -> bool:
    console = g.console()
    return not g.running() or any(sign in console for sign in CRASH_SIGNS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--migrations", type=int, default=50)
    ap.add_argument("--vcpu-paused", action="store_true",
                    help="stop the vCPU before each migration, resume it after")
    ap.add_argument("--accel", default="tcg", help="qemu's -accel (e.g. tcg,thread=single)")
    args = ap.parse_args()
    image = build()
    with tempfile.TemporaryDirectory(prefix="migration-soak-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        disk = workdir / "disk.raw"
        subprocess.run(["truncate", "-s", "2G", str(disk)], check=True)
        port = free_port()
        nbd = subprocess.Popen(["qemu-nbd", "-f", "raw", "-t", "-e", "4", "-b", "127.0.0.1",
                                "-p", str(port), "--cache=none", str(disk)])
        uri = f"nbd://127.0.0.1:{port}"
        current = None
        try:
            current = guest(image, workdir, "g0", uri, args.accel)
            current.wait_for("GUEST: progress 3")
            for i in range(1, args.migrations + 1):
                incoming = free_port()
                nxt = guest(image, workdir, f"g{i}", uri, args.accel, incoming=incoming)
                migrate(current, nxt, incoming, vcpu_paused=args.vcpu_paused)
                current.stop()
                current = nxt
                deadline = time.monotonic() + WATCH_S
                while time.monotonic() < deadline and not crashed(current):
                    time.sleep(0.1)
                if crashed(current):
                    print(f"migration {i}: guest crashed\n{current.console()[-2000:]}")
                    print(f"crashed after {i} migrations ({args.accel}, "
                          f"vcpu_paused={args.vcpu_paused})")
                    return 1
                print(f"migration {i}: ok", flush=True)
        finally:
            if current is not None:
                current.stop()
            nbd.kill()
            nbd.wait()
    print(f"{args.migrations} migrations, no crash ({args.accel}, "
          f"vcpu_paused={args.vcpu_paused})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
