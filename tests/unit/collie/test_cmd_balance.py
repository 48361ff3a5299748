"""collie node weight: argument checks, node lookup, and where the request goes."""
import types

import pytest

from collie import cli, cmd_balance
from collie.client import CollieError, Exit

NODES = {"nodes": [
    {"node_id": "a", "addr": "127.0.0.1", "admin_port": 7000, "weight": 1},
    {"node_id": "b", "addr": "127.0.0.2", "admin_port": 7001, "weight": 1},
    {"node_id": "gw", "addr": "127.0.0.3", "admin_port": 7002, "weight": 0}]}


class Client:
    def __init__(self, addr="127.0.0.1", port=7000, **kw):
        self.addr, self.port, self.kw = addr, port, kw
        self.posts, self.closed = [], False

    def get(self, path):
        assert path == "/nodes"
        return NODES

    def post(self, path, body):
        self.posts.append((path, body))
        return {"node_id": "b" if self.port == 7001 else "a", "weight": body["weight"],
                "old_weight": 1}

    def close(self):
        self.closed = True


def args(node, weight, **kw):
    return types.SimpleNamespace(node=node, weight=weight, json=False,
                                 token=types.SimpleNamespace(value="t0k", source="env"), **kw)


@pytest.mark.parametrize("argv, message", [
    (["node", "weight", "a", "0"], "gateway-only"),
    (["node", "weight", "a", "-2"], "at least 1"),
    (["node", "weight", "a", "two"], "invalid weight"),
])
def test_bad_weights_are_usage_errors(argv, message, capsys):
    assert cli.main(argv) == Exit.USAGE
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_change_goes_to_the_named_nodes_own_admin_port(capsys):
    made = []

    def factory(addr, port, **kw):
        made.append(Client(addr, port, **kw))
        return made[-1]

    local = Client()
    assert cmd_balance.cmd_node_weight(local, args("b", 3), client_factory=factory) == Exit.OK
    assert local.posts == [] and len(made) == 1
    assert (made[0].addr, made[0].port, made[0].kw["token"]) == ("127.0.0.2", 7001, "t0k")
    assert made[0].posts == [("/node/weight", {"weight": 3})] and made[0].closed
    assert "node b: weight 1 -> 3 (384 virtual nodes)" in capsys.readouterr().out


def test_by_index_and_to_the_sheep_collie_talks_to():
    local = Client()
    assert cmd_balance.cmd_node_weight(local, args("0", 2), client_factory=None) == Exit.OK
    assert local.posts == [("/node/weight", {"weight": 2})] and not local.closed


@pytest.mark.parametrize("name, code", [("zz", Exit.NOT_FOUND), ("7", Exit.NOT_FOUND),
                                        ("gw", Exit.FAILURE)])
def test_unknown_nodes_and_gateways_are_refused(name, code):
    with pytest.raises(CollieError) as err:
        cmd_balance.cmd_node_weight(Client(), args(name, 2), client_factory=None)
    assert err.value.exit_code == code


class VdiClient:
    def __init__(self, changed=1):
        self.changed, self.gets = changed, 0

    def post(self, path, body):
        assert path == "/vdis/vol/copies"
        return {"name": "vol", "copies": body["copies"], "old_copies": 2,
                "changed": self.changed, "epoch": 5}

    def get(self, path):
        assert path == "/recovery"
        self.gets += 1
        done = self.gets > 1
        node = {"state": "complete" if done else "recovering", "epoch": 5 if done else 4}
        return {"state": node["state"], "epoch": node["epoch"], "nodes": [node]}


def test_alter_copy_waits_for_the_recovery_with_progress_on_stderr(capsys):
    client = VdiClient()
    args = cli.parse_args(["vdi", "alter-copy", "vol", "-c", "3", "--interval", "0"])
    assert cmd_balance.cmd_vdi_alter_copy(client, args) == Exit.OK
    out = capsys.readouterr()
    assert client.gets == 2 and out.err
    assert "copies 2 -> 3 (1 VDI entries), recovery at epoch 5 done" in out.out


def test_alter_copy_no_wait_and_bad_counts(capsys):
    client = VdiClient()
    args = cli.parse_args(["vdi", "alter-copy", "vol", "-c", "1", "--no-wait"])
    assert cmd_balance.cmd_vdi_alter_copy(client, args) == Exit.OK and client.gets == 0
    assert cli.main(["vdi", "alter-copy", "vol", "-c", "0"]) == Exit.USAGE
    assert cli.main(["vdi", "alter-copy", "vol"]) == Exit.USAGE
