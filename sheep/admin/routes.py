"""The admin API's routes: thin handlers from HTTP requests to the daemon's parts."""
from __future__ import annotations

import logging

import gevent

from common.errors import InvalidRequest, NotFound, SheepError
from sheep.admin import routes_balance, routes_qos, routes_recovery, routes_volumes, ui
from sheep.admin.app import Request, Response, Router, volume_range_response
from sheep.admin.metrics import METRICS_CONTENT_TYPE, render_metrics
from sheep.volumes import redundancy

log = logging.getLogger(__name__)


def build_router(sheep) -> Router:
    """Routes for one `sheep.daemon.node.Sheep`."""
    r = Router()
    api = _Api(sheep)
    r.add("GET", "/cluster", api.cluster)
    r.add("POST", "/cluster/format", api.format)
    r.add("POST", "/cluster/token", api.rotate_token)
    r.add("GET", "/nodes", api.nodes)
    r.add("GET", "/node", api.node)
    r.add("GET", "/vdis", api.vdi_list)
    r.add("POST", "/vdis", api.vdi_create)
    r.add("GET", "/vdis/<name>", api.vdi_get)
    r.add("DELETE", "/vdis/<name>", api.vdi_delete)
    r.add("POST", "/vdis/<name>/resize", api.vdi_resize)
    r.add("GET", "/vdis/<name>/data", api.vdi_read)
    r.add("PUT", "/vdis/<name>/data", api.vdi_write)
    r.add("GET", "/locks", api.lock_list)
    r.add("DELETE", "/locks/<name>", api.lock_break)
    r.add("GET", "/metrics", api.metrics)
    r.add("GET", "/health", api.health)
    routes_volumes.register(r, sheep)
    routes_recovery.register(r, sheep)
    routes_qos.register(r, sheep)
    routes_balance.register(r, sheep)
    ui.register(r, sheep)
    return r


def _int_field(body: dict, name: str, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"field '{name}' must be an integer")
    return value


class _Api:
    def __init__(self, sheep) -> None:
        self.sheep = sheep
        self._copies = redundancy.CopiesReport(self._complete_epoch)

    def _complete_epoch(self) -> int | None:
        latest = self.sheep.coordinator.latest_epoch()
        return None if latest is None else \
            self.sheep.coordinator.complete_epoch(before=latest["epoch"] + 1)

    def health(self, req: Request):
        """Is this daemon up?  Needs no token (load balancers, launchers): says nothing else."""
        return {"ok": True}

    def rotate_token(self, req: Request):
        """A new admin token for the whole cluster (``token``: given, else random)."""
        body = req.json()
        given = body.get("token")
        if given is not None and not isinstance(given, str):
            raise InvalidRequest("field 'token' must be a string")
        try:
            return {"token": self.sheep.admin_token.rotate(given)}
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    # -- cluster ---------------------------------------------------------------
    def cluster(self, req: Request):
        coord = self.sheep.coordinator
        fmt = coord.cluster_format()
        epochs = coord.epochs()
        return {
            "name": self.sheep.config.cluster,
            "state": (fmt or {}).get("state", "unformatted") if fmt else "unformatted",
            "format": fmt,
            "epoch": self.sheep.epochs.epoch,
            "epochs": [{"epoch": e["epoch"], "created": e.get("created"),
                        "members": [m["node_id"] for m in e["members"]]} for e in epochs],
            "leader": coord.leader(),
        }

    def format(self, req: Request):
        body = req.json()
        copies = _int_field(body, "copies")
        shift = _int_field(body, "block_size_shift", required=False) or 22
        min_copies = _int_field(body, "min_copies", required=False)
        fmt = self.sheep.coordinator.format(copies, block_size_shift=shift, min_copies=min_copies)
        self.sheep.cluster_format()
        return {"format": fmt}

    # -- nodes -----------------------------------------------------------------
    def _stat(self, member) -> dict | None:
        try:
            header, _ = self.sheep.gateway.call_member(member, {"op": "stat"})
            return header
        except SheepError as exc:
            log.info("stat of %s failed: %s", member.node_id, exc)
            return None

    def nodes(self, req: Request):
        members = sorted(self.sheep.coordinator.members(), key=lambda m: m.node_id)
        jobs = [gevent.spawn(self._stat, m) for m in members]
        gevent.joinall(jobs, timeout=10)
        out = []
        for m, job in zip(members, jobs):
            stat = job.value if job.successful() else None
            out.append({**m.to_dict(), "role": m.role, "store": (stat or {}).get("store"),
                        "epoch": (stat or {}).get("epoch"), "fenced": (stat or {}).get("fenced")})
        return {"nodes": out}

    def node(self, req: Request):
        n = self.sheep
        return {**n.member.to_dict(), "role": n.member.role,
                "store": n.replica.stat() if n.replica is not None else None,
                "epoch": n.epochs.epoch, "fenced": bool(n.coordinator.fenced),
                "recovery": n.recovery.progress if n.recovery is not None else None,
                "scrub": n.scrubber.stats if n.scrubber is not None else None}

    # -- vdis --------------------------------------------------------------------
    def _entry(self, e: dict) -> dict:
        return {**e, **self.sheep.vdis.usage(e)}  # used_bytes, shared_bytes

    def vdi_list(self, req: Request):
        entries = self.sheep.vdis.entries()
        jobs = [gevent.spawn(self._entry, e) for e in entries]
        gevent.joinall(jobs)
        return {"vdis": self._copies.annotate([j.get() for j in jobs])}

    def vdi_create(self, req: Request):
        body = req.json()
        name = body.get("name")
        size = _int_field(body, "size")
        copies = _int_field(body, "copies", required=False)
        return Response(self.sheep.vdis.create(name, size, copies), status=201)

    def vdi_get(self, req: Request):
        return self._copies.annotate([self._entry(self.sheep.vdis.working(req.params["name"]))])[0]

    def vdi_delete(self, req: Request):
        self.sheep.vdis.delete(req.params["name"])
        return {}

    def vdi_resize(self, req: Request):
        return self.sheep.vdis.resize(req.params["name"], _int_field(req.json(), "size"))

    def vdi_read(self, req: Request):
        vdis = self.sheep.vdis
        entry = vdis.working(req.params["name"])
        return volume_range_response(req, vdis.open_volume(entry, readonly=True), entry,
                                     f"VDI '{entry['name']}'")

    def vdi_write(self, req: Request):
        name = req.params["name"]
        offset = req.int_query("offset", 0)
        stream = req.environ["wsgi.input"]
        length = req.environ.get("CONTENT_LENGTH")
        if length in (None, ""):
            raise InvalidRequest("PUT of VDI data needs a Content-Length")
        data = _read_exact(stream, int(length))
        self.sheep.vdis.write(name, offset, data)
        return {"written": len(data)}

    # -- locks -------------------------------------------------------------------
    def lock_list(self, req: Request):
        """The write right of every VDI that has a holder or an attachment: ``locks`` (the
        holders, each with its ``generation``, its VDI's ``attachments`` and ``standbys``:
        the attached connections other than the holder) and ``attached`` (VDIs attached
        by connections none of which holds the write right)."""
        names = {e["vid"]: e["name"] for e in self.sheep.catalog.list()}
        attached = self.sheep.attachments.all()
        locks = []
        for lock in self.sheep.locks.list():
            vid = lock.get("vid")
            mine = attached.pop(vid, [])
            standbys = [a for a in mine if (a.get("node_id"), a.get("client")) !=
                        (lock.get("node_id"), lock.get("client"))]
            locks.append({**lock, "name": names.get(vid, "?"), "attachments": mine,
                          "standbys": standbys})
        return {"locks": locks,
                "attached": [{"vid": vid, "name": names.get(vid, "?"), "attachments": found}
                             for vid, found in sorted(attached.items())]}

    def lock_break(self, req: Request):
        entry = self.sheep.vdis.working(req.params["name"])
        try:
            broken = self.sheep.locks.break_lock(entry["vid"])
        except NotFound:
            raise NotFound(f"VDI '{entry['name']}' is not locked") from None
        self.sheep.vdis.fencing.after_break(entry["vid"], broken["new_generation"])
        return {"broken": broken, "name": entry["name"]}

    def metrics(self, req: Request):
        return Response(render_metrics(self.sheep), content_type=METRICS_CONTENT_TYPE)


def _read_exact(stream, n: int) -> bytearray:
    if n > 64 << 20:
        raise InvalidRequest("PUT bodies are limited to 64 MiB; send several")
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(n - len(buf), 1 << 20))
        if not chunk:
            raise InvalidRequest(f"request body ended after {len(buf)} of {n} bytes")
        buf += chunk
    return buf

