"""The status page (``/ui``): a static shell plus the one JSON route only it needs.

| method, path | token | answer |
|---|---|---|
| GET /ui, /ui/ui.js, /ui/ui.css | no (open: no cluster data in them) | the page (docs/ui.md) |
| GET /ui/ring | yes | ``{"epoch", "copies", "samples", "nodes": [balance]}`` (`ring_balance`) |

The page's script asks for the admin token once, keeps it in ``sessionStorage`` and reads
the existing API (/cluster, /nodes, /recovery, /locks, /vdis) with
``Authorization: Bearer``; a browser cannot add that header to a navigation, hence the
open shell.  The assets are read once, at registration.
"""
from __future__ import annotations

from collections import Counter
from importlib import resources

from sheep.admin.app import Request, Response, Router

ASSETS = {  # route -> (file in ui_assets/, content type)
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/ui.js": ("ui.js", "text/javascript; charset=utf-8"),
    "/ui/ui.css": ("ui.css", "text/css; charset=utf-8"),
}
RING_SAMPLES = 2048
SAMPLE_VIDS = (0x5EED01, 0x5EED02, 0x5EED03, 0x5EED04)   # data-object-like oids: vid << 32 | index


def sample_oids(samples: int) -> list[int]:
    """``samples`` oids shaped like data objects of a few VDIs (``vid << 32 | index``)."""
    n = len(SAMPLE_VIDS)
    return [(SAMPLE_VIDS[i % n] << 32) | (i // n) for i in range(samples)]


def ring_balance(ring, copies: int, samples: int = RING_SAMPLES) -> list[dict]:
    """Each data-holding member of ``ring`` (a `coordinator.ring.Ring`): its ``weight`` and
    ``weight_share`` (of the total weight), ``vnodes``, and, over ``samples`` sampled oids,
    ``primary_share`` (the fraction it is primary of) and ``holds_share`` (the fraction it
    holds a copy of; with ``copies`` >= zones every member holds everything).

    Pure; it goes through ``ring.replicas`` (its memo holds these samples afterwards), so
    callers compute it once per epoch."""
    members = [m for m in ring.members if m.weight > 0]
    total = sum(m.weight for m in members)
    primary: Counter = Counter()
    holds: Counter = Counter()
    oids = sample_oids(samples)
    for oid in oids:
        found = ring.replicas(oid, copies)
        if found:
            primary[found[0].node_id] += 1
        for m in found:
            holds[m.node_id] += 1
    n = len(oids) or 1
    return [{"node_id": m.node_id, "zone": m.zone, "weight": m.weight,
             "weight_share": m.weight / total, "vnodes": ring.vnodes_per_weight * m.weight,
             "primary_share": primary[m.node_id] / n, "holds_share": holds[m.node_id] / n}
            for m in members]


def load_assets() -> dict[str, tuple[bytes, str]]:
    """route -> (body, content type) of the page's files (package data)."""
    base = resources.files("sheep.admin") / "ui_assets"
    return {route: ((base / name).read_bytes(), ctype) for route, (name, ctype) in ASSETS.items()}


def register(r: Router, sheep) -> None:
    """Add the page's routes for one `sheep.daemon.node.Sheep`."""
    ui = _Ui(sheep, load_assets())
    for route in ASSETS:
        r.add("GET", route, ui.asset)
    r.add("GET", "/ui/ring", ui.ring)


class _Ui:
    def __init__(self, sheep, assets: dict[str, tuple[bytes, str]]) -> None:
        self.sheep = sheep
        self.assets = assets
        self._ring: tuple[tuple[int, int], dict] | None = None   # ((epoch, copies), answer)

    def asset(self, req: Request):
        path = req.environ.get("PATH_INFO", "/ui").rstrip("/") or "/ui"
        body, ctype = self.assets[path]
        return Response(body, content_type=ctype)

    def ring(self, req: Request):
        """The ring balance of this sheep's current epoch, computed once per epoch."""
        view = self.sheep.epochs.view
        fmt = self.sheep.coordinator.cluster_value or {}
        key = (view.epoch if view else 0, int(fmt.get("copies") or 0))
        if self._ring is None or self._ring[0] != key:
            nodes = ring_balance(view.ring, key[1]) if view and key[1] else []
            self._ring = (key, {"epoch": key[0], "copies": key[1], "samples": RING_SAMPLES,
                                "nodes": nodes})
        return self._ring[1]
