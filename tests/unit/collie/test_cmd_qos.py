"""``collie vdi qos`` through cli.main with a fake client (no network)."""
import pytest

from collie import render
from collie.cmd_qos import qos_summary, render_qos
from tests.unit.collie.test_cli import FakeClient, one_line, run

SHOWN = {"name": "v", "vid": 7, "qos": {"iops": 500, "write_bps": 10 << 20}}


def test_no_limit_flag_shows_the_limits(capsys):
    fake = FakeClient({("GET", "/vdis/v/qos"): SHOWN})
    code, out, err = run(["vdi", "qos", "v"], fake, capsys)
    assert code == 0 and err == "" and [c[:2] for c in fake.calls] == [("GET", "/vdis/v/qos")]
    assert out.splitlines() == ["vdi 'v' QoS limits:", "  iops               500",
                                "  write-bps          10MiB/s"]


def test_flags_set_the_limits_with_sizes_and_clear(capsys):
    fake = FakeClient({("POST", "/vdis/v/qos"): SHOWN})
    code, _, _ = run(["vdi", "qos", "v", "--iops", "500", "--write-bps", "10M",
                      "--iops-burst", "1000", "--read-iops", "0", "--burst-seconds", "2"],
                     fake, capsys)
    assert code == 0
    assert fake.calls[-1][2] == {"limits": {"iops": 500, "write_bps": 10 << 20,
                                            "iops_burst": 1000, "read_iops": 0,
                                            "burst_seconds": 2}, "clear": False}
    code, _, _ = run(["vdi", "qos", "v", "--clear"], fake, capsys)
    assert code == 0 and fake.calls[-1][2] == {"limits": {}, "clear": True}


@pytest.mark.parametrize("argv", [["--iops", "-1"], ["--iops", "x"], ["--bps", "10Q"],
                                  ["--iops", "1.5"], ["--bogus", "1"]])
def test_bad_values_are_usage_errors(argv, capsys):
    code, _, err = run(["vdi", "qos", "v"] + argv, FakeClient(), capsys)
    assert code == 64 and one_line(err)


def test_renderings():
    assert render_qos({"name": "v", "qos": {}}) == "vdi 'v': no QoS limits (unlimited)"
    assert qos_summary(SHOWN) == "iops=500,write_bps=10MiB/s" and qos_summary({}) == "-"
    rows = render.render_vdi_list_long(render.with_attachments(
        [{"name": "v", "vid": 7, "size": 1 << 30, "qos": {"iops": 5}}], {"locks": []})).splitlines()
    assert "QoS" in rows[0].split() and "iops=5" in rows[1].split()
