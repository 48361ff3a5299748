"""The daemon's garbage-collector tuning: what lives at start-up is frozen, young
collections are rarer, and cycles made afterwards are still collected."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_tuning_freezes_the_startup_heap_and_still_collects_cycles():
    # in a child: thresholds and the frozen generation are process-wide
    script = textwrap.dedent("""
        import gc, weakref
        from sheep.daemon.gc_tuning import tune_gc, GEN0_THRESHOLD
        assert gc.get_freeze_count() == 0
        tune_gc()
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
        assert gc.get_threshold()[0] == GEN0_THRESHOLD

        class Node:
            pass
        a, b = Node(), Node()
        a.peer, b.peer = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
