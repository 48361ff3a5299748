"""Imports go one way (docs/internals.md): parsed from the source, no imports executed.

Every module belongs to the longest unit below that contains it (a sub-package of `sheep`,
or a top-level package); each unit may import only the units listed for it (and itself).
A failure names the offending file and import.
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]

# unit -> the project units it may import
ALLOWED = {
    "sheep": set(),                     # the package itself (an empty __init__)
    "common": set(),
    "coordinator": {"common"},
    "vdi": {"common", "coordinator.ring"},
    "nbd_frontend": {"common"},
    "collie": {"vdi.backup"},           # talks HTTP only; shares the backup stream codec
    "sheepdog_local": {"collie"},       # runs processes; shares collie's token file
    "sheep.store": {"common"},
    "sheep.peer": {"common"},
    "sheep.replication": {"common", "coordinator.ring", "sheep.store", "sheep.peer",
                          "vdi.objects"},
    "sheep.recovery": {"common", "coordinator.ring", "sheep.store", "sheep.replication", "vdi"},
    "sheep.volumes": {"common", "sheep.replication", "vdi", "nbd_frontend.export"},
    "sheep.admin": {"common", "sheep.volumes", "sheep.recovery"},
    "sheep.daemon": {"common", "coordinator", "vdi", "nbd_frontend", "sheep"},
}
UNITS = sorted(ALLOWED, key=len, reverse=True)
PROJECT = {u.split(".")[0] for u in ALLOWED}

# modules that stay pure: no event loop, no sockets, no ZooKeeper, no HTTP
PURE = ["common/errors.py", "coordinator/ring.py", "coordinator/layout.py", "vdi/objects.py",
        "vdi/inode.py", "vdi/vid.py", "vdi/family.py", "vdi/volume.py", "vdi/backup.py",
        "vdi/diff.py", "vdi/qos.py",
        "nbd_frontend/protocol.py", "nbd_frontend/handshake.py", "sheep/store/objfile.py",
        "sheep/recovery/throttle.py", "sheep/replication/activity.py", "sheep/peer/wire.py",
        "sheep/peer/auth.py"]
IMPURE = ("gevent", "socket", "kazoo", "requests")
# the store runs in OS threads: no networking, and no ZooKeeper or volume model
STORE_FORBIDDEN = ("gevent.server", "gevent.socket", "socket", "kazoo", "requests")


def imports_of(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for alias in node.names:  # "from sheep.store import objfile" -> sheep.store.objfile
                yield f"{node.module}.{alias.name}"


def unit_of(module: str) -> str | None:
    for unit in UNITS:
        if module == unit or module.startswith(unit + "."):
            return unit
    return None


def module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def sources():
    for top in PROJECT:
        yield from (ROOT / top).rglob("*.py")


def allowed(unit: str, module: str) -> bool:
    if module.split(".")[0] not in PROJECT:
        return True
    target = unit_of(module)
    if target is None:                  # a package itself ("sheep", "sheep.store")
        return True
    if target == unit or target.startswith(unit + "."):
        return True
    return any(target == a or target.startswith(a + ".") or module.startswith(a + ".")
               or module == a for a in ALLOWED[unit])


def test_every_unit_is_listed():
    assert all(unit_of(module_name(p)) for p in sources()), \
        [str(p) for p in sources() if not unit_of(module_name(p))]


def test_imports_follow_the_layering():
    bad = []
    for path in sources():
        unit = unit_of(module_name(path))
        for module in imports_of(path):
            if not allowed(unit, module):
                bad.append(f"{path.relative_to(ROOT)} ({unit}) imports {module}")
    assert bad == []


def test_nothing_below_the_daemon_imports_sheep():
    bad = [f"{p.relative_to(ROOT)} imports {m}" for p in sources()
           if not module_name(p).startswith("sheep.")
           for m in imports_of(p) if m == "sheep" or m.startswith("sheep.")]
    assert bad == []


def test_pure_modules_import_no_event_loop_sockets_or_zookeeper():
    bad = [f"{name} imports {m}" for name in PURE for m in imports_of(ROOT / name)
           if m.split(".")[0] in IMPURE]
    assert bad == []


def test_the_store_does_no_networking():
    bad = [f"{p.relative_to(ROOT)} imports {m}" for p in (ROOT / "sheep" / "store").rglob("*.py")
           for m in imports_of(p) if any(m == f or m.startswith(f + ".") for f in STORE_FORBIDDEN)]
    assert bad == []


def test_monkey_patching_only_in_the_entry_point():
    patched = sorted(str(p.relative_to(ROOT)) for p in sources() if "patch_all" in p.read_text())
    assert patched == ["sheep/daemon/main.py"]


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources()
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def test_no_utils_module():
    assert not [p for p in ROOT.rglob("utils.py") if ".venv" not in p.parts]


def test_no_top_level_package_named_compose():
    # Debian's docker-compose is a Python package of that name: ours would shadow it
    assert not (ROOT / "compose" / "__init__.py").exists()
