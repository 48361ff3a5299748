"""Admin routes for volume management: snapshot, clone, rollback, snapshot delete and read.

| method, path | body / query | answer |
|---|---|---|
| POST /vdis/NAME/snapshot | `{"tag"}` | 201 `{"snapshot": entry, "working": entry}` |
| POST /vdis/SRC/clone | `{"tag", "name"}` | 201 the clone's entry |
| POST /vdis/NAME/rollback | `{"tag"}` | the new working entry |
| GET /vdis/NAME/snapshots/TAG | | the snapshot's entry (with used/shared bytes) |
| DELETE /vdis/NAME/snapshots/TAG | | `{}` |
| GET /vdis/NAME/snapshots/TAG/data | `?offset=&length=&vid=` (vid: 404 unless TAG is still that entry) | raw bytes |
| GET /vdis/NAME/snapshots/TAG/diff | `?from=FROM` (none: everything) | `{"header", "extents": [[offset, length, "data"/"zero"]], "data_bytes", "zero_bytes"}` |
| POST /vdis/NAME/restore/check | `{"tag", "header", "force"}` | `{"target", "base"}`, or the error the restore would give |
| PUT /vdis/NAME/restore | `?tag=&force=`, a backup stream as the body | 201 `{"snapshot", "working", "records", "data_bytes", "zero_bytes"}` |

A snapshot of a VDI locked by another node is forwarded to that node over the
(authenticated) peer protocol (`sheep.volumes.snapshots`, `Sheep._forward_snapshot`).
Backup and restore are `sheep.volumes.backup`; a restore reads its body as it goes (the
stream may be far larger than memory), and after a refusal reads the rest of it before
answering, so the client, still sending, gets the answer rather than a broken pipe.  A
body read that brings nothing for `sheep.volumes.backup.READ_IDLE_S` ends the restore
(nothing restored, the write right given back) and the draining.
"""
from __future__ import annotations

from common.errors import InvalidRequest, NotReady
from sheep.admin.app import Request, Response, Router, volume_range_response
from sheep.volumes.backup import BackupService, read_idle
from sheep.volumes.snapshots import SnapshotService

DRAIN_BYTES = 1 << 20


def register(r: Router, sheep) -> None:
    """Add this module's routes for one `sheep.daemon.node.Sheep`."""
    api = _VolumeApi(sheep)
    r.add("POST", "/vdis/<name>/snapshot", api.snapshot)
    r.add("POST", "/vdis/<name>/clone", api.clone)
    r.add("POST", "/vdis/<name>/rollback", api.rollback)
    r.add("GET", "/vdis/<name>/snapshots/<tag>", api.snapshot_get)
    r.add("DELETE", "/vdis/<name>/snapshots/<tag>", api.snapshot_delete)
    r.add("GET", "/vdis/<name>/snapshots/<tag>/data", api.snapshot_read)
    r.add("GET", "/vdis/<name>/snapshots/<tag>/diff", api.snapshot_diff)
    r.add("POST", "/vdis/<name>/restore/check", api.restore_check)
    r.add("PUT", "/vdis/<name>/restore", api.restore)


class _VolumeApi:
    def __init__(self, sheep) -> None:
        self.sheep = sheep

    @property
    def service(self) -> SnapshotService:
        # the daemon creates its snapshot service (with its VDI service) after the routes
        if self.sheep.snapshots is None:
            raise NotReady("this sheep is not serving VDIs yet")
        return self.sheep.snapshots

    @property
    def backups(self) -> BackupService:
        if self.sheep.backups is None:
            raise NotReady("this sheep is not serving VDIs yet")
        return self.sheep.backups

    def snapshot(self, req: Request):
        body = req.json()
        return Response(self.service.snapshot(req.params["name"], body.get("tag")), status=201)

    def clone(self, req: Request):
        body = req.json()
        dst = body.get("name")
        if not isinstance(dst, str) or not dst:
            raise InvalidRequest("clone needs the new VDI's name (field 'name')")
        return Response(self.service.clone(req.params["name"], body.get("tag"), dst), status=201)

    def rollback(self, req: Request):
        return self.service.rollback(req.params["name"], req.json().get("tag"))

    def snapshot_get(self, req: Request):
        vdis = self.sheep.vdis
        entry = vdis.snapshot(req.params["name"], req.params["tag"])
        return {**entry, **vdis.usage(entry)}

    def snapshot_delete(self, req: Request):
        self.sheep.vdis.delete_snapshot(req.params["name"], req.params["tag"])
        return {}

    def snapshot_read(self, req: Request):
        vdis = self.sheep.vdis
        entry = vdis.snapshot(req.params["name"], req.params["tag"],
                              vid=req.int_query("vid", None))
        return volume_range_response(req, vdis.open_volume(entry, readonly=True), entry,
                                     f"snapshot '{req.params['tag']}' of VDI '{entry['name']}'")

    def snapshot_diff(self, req: Request):
        return self.backups.diff(req.params["name"], req.params["tag"], req.query.get("from"))

    def restore_check(self, req: Request):
        body = req.json()
        return self.backups.check(req.params["name"], body.get("tag"), body.get("header"),
                                  force=bool(body.get("force")))

    def restore(self, req: Request):
        stream = req.environ["wsgi.input"]
        force = req.query.get("force", "") in ("1", "true", "yes")
        try:
            return Response(self.backups.restore(req.params["name"], req.query.get("tag"),
                                                 stream.read, force=force), status=201)
        except Exception:
            _drain(stream)
            raise


def _drain(stream) -> None:
    """Read what is left of a request body (the client is still sending it); not a
    stalled one (`read_idle`)."""
    try:
        while read_idle(stream.read, DRAIN_BYTES):
            pass
    except (OSError, ValueError, InvalidRequest):
        pass
