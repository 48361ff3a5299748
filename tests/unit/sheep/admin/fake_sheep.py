"""A stand-in for `sheep.daemon.node.Sheep` with just what the metrics collectors read."""
from __future__ import annotations

from types import SimpleNamespace as NS


def fake_sheep(**recovery) -> NS:
    progress = {"epoch": 3, "state": "recovering", "total": 10, "done": 4, **recovery}
    usage = {"objects": 7, "dirty_objects": 1, "used_bytes": 4096, "capacity_bytes": 1 << 30,
             "free_bytes": 1 << 29, "corrupt_reads": 2, "failed": None}
    members = [NS(role="storage"), NS(role="storage"), NS(role="gateway")]
    entries = [{"name": "a", "size": 1 << 20}, {"name": "b", "size": 3 << 20},
               {"name": "a", "size": 1 << 20, "snapshot": True}]
    coord = NS(fenced=False, is_leader=True, client=NS(state="CONNECTED"),
               session_generation=1, fence_events=2,
               current_epoch={"epoch": 3, "members": [{}, {}]}, members=lambda: members)
    return NS(node_id='n"1', epochs=NS(epoch=3), coordinator=coord,
              nbd=NS(connections=5, refused=1),
              replica=NS(generations=NS(refused=0)), store=NS(usage=lambda: usage),
              gateway=NS(converger=NS(repaired_blocks=1, repaired_copies=0)),
              scrubber=NS(stats={"objects": 9, "corrupt_objects": 0}),
              recovery=NS(progress=progress, objects_done=14, pulled_objects=12,
                          pulled_bytes=1 << 20, list_requests=4, list_bytes=720),
              exports=NS(catalog_cache=NS(entries=lambda: entries), qos=NS(throttles={
                  "a": NS(throttled_s={"read": 0.0, "write": 1.5},
                          throttled={"read": 0, "write": 3},
                          limits=NS(values={"iops": 500, "write_bps": 1 << 20}))})),
              locks=NS(list=lambda: [{"vid": 1}]))
