"""POST /node/weight: what the route accepts, and that it changes the member it serves."""
import dataclasses
import types

import pytest

from common.errors import InvalidRequest
from coordinator.ring import Member
from sheep.admin import routes_balance


@pytest.mark.parametrize("body, message", [
    ({"weight": 0}, "gateway-only"), ({"weight": -1}, "between 1"),
    ({"weight": routes_balance.MAX_WEIGHT + 1}, "between 1"), ({"weight": "3"}, "integer"),
    ({"weight": True}, "integer"), ({}, "integer"), ([3], "JSON object")])
def test_bad_weights_are_refused(body, message):
    with pytest.raises(InvalidRequest, match=message):
        routes_balance.parse_weight(body)


class Coordinator:
    def __init__(self, member):
        self.member = member

    def set_weight(self, w):
        self.member = dataclasses.replace(self.member, weight=w)
        return self.member


def sheep_with(weight):
    m = Member(node_id="n1", addr="127.0.0.1", port=1, admin_port=2, nbd_port=3, weight=weight)
    return types.SimpleNamespace(member=m, coordinator=Coordinator(m))


def request(body):
    return types.SimpleNamespace(json=lambda: body)


def test_set_weight_changes_this_member():
    sheep = sheep_with(1)
    assert routes_balance.set_weight(sheep, request({"weight": 4})) == {
        "node_id": "n1", "weight": 4, "old_weight": 1}
    assert sheep.member.weight == 4 and sheep.coordinator.member.weight == 4


def test_a_gateway_keeps_weight_zero():
    sheep = sheep_with(0)
    with pytest.raises(InvalidRequest, match="gateway"):
        routes_balance.set_weight(sheep, request({"weight": 2}))
    assert sheep.coordinator.member.weight == 0
