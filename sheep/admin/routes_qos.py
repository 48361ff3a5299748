"""Admin routes for per-VDI QoS limits (`sheep.volumes.qos`, docs/volumes.md).

| method, path | body | answer |
|---|---|---|
| GET /vdis/NAME/qos | | `{"name", "vid", "qos": {field: int}}` (empty: unlimited) |
| POST /vdis/NAME/qos | `{"limits": {field: int}, "clear": bool}` | the same, after the change |

Fields are `vdi.qos.FIELDS` (``iops``, ``read_bps``, ``iops_burst``, ``burst_seconds``...);
0 removes one, ``clear`` removes those not given.  The gateway holding the VDI applies a
change within a second (it watches the entry).
"""
from __future__ import annotations

from common.errors import InvalidRequest
from sheep.admin.app import Request, Router
from sheep.volumes.qos import set_limits


def register(r: Router, sheep) -> None:
    """Add this module's routes for one `sheep.daemon.node.Sheep`."""
    r.add("GET", "/vdis/<name>/qos", lambda req: _get(sheep, req))
    r.add("POST", "/vdis/<name>/qos", lambda req: _put(sheep, req))


def _answer(entry: dict) -> dict:
    return {"name": entry["name"], "vid": entry["vid"], "qos": entry.get("qos") or {}}


def _get(sheep, req: Request) -> dict:
    return _answer(sheep.vdis.working(req.params["name"]))


def _put(sheep, req: Request) -> dict:
    body = req.json()
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object {\"limits\": {...}, \"clear\": bool}")
    limits, clear = body.get("limits", {}), body.get("clear", False)
    if not isinstance(limits, dict) or not isinstance(clear, bool):
        raise InvalidRequest("'limits' must be an object and 'clear' a boolean")
    sheep.vdis.check_writable()
    return _answer(set_limits(sheep.vdis, req.params["name"], limits, clear))
