"""Imports go one way (docs/internals.md): parsed from the source, no imports executed."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]

# package -> packages it may import from this project
ALLOWED = {
    "collie": set(),
    "vdi": {"sheep.errors", "sheep.wire", "coordinator.ring"},
    "nbd_frontend": {"sheep.errors", "sheep.framing", "vdi"},   # framing: socket transport
    "coordinator": {"sheep.errors"},
    "sheep": {"coordinator", "vdi", "nbd_frontend"},
    "compose": set(),
}
PROJECT = set(ALLOWED)


def imports_of(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # "from sheep import errors" -> sheep.errors
                yield f"{node.module}.{alias.name}"


def allowed(package: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in PROJECT or top == package:
        return True
    return any(module == a or module.startswith(a + ".") for a in ALLOWED[package])


def test_imports_follow_the_layering():
    bad = []
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            for module in imports_of(path):
                if not allowed(package, module):
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert bad == []


def test_monkey_patching_only_in_entry_points():
    patched = []
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            if "patch_all" in path.read_text():
                patched.append(str(path.relative_to(ROOT)))
    assert patched == ["sheep/daemon.py"]


def test_no_utils_module():
    assert not [p for p in ROOT.rglob("utils.py") if ".venv" not in p.parts]
