"""``collie node recovery --watch`` and ``collie vdi list -l`` through cli.main with a fake
client: flags, exit codes, the one extra API call, the JSON shapes (no network)."""
import json

import pytest

from collie import cli, render
from collie.client import CollieError, Exit
from tests.unit.collie.test_cli import FakeClient, api_error, one_line, run


def recovery(done, total=4, state="recovering", epoch=2):
    return {"state": "complete" if state == "complete" else "running", "epoch": epoch,
            "enabled": True, "throttle": {"objects_per_s": 0, "bytes_per_s": 0},
            "nodes": [{"node_id": "n1", "epoch": epoch, "state": state, "done": done,
                       "total": total, "pulled": done, "bytes": done << 20, "started": 1.0}]}


def sequence(*answers):
    """A fake ``GET /recovery`` answering ``answers`` in turn (an exception is raised)."""
    todo = list(answers)

    def answer(body, **params):
        item = todo.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item
    return answer


def test_watch_refreshes_until_complete_then_exits_0(capsys):
    fake = FakeClient({("GET", "/recovery"): sequence(recovery(1), recovery(3),
                                                      recovery(4, state="complete"))})
    code, out, err = run(["node", "recovery", "--watch", "--interval", "0.01"], fake, capsys)
    assert code == 0 and err == ""
    assert len([c for c in fake.calls if c[1] == "/recovery"]) == 3
    blocks = out.split("\n\n")                      # not a TTY: one block per change
    assert len(blocks) == 3 and "\x1b" not in out
    assert "Recovery: running (epoch 2): objects 1/4 (3 left)" in blocks[0]
    assert blocks[-1].splitlines()[1] == "Recovery: complete (epoch 2): objects 4/4, 4.0 MB moved, complete"


def test_watch_json_is_ndjson(capsys):
    fake = FakeClient({("GET", "/recovery"): sequence(recovery(2), recovery(4, state="complete"))})
    code, out, _ = run(["node", "recovery", "-w", "--json", "--interval", "0.01"], fake, capsys)
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(docs) == 2
    assert docs[0]["watch"]["objects_remaining"] == 2 and docs[1]["watch"]["done"] is True


def test_watch_unreachable_sheep_exits_2_with_one_line(capsys):
    gone = CollieError("cannot reach sheep at 127.0.0.1:7000: connection refused", Exit.UNREACHABLE)
    fake = FakeClient({("GET", "/recovery"): sequence(recovery(1), gone)})
    code, out, err = run(["node", "recovery", "--watch", "--interval", "0.01"], fake, capsys)
    assert code == 2
    assert one_line(err) == "collie: watch stopped: cannot reach sheep at 127.0.0.1:7000: connection refused"
    assert "objects 1/4" in out


def test_watch_api_errors_keep_their_exit_code(capsys):
    fake = FakeClient({("GET", "/recovery"): sequence(api_error(503, "Unavailable", "not formatted"))})
    code, _, err = run(["node", "recovery", "--watch"], fake, capsys)
    assert code == 2 and one_line(err) == "collie: not formatted"


def test_watch_ctrl_c_exits_130(capsys):
    fake = FakeClient({("GET", "/recovery"): sequence(recovery(1), KeyboardInterrupt())})
    code, _, err = run(["node", "recovery", "--watch", "--interval", "0.01"], fake, capsys)
    assert code == 130 and one_line(err) == "collie: interrupted"


def test_watch_lowers_the_read_timeout():
    fake = FakeClient({("GET", "/recovery"): recovery(4, state="complete")})
    fake.timeout_s = 180
    assert cli.main(["node", "recovery", "--watch"], client_factory=lambda *a, **k: fake) == 0
    assert fake.timeout_s == cli.WATCH_READ_TIMEOUT_S


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_interval_must_be_positive(value, capsys):
    code, _, err = run(["node", "recovery", "--watch", "--interval", value], FakeClient(), capsys)
    assert code == 64 and "invalid interval" in one_line(err)


def test_interval_default_is_one_second():
    args = cli.parse_args(["node", "recovery", "--watch"])
    assert args.watch and args.interval == 1.0


def test_plain_recovery_is_unchanged(capsys):
    fake = FakeClient({("GET", "/recovery"): recovery(4, state="complete")})
    code, out, _ = run(["node", "recovery"], fake, capsys)
    assert code == 0 and out == render.render_recovery(recovery(4, state="complete")) + "\n"


VDIS = {"vdis": [{"name": "busy", "vid": 10, "snap_id": 1, "size": 1 << 30},
                 {"name": "idle", "vid": 20, "snap_id": 2, "size": 1 << 30},
                 {"name": "idle", "vid": 21, "snap_id": 1, "snapshot": True, "tag": "t1",
                  "size": 1 << 30},
                 {"name": "ro", "vid": 30, "snap_id": 1, "size": 1 << 30}]}
LOCKS = {"locks": [{"vid": 10, "name": "busy", "node_id": "n1", "client": "10.0.0.9:5000",
                    "since": 5.0, "generation": 3,
                    "attachments": [{"node_id": "n1", "client": "10.0.0.9:5000"},
                                    {"node_id": "n2", "client": "10.0.0.8:6000"}],
                    "standbys": [{"node_id": "n2", "client": "10.0.0.8:6000"}]}],
         "attached": [{"vid": 30, "name": "ro", "attachments": [{"node_id": "n3", "client": "c3"}]}]}


def test_long_table_shows_writer_client_and_standbys():
    rows = render.render_vdi_list_long(render.with_attachments(VDIS["vdis"], LOCKS)).splitlines()
    assert rows[0].split()[-3:] == ["Writer", "Client", "Standbys"]
    assert rows[1].split()[-3:] == ["n1", "10.0.0.9:5000", "10.0.0.8:6000@n2"]
    assert rows[2].startswith("s  idle") and rows[2].split()[-3:] == ["-", "-", "-"]
    assert rows[3].startswith("   idle") and rows[3].split()[-3:] == ["-", "-", "-"]
    assert rows[4].split()[-3:] == ["-", "-", "c3@n3"]
    plain = render.render_vdi_list(VDIS["vdis"]).splitlines()
    assert [r[:len(p)] for r, p in zip(rows, plain)] == plain      # the usual columns first


def test_vdi_list_long_makes_one_extra_call_and_json_has_the_attachments(capsys):
    fake = FakeClient({("GET", "/vdis"): VDIS, ("GET", "/locks"): LOCKS})
    code, out, _ = run(["vdi", "list", "-l"], fake, capsys)
    assert code == 0 and "10.0.0.9:5000" in out
    assert [c[1] for c in fake.calls] == ["/vdis", "/locks"]
    code, out, _ = run(["vdi", "list", "--json", "--long"], fake, capsys)
    by_vid = {v["vid"]: v for v in json.loads(out)["vdis"]}
    assert by_vid[10]["lock"] == {"node_id": "n1", "client": "10.0.0.9:5000", "since": 5.0,
                                  "generation": 3}
    assert [a["node_id"] for a in by_vid[10]["attachments"]] == ["n1", "n2"]
    assert by_vid[20]["lock"] is None and by_vid[20]["attachments"] == []
    assert by_vid[30]["lock"] is None and by_vid[30]["standbys"] == [{"node_id": "n3", "client": "c3"}]


def test_vdi_list_without_l_does_not_ask_for_locks(capsys):
    fake = FakeClient({("GET", "/vdis"): VDIS})
    assert run(["vdi", "list"], fake, capsys)[0] == 0
    assert [c[1] for c in fake.calls] == ["/vdis"]


def test_vdi_list_long_against_a_sheep_without_locks(capsys):
    fake = FakeClient({("GET", "/vdis"): VDIS})
    code, _, err = run(["vdi", "list", "-l"], fake, capsys)
    assert code == 1 and "'vdi list -l' is not supported by this sheep" in one_line(err)
