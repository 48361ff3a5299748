"""Python's cyclic garbage collector, tuned for a daemon that allocates per request.

Every request makes short-lived dicts, tuples and frames; with the default thresholds
(700, 10, 10) a young collection runs every few requests and an older one every few
dozen, and those walk every container the process holds (kazoo, the catalog, the ring,
the modules).  perf on a gateway serving 4 KiB replicated writes at qd16 put 9-10% of
its CPU in the collector (``gc_collect_main``, ``visit_decref``, ``visit_reachable``).

`tune_gc` (called once the node has started) moves everything alive then into the
permanent generation (``gc.freeze``: never scanned again) and collects the young
generation less often.  Cycles are still collected; request objects rarely form any.
"""
from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000     # allocations between young collections (default 700)
GEN1_THRESHOLD = 20         # young collections between middle ones (default 10)
GEN2_THRESHOLD = 20         # middle collections between full ones (default 10)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
