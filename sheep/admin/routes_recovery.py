"""Admin routes for recovery and cluster lifecycle: shutdown, recover, check, throttle.

| method, path | body | answer |
|---|---|---|
| GET /recovery | | ``{"state", "epoch", "recovering", "enabled", "throttle", "nodes": [progress]}`` |
| POST /recovery/throttle | ``{"objects_per_s"?, "bytes_per_s"?}`` (0 = unlimited) | ``{"throttle"}`` |
| POST /cluster/shutdown | | ``{"state": "shutdown"}`` |
| POST /cluster/recover | ``{"action": "enable" / "disable" / "force"}`` | ``{"state", "recovery"}`` |
| POST /cluster/check | ``{"repair": true}`` | check report (`sheep.recovery.check`) |
| POST /vdis/NAME/check | ``{"repair": true}`` | check report |
"""
from __future__ import annotations

import logging

import gevent

from common.errors import InvalidRequest, SheepError
from sheep.admin.app import Request, Router
from sheep.recovery.throttle import Limits

log = logging.getLogger(__name__)


def register(r: Router, sheep) -> None:
    """Add this module's routes for one `sheep.daemon.node.Sheep`."""
    api = _RecoveryApi(sheep)
    r.add("GET", "/recovery", api.recovery)
    r.add("POST", "/recovery/throttle", api.throttle)
    r.add("POST", "/cluster/shutdown", api.shutdown)
    r.add("POST", "/cluster/recover", api.recover)
    r.add("POST", "/cluster/check", api.cluster_check)
    r.add("POST", "/vdis/<name>/check", api.vdi_check)


def _repair_flag(req: Request) -> bool:
    value = req.json().get("repair", True)
    if not isinstance(value, bool):
        raise InvalidRequest("field 'repair' must be true or false")
    return value


class _RecoveryApi:
    def __init__(self, sheep) -> None:
        self.sheep = sheep

    def _progress(self, member) -> dict:
        try:
            header, _ = self.sheep.gateway.call_member(member, {"op": "recovery"})
            return header["progress"]
        except SheepError as exc:
            return {"state": "unreachable", "error": exc.message}

    def recovery(self, req: Request):
        n = self.sheep
        view = n.epochs.view
        members = list(view.members) if view else []
        jobs = [gevent.spawn(self._progress, m) for m in members]
        gevent.joinall(jobs, timeout=10)
        nodes = []
        for m, job in zip(members, jobs):
            p = job.value if job.successful() and job.value else {"state": "unreachable"}
            nodes.append({**p, "node_id": m.node_id, "addr": m.addr, "port": m.port})
        epoch = view.epoch if view else 0
        complete = all(p.get("state") == "complete" and p.get("epoch") == epoch for p in nodes)
        value = n.coordinator.cluster_value or {}
        enabled = value.get("recovery", "enabled") != "disabled"
        state = "complete" if complete else ("disabled" if not enabled else "running")
        return {"state": state, "epoch": epoch, "recovering": not complete, "enabled": enabled,
                "throttle": Limits.from_dict(value.get("recovery_throttle")).to_dict(),
                "nodes": nodes}

    def throttle(self, req: Request):
        body = req.json()
        fields = {}
        for name in ("objects_per_s", "bytes_per_s"):
            if name in body:
                v = body[name]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                    raise InvalidRequest(f"field '{name}' must be a number >= 0 (0: unlimited)")
                fields[name] = float(v)
        if not fields:
            raise InvalidRequest("give objects_per_s and/or bytes_per_s (0: unlimited)")

        def change(v):
            return {**v, "recovery_throttle": {**Limits.from_dict(v.get("recovery_throttle"))
                                               .to_dict(), **fields}}
        value = self.sheep.coordinator.update_cluster(change)
        return {"throttle": value["recovery_throttle"]}

    def shutdown(self, req: Request):
        value = self.sheep.coordinator.shutdown()
        return {"state": value["state"]}

    def recover(self, req: Request):
        action = req.json().get("action")
        coord = self.sheep.coordinator
        if action == "force":
            value = coord.force_recover()
        elif action in ("enable", "disable"):
            value = coord.update_cluster(lambda v: {**v, "recovery": action + "d"})
        else:
            raise InvalidRequest("action must be one of enable, disable, force")
        return {"state": value.get("state"), "recovery": value.get("recovery", "enabled")}

    def cluster_check(self, req: Request):
        n = self.sheep
        return n.checker.check_entries(n.vdis.entries(), n.vdis.open_volume, _repair_flag(req),
                                       n.vdis)

    def vdi_check(self, req: Request):
        n = self.sheep
        entry = n.vdis.working(req.params["name"])
        return n.checker.check_entries([entry], n.vdis.open_volume, _repair_flag(req), n.vdis)
