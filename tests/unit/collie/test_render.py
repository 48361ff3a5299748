"""collie.render: literal expected tables for the admin API's answers (times in UTC)."""
from datetime import timezone

from collie import render
from collie.progress import NullProgress, Progress, render_bar

UTC = timezone.utc
T0 = 1704067200  # 2024-01-01 00:00:00 UTC
M, G = 1 << 20, 1 << 30

CLUSTER = {
    "name": "c", "state": "running", "epoch": 2, "leader": "alpha",
    "format": {"copies": 3, "min_copies": 2, "block_size_shift": 22, "created": T0},
    "epochs": [{"epoch": 1, "members": ["alpha", "beta"], "created": T0},
               {"epoch": 2, "members": ["alpha", "beta", "gamma"], "created": T0 + 90}],
}

NODES = [
    {"node_id": "alpha", "addr": "127.0.0.1", "port": 7100, "admin_port": 7000, "nbd_port": 10809,
     "zone": "z1", "weight": 1, "started": T0,
     "store": {"objects": 3, "used_bytes": 12 * M, "capacity_bytes": 100 * G, "free_bytes": 100 * G - 12 * M}},
    {"node_id": "beta", "addr": "127.0.0.1", "port": 7101, "admin_port": 7001, "nbd_port": 10810,
     "zone": "", "weight": 2, "started": T0,
     "store": {"objects": 1, "used_bytes": 60 * G, "capacity_bytes": 100 * G, "free_bytes": 40 * G}},
    {"node_id": "gamma", "addr": "10.0.0.3", "port": 7102, "zone": "z2", "weight": 1, "store": None},
]

VDIS = [
    {"name": "test", "vid": 0x7c2b26, "size": 10 * G, "copies": 3, "created": T0 + 3600, "snap_id": 2,
     "tag": "", "parent": 0x7c2b25, "snapshot": False, "used_bytes": 4 * M},
    {"name": "test", "vid": 0x7c2b25, "size": 10 * G, "copies": 3, "created": T0, "snap_id": 1,
     "tag": "before", "parent": 0, "snapshot": True, "used_bytes": 8 * M},
    {"name": "clone1", "vid": 0x12, "size": 10 * G, "copies": 2, "created": T0 + 7200, "snap_id": 1,
     "tag": "", "parent": 0x7c2b25, "snapshot": False, "used_bytes": 0},
    {"name": "big", "vid": 0xabcdef, "size": 1 << 40, "copies": 3, "created": T0, "snap_id": 1,
     "tag": "", "parent": None, "snapshot": False, "used_bytes": 512 << 10},
]


def test_table_aligns_and_strips_trailing_blanks():
    assert render.table(("A", "Num", "B"), [("x", 1, ""), ("long", 100, "y")], right={1}) == (
        "A     Num  B\n"
        "x       1\n"
        "long  100  y")


def test_cluster_info_running():
    assert render.render_cluster_info(CLUSTER, tz=UTC) == (
        "Cluster status: running\n"
        "\n"
        "Cluster created at Mon Jan  1 00:00:00 2024\n"
        "Copies: 3 (min 2), object size 4 MiB\n"
        "\n"
        "Epoch Time           Version  Nodes\n"
        "2024-01-01 00:01:30        2  [alpha, beta, gamma]\n"
        "2024-01-01 00:00:00        1  [alpha, beta]")


def test_cluster_info_unformatted():
    doc = {"state": "unformatted", "format": None, "epoch": 0, "epochs": []}
    assert render.render_cluster_info(doc, tz=UTC) == "Cluster status: Waiting for cluster format"


def test_cluster_info_unknown_state_shown_verbatim():
    assert render.render_cluster_info({"state": "recovering"}) == "Cluster status: recovering"


def test_format_line():
    answer = {"format": {"copies": 3, "min_copies": 2, "block_size_shift": 22, "created": T0}}
    assert render.render_format(answer) == "cluster formatted: copies 3, object size 4 MiB"
    assert render.render_format({"format": {"copies": 2, "block_size_shift": 20}}) == (
        "cluster formatted: copies 2, object size 1 MiB")


def test_node_list():
    assert render.render_node_list(NODES) == (
        "Id  Node   Host:Port       V-Nodes  Zone  Role\n"
        " 0  alpha  127.0.0.1:7100      128  z1    storage\n"
        " 1  beta   127.0.0.1:7101      256  -     storage\n"
        " 2  gamma  10.0.0.3:7102       128  z2    storage")


def test_node_list_shows_gateways_with_no_vnodes():
    nodes = [{"node_id": "a", "addr": "h1", "port": 7100, "weight": 1, "role": "storage"},
             {"node_id": "g", "addr": "hv1", "port": 7100, "weight": 0, "role": "gateway"},
             {"node_id": "old", "addr": "hv2", "port": 7100, "weight": 0}]  # no role field
    assert render.render_node_list(nodes) == (
        "Id  Node  Host:Port  V-Nodes  Zone  Role\n"
        " 0  a     h1:7100        128  -     storage\n"
        " 1  g     hv1:7100         0  -     gateway\n"
        " 2  old   hv2:7100         0  -     gateway")


def test_node_info_with_total():
    assert render.render_node_info(NODES) == (
        "Id       Size   Used   Avail  Use%\n"
        "0      100 GB  12 MB  100 GB    0%\n"
        "1      100 GB  60 GB   40 GB   60%\n"
        "2           -      -       -     -\n"
        "Total  200 GB  60 GB  140 GB   30%")


def test_node_info_empty_cluster():
    assert render.render_node_info([]) == (
        "Id       Size    Used   Avail  Use%\n"
        "Total  0.0 MB  0.0 MB  0.0 MB     -")


def test_vdi_list_flags_and_columns():
    assert render.render_vdi_list(VDIS, tz=UTC) == (
        "   Name    Id    Size    Used  Shared  Creation time     VDI id  Copies  Tag\n"
        "   big      1  1.0 TB  512 KB       -  2024-01-01 00:00  abcdef       3\n"
        "c  clone1   1   10 GB  0.0 MB       -  2024-01-01 02:00      12       2\n"
        "s  test     1   10 GB  8.0 MB       -  2024-01-01 00:00  7c2b25       3  before\n"
        "   test     2   10 GB  4.0 MB       -  2024-01-01 01:00  7c2b26       3")


def test_vdi_list_empty_is_header_only():
    assert render.render_vdi_list([]) == "   Name  Id  Size  Used  Shared  Creation time  VDI id  Copies  Tag"


def test_vdi_flag():
    assert render.vdi_flag({"snapshot": True, "parent": 5}) == "s"
    assert render.vdi_flag({"snapshot": False, "parent": 5, "snap_id": 1}) == "c"
    assert render.vdi_flag({"snapshot": False, "parent": 5, "snap_id": 3}) == " "
    assert render.vdi_flag({"snapshot": False, "parent": 0}) == " "


def test_vdi_tree():
    assert render.render_vdi_tree(VDIS, tz=UTC) == (
        "big\n"
        "test [before] 2024-01-01 00:00\n"
        "|-- clone1 (clone)\n"
        "`-- test (you are here)")


def test_vdi_tree_nested_branches_and_unknown_parent():
    vdis = [
        {"name": "a", "vid": 1, "snapshot": True, "snap_id": 1, "tag": "s1", "parent": 0, "created": T0},
        {"name": "a", "vid": 2, "snapshot": True, "snap_id": 2, "tag": "", "parent": 1, "created": T0 + 60},
        {"name": "b", "vid": 3, "snapshot": False, "snap_id": 1, "parent": 1},
        {"name": "a", "vid": 4, "snapshot": False, "snap_id": 3, "parent": 2},
        {"name": "orphan", "vid": 5, "snapshot": False, "snap_id": 1, "parent": 99},
    ]
    assert render.render_vdi_tree(vdis, tz=UTC) == (
        "a [s1] 2024-01-01 00:00\n"
        "|-- a [#2] 2024-01-01 00:01\n"
        "|   `-- a (you are here)\n"
        "`-- b (clone)\n"
        "orphan")


def test_locks():
    assert render.render_locks({"locks": [{"name": "test", "owner": "alpha", "since": None}]}) == (
        "VDI   Owner  Client  Since  Gen  Standbys\n"
        "test  alpha  -       -        -         0")
    assert render.render_locks({"locks": []}) == "VDI  Owner  Client  Since  Gen  Standbys"


def test_locks_show_generation_standbys_and_vdis_attached_without_a_writer():
    answer = {"locks": [{"name": "vm1", "node_id": "n1", "client": "10.0.0.9:5000",
                         "since": None, "generation": 7,
                         "standbys": [{"node_id": "n2", "client": "10.0.0.8:6000"}]}],
              "attached": [{"name": "ro", "attachments": [{"node_id": "n1"}, {"node_id": "n3"}]}]}
    assert render.render_locks(answer) == (
        "VDI  Owner  Client         Since  Gen  Standbys\n"
        "vm1  n1     10.0.0.9:5000  -        7         1\n"
        "ro   -      -              -        -         2")


def test_recovery():
    answer = {"recovering": True, "epoch": 3, "nodes": [
        {"node_id": "alpha", "addr": "127.0.0.1", "port": 7100, "state": "recovering", "done": 25, "total": 100},
        {"node_id": "beta", "addr": "127.0.0.1", "port": 7101, "state": "done", "progress": 1.0}]}
    assert render.render_recovery(answer) == (
        "Recovery: running (epoch 3)\n"
        "\n"
        "Id  Node   Host:Port       State       Progress\n"
        " 0  alpha  127.0.0.1:7100  recovering       25%\n"
        " 1  beta   127.0.0.1:7101  done            100%")
    assert render.render_recovery({}) == "Recovery: idle"


def test_check():
    assert render.render_check("test", {"objects": 12, "repaired": 1}) == (
        "vdi 'test' checked: objects 12, repaired 1")
    assert render.render_check("test", {}) == "vdi 'test' checked"


def test_json_is_pretty_and_sorted():
    assert render.render_json({"b": 1, "a": [1]}) == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'


def test_times_accept_iso_strings_and_garbage():
    assert render.format_time("2024-01-01T00:00:00+00:00", tz=UTC) == "2024-01-01 00:00"
    assert render.format_time("yesterday") == "yesterday"
    assert render.format_time(None) == "-"


# ---- progress bar (pure part and the TTY decision) ----

def test_render_bar():
    assert render_bar(0, 100, 0) == "  0.0% [>                             ] -- MiB/s"
    assert render_bar(50 * M, 100 * M, 10) == " 50.0% [===============>              ] 5.0 MiB/s"
    assert render_bar(100 * M, 100 * M, 1) == "100.0% [==============================] 100.0 MiB/s"


class _Tty:
    def __init__(self, tty=True):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_only_for_big_known_totals_on_a_tty():
    assert type(Progress.for_transfer(100 * M, _Tty())) is Progress
    assert type(Progress.for_transfer(100 * M, _Tty(tty=False))) is NullProgress
    assert type(Progress.for_transfer(8 * M, _Tty())) is NullProgress
    assert type(Progress.for_transfer(None, _Tty())) is NullProgress
    assert type(Progress.for_transfer(100 * M, _Tty(), enabled=False)) is NullProgress


def test_progress_draws_in_place_and_ends_with_newline():
    clock = iter([0.0, 0.5, 0.55, 1.0])
    stream = _Tty()
    bar = Progress(16 * M, stream, now=lambda: next(clock))
    bar.update(4 * M)   # t=0.5: drawn
    bar.update(4 * M)   # t=0.55: too soon, skipped
    bar.close()         # t=1.0: final draw
    assert stream.text == ("\r" + render_bar(4 * M, 16 * M, 0.5) + "\r" + render_bar(8 * M, 16 * M, 1.0) + "\n")
