"""Admin routes for balance: a node's weight at run time (`collie node weight`).

| method, path | body | answer |
|---|---|---|
| POST /node/weight | ``{"weight": W}`` (1..MAX_WEIGHT) | ``{"node_id", "weight", "old_weight"}`` |
| POST /vdis/NAME/copies | ``{"copies": N}`` | ``{"name", "copies", "old_copies", "changed", "epoch"}`` |

The route changes the weight of the sheep that serves it (collie sends it to the named
node's own admin port): the member znode is rewritten and the leader makes a new epoch, whose
recovery moves objects to or from this node only.  Weight 0 is a gateway (no store): refused,
as is any change on a gateway, which has no store to fill.  The copies of a VDI and its
snapshots: `sheep.volumes.redundancy`.
"""
from __future__ import annotations

import logging

from common.errors import InvalidRequest
from sheep.admin.app import Request, Router
from sheep.volumes import redundancy

log = logging.getLogger(__name__)

MAX_WEIGHT = 1000       # 128 000 virtual nodes for this member: ring builds stay cheap


def register(r: Router, sheep) -> None:
    """Add this module's routes for one `sheep.daemon.node.Sheep`."""
    r.add("POST", "/node/weight", lambda req: set_weight(sheep, req))
    r.add("POST", "/vdis/<name>/copies", lambda req: alter_copies(sheep, req))


def parse_weight(body) -> int:
    """The requested weight, or InvalidRequest saying what is wrong with it."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object {\"weight\": W}")
    w = body.get("weight")
    if isinstance(w, bool) or not isinstance(w, int):
        raise InvalidRequest("field 'weight' must be an integer")
    if w == 0:
        raise InvalidRequest("weight 0 means gateway-only (no data): restart the sheep with "
                             "--gateway instead")
    if not 1 <= w <= MAX_WEIGHT:
        raise InvalidRequest(f"weight must be between 1 and {MAX_WEIGHT}, not {w}")
    return w


def set_weight(sheep, req: Request) -> dict:
    weight = parse_weight(req.json())
    old = sheep.coordinator.member
    if old.gateway:
        raise InvalidRequest(f"node {old.node_id} is a gateway (no store): its weight cannot "
                             "change at run time; restart it without --gateway")
    member = sheep.coordinator.set_weight(weight)
    sheep.member = member
    return {"node_id": member.node_id, "weight": member.weight, "old_weight": old.weight}


def alter_copies(sheep, req: Request) -> dict:
    name = req.params["name"]
    body = req.json()
    copies = body.get("copies") if isinstance(body, dict) else None
    return redundancy.alter_copies(sheep.vdis, sheep.coordinator, sheep.epochs, name, copies,
                                   client=f"alter-copy@{sheep.node_id}")
