"""The sheep command line: a gateway-only node (`--gateway`) and what excludes it."""
from __future__ import annotations

from pathlib import Path

import pytest

from sheep.daemon.config import parse_args


def test_a_storage_node_needs_a_directory_and_has_weight_one_by_default(capsys):
    config = parse_args(["--dir", "/srv/sheep", "--zk", "zk:2181"])
    assert (config.dir, config.weight, config.gateway) == (Path("/srv/sheep"), 1, False)
    with pytest.raises(SystemExit) as e:
        parse_args(["--zk", "zk:2181"])
    assert e.value.code == 2
    assert "--dir is required (except with --gateway)" in capsys.readouterr().err


def test_a_gateway_has_no_weight_and_may_go_without_a_directory():
    config = parse_args(["--gateway", "--zk", "zk:2181", "--addr", "10.0.0.9", "--port", "7100"])
    assert (config.dir, config.weight, config.gateway) == (None, 0, True)
    assert config.default_node_id == "10.0.0.9:7100"
    assert parse_args(["-g", "--dir", "/var/lib/sheep", "--zk", "zk"]).dir == Path("/var/lib/sheep")


def test_gateway_and_weight_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--gateway", "--weight", "2", "--zk", "zk:2181"])
    assert e.value.code == 2
    assert "--gateway and --weight exclude each other" in capsys.readouterr().err


def test_weight_zero_is_not_a_way_to_make_a_gateway(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--dir", "/srv/sheep", "--zk", "zk", "--weight", "0"])
    assert "--weight must be at least 1" in capsys.readouterr().err
