"""collie.cli and collie.client: argument parsing, commands against a fake client, exit codes.

No network, except one connection attempt to a closed port on 127.0.0.1.
"""
import io
import json
import socket
import sys

import pytest

from collie import cli
from collie.client import AdminClient, CollieError, describe_connection_error, error_from_response, exit_code_for

M = 1 << 20
CHUNK = 4 * M


def api_error(status, code=None, message="boom", method="GET", path="/x"):
    body = json.dumps({"error": message, "code": code}).encode() if code else b"<html>not found</html>"
    return error_from_response(method, path, status, "Reason", body)


class FakeClient:
    """Answers from a dict keyed by (METHOD, path); one VDI's bytes live in ``disk``."""

    def __init__(self, answers=None, disk=b"", vdi="test"):
        self.answers = dict(answers or {})
        self.disk = bytearray(disk)
        self.vdi = vdi
        self.calls = []
        self.closed = False
        self.answers.setdefault(("GET", f"/vdis/{vdi}"), {"name": vdi, "size": len(disk)})

    def _answer(self, method, path, body=None, **params):
        self.calls.append((method, path, body, params))
        answer = self.answers.get((method, path))
        if answer is None:
            raise api_error(404, "NotFound", f"{path} not found", method, path)
        if isinstance(answer, BaseException):
            raise answer
        return answer(body, **params) if callable(answer) else answer

    def get(self, path, **params):
        return self._answer("GET", path, **params)

    def post(self, path, body=None):
        return self._answer("POST", path, body)

    def delete(self, path):
        return self._answer("DELETE", path)

    def get_bytes(self, path, offset, length):
        self.calls.append(("GET", path, None, {"offset": offset, "length": length}))
        return bytes(self.disk[offset:offset + length])

    def put_bytes(self, path, data, offset):
        self.calls.append(("PUT", path, len(data), {"offset": offset}))
        self.disk[offset:offset + len(data)] = data
        return {"written": len(data)}

    def close(self):
        self.closed = True


def run(argv, fake, capsys=None):
    """main() with the fake client; returns (exit code, stdout, stderr)."""
    code = cli.main(argv, client_factory=lambda addr, port, **kw: fake)
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def one_line(err):
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("collie: "), err
    return lines[0]


# ---- parsing ----

@pytest.mark.parametrize("argv", [
    [], ["vdi"], ["frobnicate"], ["vdi", "frobnicate"], ["vdi", "create", "x"], ["vdi", "create", "x", "10Q"],
    ["vdi", "create", "x", "0"], ["vdi", "resize", "x", "-1"], ["vdi", "read", "x", "1M", "0"],
    ["cluster", "format", "--copies", "0"], ["-p", "70000", "vdi", "list"], ["vdi", "snapshot", "x"],
    ["vdi", "clone", "-s", "t", "src"], ["vdi", "lock"], ["node", "list", "--bogus"],
])
def test_usage_errors_exit_64_with_one_line(argv, capsys):
    fake = FakeClient()
    code, out, err = run(argv, fake, capsys)
    assert code == 64
    one_line(err)
    assert out == "" and fake.calls == []


def test_bad_size_names_the_value(capsys):
    code, _, err = run(["vdi", "create", "x", "10Q"], FakeClient(), capsys)
    assert code == 64 and "invalid size '10Q'" in one_line(err)


@pytest.mark.parametrize("argv", [["--help"], ["vdi", "--help"], ["vdi", "create", "--help"]])
def test_help_exits_0(argv, capsys):
    code, out, err = run(argv, FakeClient(), capsys)
    assert code == 0 and "usage: collie" in out and err == ""


def test_address_defaults_env_and_flags(monkeypatch):
    monkeypatch.delenv("SHEEP_ADDR", raising=False)
    monkeypatch.delenv("SHEEP_ADMIN_PORT", raising=False)
    args = cli.parse_args(["vdi", "list"])
    assert (args.addr, args.port, args.json, args.debug) == ("127.0.0.1", 7000, False, False)
    monkeypatch.setenv("SHEEP_ADDR", "10.1.2.3")
    monkeypatch.setenv("SHEEP_ADMIN_PORT", "7005")
    assert (cli.parse_args(["vdi", "list"]).addr, cli.parse_args(["vdi", "list"]).port) == ("10.1.2.3", 7005)
    args = cli.parse_args(["-a", "h1", "-p", "8000", "vdi", "list"])
    assert (args.addr, args.port) == ("h1", 8000)
    # Sheepdog style: options after the command win
    args = cli.parse_args(["-a", "h1", "vdi", "list", "-a", "h2", "-p", "9000", "--json"])
    assert (args.addr, args.port, args.json) == ("h2", 9000, True)


def test_bad_port_env_is_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("SHEEP_ADMIN_PORT", "http")
    code, _, err = run(["vdi", "list"], FakeClient(), capsys)
    assert code == 64 and "SHEEP_ADMIN_PORT" in one_line(err)


def test_offset_and_length_accept_suffixes():
    args = cli.parse_args(["vdi", "read", "x", "1M", "4k"])
    assert (args.offset, args.length) == (M, 4096)
    args = cli.parse_args(["vdi", "write", "x"])
    assert (args.offset, args.length) == (0, None)


def test_main_passes_address_to_factory_and_closes_client(capsys):
    seen = []
    fake = FakeClient({("GET", "/vdis"): {"vdis": []}})
    code = cli.main(["-a", "h", "-p", "7001", "vdi", "list"], client_factory=lambda a, p, **kw: seen.append((a, p)) or fake)
    assert code == 0 and seen == [("h", 7001)] and fake.closed


# ---- commands ----

def cmd(argv):
    return cli.parse_args(argv)


def test_cluster_format(capsys):
    fake = FakeClient({("POST", "/cluster/format"): {"format": {"copies": 2, "block_size_shift": 22}}})
    assert cli.cmd_cluster_format(fake, cmd(["cluster", "format", "--copies", "2"])) == 0
    assert fake.calls == [("POST", "/cluster/format", {"copies": 2, "block_size_shift": 22}, {})]
    assert capsys.readouterr().out == "cluster formatted: copies 2, object size 4 MiB\n"


def test_cluster_format_twice_exits_3(capsys):
    fake = FakeClient({("POST", "/cluster/format"): api_error(409, "AlreadyExists", "cluster is already formatted")})
    code, out, err = run(["cluster", "format", "--copies", "3"], fake, capsys)
    assert code == 3 and out == "" and one_line(err) == "collie: cluster is already formatted"


def test_cluster_info_and_json(capsys):
    answer = {"state": "unformatted", "format": None, "epoch": 0, "epochs": []}
    fake = FakeClient({("GET", "/cluster"): answer})
    assert cli.cmd_cluster_info(fake, cmd(["cluster", "info"])) == 0
    assert capsys.readouterr().out == "Cluster status: Waiting for cluster format\n"
    assert cli.cmd_cluster_info(fake, cmd(["cluster", "info", "--json"])) == 0
    assert json.loads(capsys.readouterr().out) == answer


def test_node_list_and_info(capsys):
    nodes = {"nodes": [{"node_id": "n1", "addr": "127.0.0.1", "port": 7100, "zone": "", "weight": 1,
                        "store": {"used_bytes": 0, "capacity_bytes": 1 << 30, "free_bytes": 1 << 30}}]}
    fake = FakeClient({("GET", "/nodes"): nodes})
    assert cli.cmd_node_list(fake, cmd(["node", "list"])) == 0
    assert capsys.readouterr().out.splitlines()[1] == " 0  n1    127.0.0.1:7100      128  -     storage"
    assert cli.cmd_node_info(fake, cmd(["node", "info"])) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Total  1.0 GB  0.0 MB  1.0 GB    0%"


def test_vdi_create_sends_bytes_and_copies(capsys):
    entry = {"name": "x", "vid": 1, "size": 10 << 30, "copies": 2}
    fake = FakeClient({("POST", "/vdis"): entry})
    assert cli.cmd_vdi_create(fake, cmd(["vdi", "create", "x", "10G", "--copies", "2"])) == 0
    assert fake.calls[-1][2] == {"name": "x", "size": 10 << 30, "copies": 2}
    assert capsys.readouterr().out == "vdi 'x' created: size 10 GB, copies 2\n"
    cli.cmd_vdi_create(fake, cmd(["vdi", "create", "x", "4k"]))
    assert fake.calls[-1][2] == {"name": "x", "size": 4096}


def test_vdi_names_are_quoted_in_paths(capsys):
    fake = FakeClient({("DELETE", "/vdis/a%20b%2Fc"): {}})
    assert cli.cmd_vdi_delete(fake, cmd(["vdi", "delete", "a b/c"])) == 0
    assert capsys.readouterr().out == "vdi 'a b/c' deleted\n"


def test_vdi_resize(capsys):
    fake = FakeClient({("POST", "/vdis/x/resize"): {"name": "x", "size": 20 << 30}})
    assert cli.cmd_vdi_resize(fake, cmd(["vdi", "resize", "x", "20G"])) == 0
    assert fake.calls[-1][2] == {"size": 20 << 30}
    assert capsys.readouterr().out == "vdi 'x' resized to 20 GB\n"


def test_vdi_list_json_is_the_api_answer(capsys):
    answer = {"vdis": [{"name": "x", "vid": 5, "size": 4096, "copies": 1, "snapshot": False}]}
    fake = FakeClient({("GET", "/vdis"): answer})
    assert cli.cmd_vdi_list(fake, cmd(["vdi", "list", "--json"])) == 0
    assert json.loads(capsys.readouterr().out) == answer


def test_vdi_read_whole_vdi_in_aligned_chunks(capsysbinary):
    disk = bytes(range(256)) * (10 * M // 256)            # 10 MiB
    fake = FakeClient(disk=disk)
    assert cli.cmd_vdi_read(fake, cmd(["vdi", "read", "test", "1M"])) == 0
    assert capsysbinary.readouterr().out == disk[M:]
    reads = [(c[3]["offset"], c[3]["length"]) for c in fake.calls if c[1] == "/vdis/test/data"]
    assert reads == [(M, 3 * M), (4 * M, 4 * M), (8 * M, 2 * M)]


def test_vdi_read_range(capsysbinary):
    fake = FakeClient(disk=b"abcdefgh" * 1024)
    assert cli.cmd_vdi_read(fake, cmd(["vdi", "read", "test", "8", "4k"])) == 0
    assert capsysbinary.readouterr().out == (b"abcdefgh" * 1024)[8:8 + 4096]
    assert [c[0] for c in fake.calls] == ["GET", "GET"]  # the size, then the one chunk


def test_vdi_read_range_past_end_fails_before_streaming(capsysbinary):
    fake = FakeClient(disk=b"x" * 4096)
    code = cli.main(["vdi", "read", "test", "4000", "200"], client_factory=lambda a, p, **kw: fake)
    assert code == 1
    captured = capsysbinary.readouterr()
    assert captured.out == b"" and b"past the end" in captured.err
    assert len(fake.calls) == 1      # only the size was asked for


def test_set_throttle_without_a_limit_is_a_usage_error(capsys):
    code, out, err = run(["node", "recovery", "set-throttle"], FakeClient(), capsys)
    assert code == 64 and "set-throttle" in one_line(err)


def test_vdi_read_offset_past_end_fails(capsys):
    code, out, err = run(["vdi", "read", "test", "1M"], FakeClient(disk=b"x" * 4096), capsys)
    assert code == 1 and "beyond the end" in one_line(err)


def feed_stdin(monkeypatch, data):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_vdi_write_until_eof_in_aligned_chunks(monkeypatch, capsys):
    fake = FakeClient(disk=bytes(16 * M))
    payload = bytes([7]) * (9 * M)
    feed_stdin(monkeypatch, payload)
    assert cli.cmd_vdi_write(fake, cmd(["vdi", "write", "test", "2M"])) == 0
    puts = [(c[3]["offset"], c[2]) for c in fake.calls if c[0] == "PUT"]
    assert puts == [(2 * M, 2 * M), (4 * M, 4 * M), (8 * M, 3 * M)]
    assert bytes(fake.disk[2 * M:11 * M]) == payload and fake.disk[11 * M] == 0
    assert capsys.readouterr().out == ""


def test_vdi_write_exact_length_and_json(monkeypatch, capsys):
    fake = FakeClient(disk=bytes(M))
    feed_stdin(monkeypatch, b"z" * 5000)
    assert cli.cmd_vdi_write(fake, cmd(["vdi", "write", "test", "0", "4k", "--json"])) == 0
    assert bytes(fake.disk[:4097]) == b"z" * 4096 + b"\0"
    assert json.loads(capsys.readouterr().out) == {"written": 4096}


def test_vdi_write_short_stdin_fails(monkeypatch, capsys):
    fake = FakeClient(disk=bytes(M))
    feed_stdin(monkeypatch, b"z" * 100)
    code, _, err = run(["vdi", "write", "test", "0", "4k"], fake, capsys)
    assert code == 1 and one_line(err) == "collie: stdin ended after 100 of 4096 bytes"


def test_vdi_write_empty_stdin_writes_nothing(monkeypatch):
    fake = FakeClient(disk=bytes(M))
    feed_stdin(monkeypatch, b"")
    assert cli.cmd_vdi_write(fake, cmd(["vdi", "write", "test"])) == 0
    assert [c for c in fake.calls if c[0] == "PUT"] == []


def test_snapshot_clone_rollback_bodies(capsys):
    fake = FakeClient({("POST", "/vdis/x/snapshot"): {}, ("POST", "/vdis/x/clone"): {},
                       ("POST", "/vdis/x/rollback"): {}})
    assert cli.cmd_vdi_snapshot(fake, cmd(["vdi", "snapshot", "-s", "t1", "x"])) == 0
    assert cli.cmd_vdi_clone(fake, cmd(["vdi", "clone", "-s", "t1", "x", "y"])) == 0
    assert cli.cmd_vdi_rollback(fake, cmd(["vdi", "rollback", "-s", "t1", "-f", "x"])) == 0
    assert [c[2] for c in fake.calls] == [{"tag": "t1"}, {"tag": "t1", "name": "y"}, {"tag": "t1"}]
    assert capsys.readouterr().out.splitlines() == [
        "vdi 'x' snapshot 't1' created", "vdi 'y' cloned from 'x' snapshot 't1'",
        "vdi 'x' rolled back to snapshot 't1'"]


def test_rollback_without_force_on_a_pipe_refuses(monkeypatch, capsys):
    feed_stdin(monkeypatch, b"yes\n")
    fake = FakeClient({("POST", "/vdis/x/rollback"): {}})
    code, _, err = run(["vdi", "rollback", "-s", "t1", "x"], fake, capsys)
    assert code == 1 and "-f" in one_line(err) and fake.calls == []


def test_lock_tree_check_recovery_shutdown(capsys):
    fake = FakeClient({("GET", "/locks"): {"locks": []}, ("DELETE", "/locks/x"): {},
                       ("GET", "/vdis"): {"vdis": [{"name": "x", "vid": 1}]},
                       ("POST", "/vdis/x/check"): {"objects": 3}, ("GET", "/recovery"): {"recovering": False},
                       ("POST", "/cluster/shutdown"): {}})
    for func, argv in [(cli.cmd_vdi_lock_list, ["vdi", "lock", "list"]),
                       (cli.cmd_vdi_lock_unlock, ["vdi", "lock", "unlock", "x"]),
                       (cli.cmd_vdi_tree, ["vdi", "tree"]), (cli.cmd_vdi_check, ["vdi", "check", "x"]),
                       (cli.cmd_node_recovery, ["node", "recovery"]),
                       (cli.cmd_cluster_shutdown, ["cluster", "shutdown"])]:
        args = cmd(argv)
        assert args.func is func and func(fake, args) == 0
    assert capsys.readouterr().out.splitlines() == [
        "VDI  Owner  Client  Since  Gen  Standbys", "vdi 'x' unlocked", "x", "vdi 'x' checked: objects 3", "Recovery: idle",
        "cluster shutdown requested"]


# ---- errors ----

@pytest.mark.parametrize("status, code, exit_code", [
    (400, "InvalidRequest", 1), (404, "NotFound", 5), (409, "AlreadyExists", 3), (409, "Locked", 1),
    (416, "OutOfRange", 1), (423, "ReadOnly", 1), (503, "NotReady", 2), (503, "Fenced", 2),
    (507, "NoSpace", 4), (500, "SheepError", 1), (502, None, 1),
])
def test_http_status_table(status, code, exit_code):
    assert exit_code_for(status, code) == exit_code


@pytest.mark.parametrize("status, code, exit_code", [(404, "NotFound", 5), (503, "NotReady", 2),
                                                     (507, "NoSpace", 4), (409, "Locked", 1)])
def test_api_errors_become_one_line_and_exit_code(status, code, exit_code, capsys):
    fake = FakeClient({("POST", "/vdis"): api_error(status, code, "vdi 'x'\nfailed")})
    code_, out, err = run(["vdi", "create", "x", "1G"], fake, capsys)
    assert code_ == exit_code and out == ""
    assert one_line(err) == "collie: vdi 'x' failed"


def test_not_found_message_from_server(capsys):
    code, _, err = run(["vdi", "delete", "x"], FakeClient(), capsys)  # fake: unknown path -> 404 NotFound
    assert code == 5 and one_line(err) == "collie: /vdis/x not found"


def test_error_without_json_body_names_the_request():
    err = error_from_response("GET", "/cluster", 500, "Internal Server Error", b"oops")
    assert (err.message, err.exit_code, err.code) == ("GET /cluster: HTTP 500 Internal Server Error", 1, None)


def test_missing_route_is_a_failure_not_not_found(capsys):
    # an older sheep without the route: 404 without the API's NotFound body
    fake = FakeClient({("GET", "/locks"): api_error(404, None), ("POST", "/vdis/x/snapshot"): api_error(404, None),
                       ("GET", "/recovery"): api_error(404, "NotFound", "no route")})
    code, _, err = run(["vdi", "lock", "list"], fake, capsys)
    assert code == 1 and one_line(err) == "collie: 'vdi lock list' is not supported by this sheep (HTTP 404)"
    code, _, err = run(["vdi", "snapshot", "-s", "t", "x"], fake, capsys)
    assert code == 1 and "not supported" in one_line(err)
    code, _, err = run(["node", "recovery"], fake, capsys)  # path names no resource: any 404 is the route
    assert code == 1 and "not supported" in one_line(err)


def test_named_resource_not_found_keeps_exit_5(capsys):
    fake = FakeClient({("POST", "/vdis/x/snapshot"): api_error(404, "NotFound", "vdi 'x' not found")})
    code, _, err = run(["vdi", "snapshot", "-s", "t", "x"], fake, capsys)
    assert code == 5 and one_line(err) == "collie: vdi 'x' not found"


def test_unexpected_exception_is_one_line_without_traceback(capsys):
    fake = FakeClient({("GET", "/vdis"): RuntimeError("kaput")})
    code, _, err = run(["vdi", "list"], fake, capsys)
    assert code == 1 and "internal error: RuntimeError: kaput" in one_line(err)


def test_debug_shows_traceback(capsys):
    fake = FakeClient({("GET", "/vdis"): api_error(503, "NotReady", "cluster is not ready")})
    code, _, err = run(["--debug", "vdi", "list"], fake, capsys)
    assert code == 2 and "Traceback" in err and err.rstrip().endswith("collie: cluster is not ready")


def test_connection_refused_exits_2_naming_the_address(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = cli.main(["-p", str(port), "cluster", "info"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert one_line(err) == f"collie: cannot reach sheep at 127.0.0.1:{port}: connection refused"


def test_describe_connection_error_finds_nested_causes():
    import requests
    try:
        try:
            raise TimeoutError("slow")
        except TimeoutError as inner:
            raise requests.ConnectionError("wrapped") from inner
    except requests.ConnectionError as exc:
        assert describe_connection_error(exc) == "timed out"
    assert describe_connection_error(requests.ConnectionError("Name or service not known")) == (
        "cannot resolve host name")
    assert describe_connection_error(requests.ConnectionError("???")) == "connection failed"


def test_client_builds_urls_and_ignores_proxy_env():
    client = AdminClient("::1", 7000)
    assert client.base_url == "http://[::1]:7000" and client.where == "::1:7000"
    assert client.session.trust_env is False
    client.close()


def test_collie_error_message_is_one_line():
    assert CollieError("a\n  b", 1).message == "a b"
