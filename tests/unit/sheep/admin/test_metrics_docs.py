"""docs/metrics.md lists exactly the series the code exports, and the Grafana dashboard
queries only series it lists."""
from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sheep.admin.metrics import StageMetrics
from tests.unit.sheep.admin.fake_sheep import fake_sheep

DOCS = Path(__file__).resolve().parents[4] / "docs"
ROW = re.compile(r"^\| `(sheep_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", re.M)


def documented() -> dict[str, str]:
    """series name -> type, from the tables of docs/metrics.md."""
    return dict(ROW.findall((DOCS / "metrics.md").read_text()))


def exported() -> dict[str, str]:
    """series name (counters with ``_total``) -> type, of a registry with every part."""
    m = StageMetrics("n1")
    m.watch(fake_sheep())
    m.vdi.labels("v", "read").observe(0.001, 1)
    m.peer.labels("p", "read").observe(0.001)
    out = {}
    for f in text_string_to_metric_families(m.render()):
        out[f"{f.name}_total" if f.type == "counter" else f.name] = f.type
    return out


def test_the_docs_list_exactly_the_exported_series_with_their_types():
    assert documented() == exported()


def test_every_dashboard_expression_uses_documented_series():
    docs = documented()
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    assert dash["schemaVersion"] == 39
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            if p.get("type") != "row":
                assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
                assert p["targets"], p["title"]
            exprs.extend(t["expr"] for t in p.get("targets", []))
    walk(dash["panels"])
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bsheep_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in docs:
                assert docs.get(base) == "histogram", f"{name} in {expr!r} is not documented"
            used.add(name if name in docs else base)
    # the questions of the issue have panels: per-VDI latency, peer errors, recovery, ZooKeeper
    assert {"sheep_vdi_request_seconds", "sheep_peer_errors_total",
            "sheep_recovery_remaining_objects", "sheep_zk_session_state",
            "sheep_store_free_bytes", "sheep_cluster_epoch"} <= used
