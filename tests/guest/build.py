"""The test guest: Debian's kernel and a busybox initramfs, built once and cached.

The kernel (``linux-image-amd64``) and busybox (``busybox-static``) come from the Debian
package registry with ``apt-get download`` and are unpacked with ``dpkg-deb``; nothing is
installed on the host.  The initramfs holds busybox, the modules the guest needs
(virtio-blk, ext4 and their dependencies, resolved from the modules' own ``depends=``)
and ``init.sh`` as ``/init``.  The result is cached under ``--cache`` (default
``/var/tmp/sheepdog-py-guest``), keyed by the package versions and the init script, so a
second build is a lookup.

    python -m tests.guest.build            # prints the kernel and initrd paths
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("SHEEPDOG_GUEST_CACHE", "/var/tmp/sheepdog-py-guest"))
INIT = Path(__file__).with_name("init.sh")
PACKAGES = ("linux-image-amd64", "busybox-static")
# what the guest loads, in dependency order once resolved
WANTED = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path

    def cmdline(self, mode: str, **args) -> str:
        extra = " ".join(f"guest.{k}={v}" for k, v in args.items())
        return f"console=ttyS0 panic=-1 quiet guest.mode={mode} {extra}".strip()


def _run(*cmd, cwd=None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def _apt_update() -> None:
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True)


def _candidate(package: str) -> str:
    for attempt in (1, 2):
        out = _run("apt-cache", "policy", package)
        m = re.search(r"Candidate:\s*(\S+)", out)
        if m and m.group(1) != "(none)":
            return m.group(1)
        if attempt == 1:
            _apt_update()           # no package lists yet (a fresh or cleaned image)
    raise RuntimeError(f"no candidate version of {package} (is the Debian registry reachable?)")


def _kernel_package() -> tuple[str, str]:
    """The versioned kernel package the meta package depends on, and its version."""
    _candidate("linux-image-amd64")     # makes sure the package lists are there
    out = _run("apt-cache", "depends", "linux-image-amd64")
    m = re.search(r"Depends:\s*(linux-image-\S+-amd64)", out)
    if not m:
        raise RuntimeError("linux-image-amd64 depends on no linux-image-*-amd64")
    return m.group(1), _candidate(m.group(1))


def _download(package: str, where: Path) -> Path:
    for attempt in (1, 2):
        res = subprocess.run(["apt-get", "download", package], cwd=where, capture_output=True,
                             text=True)
        if res.returncode == 0:
            break
        if attempt == 1:        # stale or missing package lists on a fresh machine
            _apt_update()
    else:
        raise RuntimeError(f"apt-get download {package}: {res.stderr.strip()}")
    found = sorted(where.glob(f"{package}_*.deb"))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no .deb in {where}")
    return found[-1]


def _module_depends(path: Path) -> list[str]:
    m = re.search(rb"depends=([^\0]*)\0", path.read_bytes())
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d] if m else []


def _modules_in_order(moddir: Path, wanted) -> list[Path]:
    by_name = {Path(f).stem.replace("-", "_"): Path(f)
               for f in glob.glob(str(moddir / "**" / "*.ko"), recursive=True)}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in by_name:
            raise RuntimeError(f"kernel module {name} not found under {moddir}")
        for dep in _module_depends(by_name[name]):
            visit(dep)
        order.append(name)
    for name in wanted:
        visit(name)
    return [by_name[n] for n in order]


class _Cpio:
    """A newc cpio archive (what the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def _init_of(image: GuestImage) -> bytes | None:
    """The /init inside a built initramfs (to tell whether it is this script's)."""
    data = gzip.decompress(image.initrd.read_bytes())
    i = data.find(b"070701")
    while 0 <= i < len(data):
        fields = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        size, namesize = fields[6], fields[11]
        name_at = i + 110
        name = data[name_at:name_at + namesize - 1]
        body_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == b"init":
            return data[body_at:body_at + size]
        if name == b"TRAILER!!!":
            return None
        i = body_at + size + (-size % 4)
    return None


def _initramfs(busybox: Path, modules: list[Path]) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "sys", "tmp"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.file("init", INIT.read_bytes(), 0o755)
    names = []
    for m in modules:
        name = m.stem.replace("-", "_")
        cpio.file(f"lib/modules/{name}.ko", m.read_bytes())
        names.append(name)
    cpio.file("etc/modules", ("\n".join(names) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=6)


def _cached(cache: Path) -> GuestImage | None:
    """The newest image built before, if any."""
    built = sorted((d for d in cache.glob("*") if (d / "initrd.gz").exists()
                    and (d / "vmlinuz").exists()), key=lambda d: d.stat().st_mtime)
    return GuestImage(built[-1] / "vmlinuz", built[-1] / "initrd.gz") if built else None


def build(cache: Path = CACHE, log=lambda msg: None) -> GuestImage:
    try:
        kernel_pkg, kernel_version = _kernel_package()
    except (RuntimeError, OSError) as exc:
        # no registry (or no apt) now: an image built earlier from this init script does
        image = _cached(cache)
        if image is None or _init_of(image) != INIT.read_bytes():
            raise
        log(f"package lookup failed ({exc}); using the cached guest {image.kernel.parent}")
        return image
    key = hashlib.sha256("\n".join([kernel_pkg, kernel_version, _candidate("busybox-static"),
                                    INIT.read_text(), ",".join(WANTED)]).encode()).hexdigest()
    out = cache / key[:16]
    image = GuestImage(out / "vmlinuz", out / "initrd.gz")
    if image.kernel.exists() and image.initrd.exists():
        return image
    log(f"building the test guest ({kernel_pkg} {kernel_version}) in {out}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)        # apt-get download runs as _apt where it can
        tree = tmp / "root"
        for package in (kernel_pkg, "busybox-static"):
            _run("dpkg-deb", "-x", str(_download(package, tmp)), str(tree))
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise RuntimeError(f"{kernel_pkg} holds no /boot/vmlinuz-*")
        release = kernels[-1].name.removeprefix("vmlinuz-")
        modules = _modules_in_order(tree / "lib" / "modules" / release, WANTED)
        staged = tmp / "out"
        staged.mkdir()
        shutil.copyfile(kernels[-1], staged / "vmlinuz")
        (staged / "initrd.gz").write_bytes(_initramfs(tree / "bin" / "busybox", modules))
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return image


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    image = build(args.cache, log=lambda msg: print(msg, file=sys.stderr))
    print(image.kernel)
    print(image.initrd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
