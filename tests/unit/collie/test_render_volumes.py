"""collie.render for volume features: the Shared column and a rolled-back family's tree."""
from datetime import timezone

from collie import render

UTC = timezone.utc
T0 = 1704067200
M = 1 << 20


def test_vdi_list_shows_shared_bytes_when_reported():
    vdis = [
        {"name": "v", "vid": 0x10, "size": 32 * M, "copies": 2, "created": T0, "snap_id": 1,
         "tag": "gold", "parent": 0, "snapshot": True, "used_bytes": 32 * M, "shared_bytes": 0},
        {"name": "v", "vid": 0x11, "size": 32 * M, "copies": 2, "created": T0, "snap_id": 2,
         "tag": "", "parent": 0x10, "snapshot": False, "used_bytes": 0, "shared_bytes": 32 * M},
        {"name": "w", "vid": 0x20, "size": 32 * M, "copies": 2, "created": T0, "snap_id": 1,
         "tag": "", "parent": 0x10, "snapshot": False, "used_bytes": 8 * M, "shared_bytes": 24 * M},
    ]
    assert render.render_vdi_list(vdis, tz=UTC) == (
        "   Name  Id   Size    Used  Shared  Creation time     VDI id  Copies  Tag\n"
        "s  v      1  32 MB   32 MB  0.0 MB  2024-01-01 00:00      10       2  gold\n"
        "   v      2  32 MB  0.0 MB   32 MB  2024-01-01 00:00      11       2\n"
        "c  w      1  32 MB  8.0 MB   24 MB  2024-01-01 00:00      20       2")


def test_tree_after_rollback_has_two_branches():
    vdis = [
        {"name": "a", "vid": 1, "snapshot": True, "snap_id": 1, "tag": "one", "parent": 0, "created": T0},
        {"name": "a", "vid": 2, "snapshot": True, "snap_id": 2, "tag": "two", "parent": 1, "created": T0},
        {"name": "a", "vid": 4, "snapshot": False, "snap_id": 3, "parent": 1},
    ]
    assert render.render_vdi_tree(vdis, tz=UTC) == (
        "a [one] 2024-01-01 00:00\n"
        "|-- a [two] 2024-01-01 00:00\n"
        "`-- a (you are here)")
