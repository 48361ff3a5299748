"""`/metrics` of a real 3-node cluster: the series move with the I/O, recovery and
membership, parse with the official parser, and a hostile VDI name comes back intact."""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.fixtures_cluster import api_json, poll
from tests.integration.fixtures_nbd import MiB, OBJ, NbdSession, create_vdi

KiB = 1 << 10
NAME = 'vol"\\é✓'                   # a quote, a backslash and two non-ASCII characters
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def scrape(node) -> tuple[dict, dict]:
    """({(sample name, sorted labels): value}, {family name: family}) from ``/metrics``,
    fetched without a token (an open route) and parsed with prometheus_client's parser."""
    r = requests.get(f"http://127.0.0.1:{node.admin_port}/metrics", timeout=10)
    r.raise_for_status()
    samples, families = {}, {}
    for family in text_string_to_metric_families(r.text):
        families[family.name] = family
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def total(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def documented() -> set[str]:
    return set(re.findall(r"^\| `(sheep_[a-z0-9_]+)`", DOCS.read_text(), re.M))


def exposed_names(families: dict) -> set[str]:
    return {f"{f.name}_total" if f.type == "counter" else f.name for f in families.values()}


def test_series_move_with_io_recovery_and_membership(cluster_factory):
    c = cluster_factory(3, copies=2)
    n0, n1, n2 = c.sheep
    create_vdi(n0, NAME, 64 * MiB)
    # recovery slow enough to be watched: a few objects a second on each node
    api_json(n0, "/recovery/throttle", "POST", json={"objects_per_s": 3})
    before = {n.node_id: scrape(n)[0] for n in c.sheep}
    vdi = {"vdi": NAME, "node": n0.node_id}

    session = NbdSession(n0, urllib.parse.quote(NAME))
    try:
        session.must("connect")
        writes, reads, chunk = 16, 8, 64 * KiB
        for i in range(writes):                 # one write in each object of the VDI
            session.must("pwrite", byte=i + 1, length=chunk, offset=i * OBJ)
        for i in range(reads):
            session.must("pread", length=chunk, offset=i * OBJ)
        session.must("flush")
        session.must("trim", length=chunk, offset=0)
        now, families = scrape(n0)

        def grew(name, **labels):
            return total(now, name, **labels) - total(before[n0.node_id], name, **labels)

        # per VDI, counted at the NBD export: requests and bytes exactly as sent
        assert grew("sheep_vdi_requests_total", op="write", **vdi) == writes
        assert grew("sheep_vdi_bytes_total", op="write", **vdi) == writes * chunk
        assert grew("sheep_vdi_requests_total", op="read", **vdi) == reads
        assert grew("sheep_vdi_bytes_total", op="read", **vdi) == reads * chunk
        assert grew("sheep_vdi_requests_total", op="flush", **vdi) == 1
        assert grew("sheep_vdi_requests_total", op="trim", **vdi) == 1
        assert grew("sheep_vdi_bytes_total", op="trim", **vdi) == chunk
        assert grew("sheep_vdi_request_seconds_count", op="write", **vdi) == writes
        assert grew("sheep_vdi_request_seconds_bucket", op="write", le="+Inf", **vdi) == writes
        assert grew("sheep_vdi_request_seconds_sum", op="write", **vdi) > 0
        # the gateway's peer requests: at least one remote replica per write, no errors
        assert grew("sheep_peer_requests_total", op="write") >= writes
        assert grew("sheep_peer_errors_total") == 0
        assert total(now, "sheep_nbd_connections", node=n0.node_id) == 1
        # every series has its HELP text, and is documented
        assert all(f.documentation for f in families.values())
        assert exposed_names(families) <= documented()

        # the cluster from any node (ZooKeeper read at most every few seconds)
        def cluster_of(node, name, **labels):
            return total(scrape(node)[0], name, **labels)
        poll(lambda: cluster_of(n1, "sheep_cluster_locks") == 1, 30, "the lock counted")
        s1 = scrape(n1)[0]
        assert total(s1, "sheep_cluster_epoch") == 1
        assert total(s1, "sheep_cluster_members", role="storage") == 3
        assert total(s1, "sheep_cluster_vdis") == 1
        assert total(s1, "sheep_cluster_provisioned_bytes") == 64 * MiB
    finally:
        session.close()
    # the flush reached the replicas' disks: fsyncs timed, objects stored
    after = {n.node_id: scrape(n)[0] for n in c.sheep}
    assert sum(total(after[k], "sheep_store_fsync_seconds_count")
               - total(before[k], "sheep_store_fsync_seconds_count") for k in after) >= 2
    assert sum(total(s, "sheep_store_objects") for s in after.values()) >= 2 * writes

    # a node leaves: epoch and members change, the others recover what it held
    n2.stop()
    survivors = (n0, n1)
    remaining_seen: dict[str, list[float]] = {n.node_id: [] for n in survivors}

    def recovered() -> bool:
        got = [scrape(n)[0] for n in survivors]
        for n, s in zip(survivors, got):
            remaining_seen[n.node_id].append(total(s, "sheep_recovery_remaining_objects"))
        return all(total(s, "sheep_recovery_epoch") == 2
                   and total(s, "sheep_recovery_state", state="complete") == 1 for s in got)
    poll(recovered, 60, "recovery of epoch 2 complete on both survivors", interval=0.1)
    final = {n.node_id: scrape(n)[0] for n in survivors}
    done = sum(total(final[k], "sheep_recovery_objects_total")
               - total(after[k], "sheep_recovery_objects_total") for k in final)
    pulled = sum(total(final[k], "sheep_recovery_pulled_bytes_total")
                 - total(after[k], "sheep_recovery_pulled_bytes_total") for k in final)
    assert done >= 1 and pulled >= chunk
    # remaining was seen above zero, only fell from its peak, and ends at zero
    assert any(max(seen) > 0 for seen in remaining_seen.values()), remaining_seen
    for seen in remaining_seen.values():
        tail = seen[seen.index(max(seen)):]
        assert tail == sorted(tail, reverse=True) and tail[-1] == 0, remaining_seen
    assert all(total(s, "sheep_epoch") == 2 and total(s, "sheep_cluster_epoch") == 2
               for s in final.values())
    poll(lambda: total(scrape(n0)[0], "sheep_cluster_members", role="storage") == 2, 30,
         "the member set without the stopped node")
