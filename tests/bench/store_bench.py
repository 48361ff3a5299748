#!/usr/bin/env python3
"""What the block checksums cost on one replica's store, per request (no network, no gevent).

    python3 tests/bench/store_bench.py [--count N] [--dir DIR]

Times `ObjectStore.write` / `read` / `read_cached` for 4 KiB requests at random aligned
offsets of one 4 MiB object, and for 1 MiB requests, then the checksum work alone
(`objfile.sums_of` / `bad_blocks` on the same buffers), and prints microseconds per
request and the checksum's share.  One process, page cache only: these are CPU costs of
the store's code, the part of a replicated write each replica pays.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sheep.store import objfile, objio  # noqa: E402
from sheep.store.objects import ObjectStore  # noqa: E402
from sheep.store.objfile import Version  # noqa: E402

OBJ = 4 << 20


def per_call(fn, args_list) -> float:
    start = time.perf_counter()
    for args in args_list:
        fn(*args)
    return (time.perf_counter() - start) / len(args_list) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="store-bench.", dir=a.dir)
    store = ObjectStore(Path(root), OBJ, reserve_bytes=0)
    v = Version(1, 1, 1)
    store.write(1, 0, os.urandom(OBJ), v, create=True)
    rng = random.Random(1)
    small = os.urandom(4096)
    big = os.urandom(1 << 20)
    offs = [(rng.randrange(OBJ // 4096) * 4096,) for _ in range(a.count)]
    big_offs = [(rng.randrange(4) << 20,) for _ in range(max(1, a.count // 100))]
    small_sums, big_sums = objfile.sums_of(small), objfile.sums_of(big)
    rows = [
        ("write 4 KiB", per_call(lambda o: store.write(1, o, small, v), offs),
         per_call(lambda o: objio.sums_for_write(None, o, memoryview(small)), offs)),
        ("read 4 KiB (pool path)", per_call(lambda o: store.read(1, o, 4096), offs),
         per_call(lambda o: objfile.bad_blocks(small, small_sums), offs)),
        ("read 4 KiB (event loop, page cache)",
         per_call(lambda o: store.read_cached(1, o, 4096), offs), None),
        ("write 1 MiB", per_call(lambda o: store.write(1, o, big, v), big_offs),
         per_call(lambda o: objfile.sums_of(big), big_offs)),
        ("read 1 MiB", per_call(lambda o: store.read(1, o, 1 << 20), big_offs),
         per_call(lambda o: objfile.bad_blocks(big, big_sums), big_offs)),
    ]
    print(f"# store bench: {a.count} requests of 4 KiB, {len(big_offs)} of 1 MiB, {root}")
    print("| request | us per request | of which checksums | share |")
    print("|---|---|---|---|")
    for name, total, sums in rows:
        if sums is None:
            print(f"| {name} | {total:.1f} | (included) | |")
        else:
            print(f"| {name} | {total:.1f} | {sums:.1f} | {sums / total:.0%} |")
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
