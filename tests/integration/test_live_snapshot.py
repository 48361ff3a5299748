"""Live snapshots of a VDI attached over NBD while a client keeps writing.

The writer (libnbd, several writes in flight) writes counter k into block k % 16
(one block per object) and records for every write when it was sent and when its
reply was seen.  The test takes ten snapshots through all three sheep (two of them
forward to the lock holder) and records when each request started and ended.  For
every snapshot and block the value found must be the last write acknowledged
before the request started, or a write that was in flight during the request:
acknowledged after it started and sent before it ended.
"""
from __future__ import annotations

import json
import struct
import subprocess
import time

from tests.integration.fixtures_cluster import api, collie, poll
from tests.integration.fixtures_volumes import SYSTEM_PYTHON, nbd_uri, snapshot_bytes, vdi_of

MiB = 1 << 20
OBJ = 4 * MiB
BLOCKS = 16

WRITER = r"""
import json, os, struct, sys, time, nbd
uri, stop_path, progress_path = sys.argv[1:4]
OBJ, BLOCKS, WINDOW = 4 << 20, 16, 8
h = nbd.NBD()
h.connect_uri(uri)
records, pending, errors = [], {}, []
k = 0
def reap():
    for key, (cookie, sent) in list(pending.items()):
        try:
            done = h.aio_command_completed(cookie)
        except nbd.Error as e:
            errors.append(f"write {key}: {e}")
            done = True
        if done:
            records.append((key, sent, time.monotonic()))
            del pending[key]
while not os.path.exists(stop_path) and not errors:
    k += 1
    while len(pending) >= WINDOW or (k - BLOCKS) in pending:  # one write per block at a time
        h.poll(-1)
        reap()
    buf = nbd.Buffer.from_bytearray(bytearray(struct.pack("<Q", k) * 512))
    sent = time.monotonic()
    pending[k] = (h.aio_pwrite(buf, (k % BLOCKS) * OBJ), sent)
    reap()
    if k % 10 == 0:
        with open(progress_path + ".tmp", "w") as f:
            f.write(str(len(records)))
        os.replace(progress_path + ".tmp", progress_path)
while pending:
    h.poll(-1)
    reap()
h.shutdown()
print(json.dumps({"records": records, "errors": errors}))
"""


def acked(progress) -> int:
    try:
        return int(progress.read_text())
    except (OSError, ValueError):
        return 0


def test_ten_live_snapshots_under_a_continuous_writer(cluster_factory, tmp_path):
    c = cluster_factory(3, copies=2)
    n0 = c.sheep[0]
    collie(n0, "vdi", "create", "live", f"{BLOCKS * 4}M")
    stop, progress = tmp_path / "stop", tmp_path / "progress"
    writer = subprocess.Popen([SYSTEM_PYTHON, "-c", WRITER, nbd_uri(n0, "live"), str(stop),
                               str(progress)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    windows = []
    try:
        poll(lambda: acked(progress) >= 40, 30, "the writer got going")
        for i in range(1, 11):
            # let the writer make progress, then snapshot through node i % 3
            seen = acked(progress)
            poll(lambda: acked(progress) >= seen + 20, 30, f"writes before snapshot {i}")
            start = time.monotonic()
            collie(c.sheep[i % 3], "vdi", "snapshot", "-s", f"s{i}", "live")
            windows.append((start, time.monotonic()))
        seen = acked(progress)
        poll(lambda: acked(progress) >= seen + 20, 30, "writes after the last snapshot")
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    assert result["errors"] == []           # the client never saw an error

    # per block: the writes to it, in order
    by_block: dict[int, list] = {b: [] for b in range(BLOCKS)}
    for k, sent, ack in sorted(result["records"]):
        by_block[k % BLOCKS].append((k, sent, ack))

    previous = [0] * BLOCKS
    for i, (start, end) in enumerate(windows, 1):
        snap = vdi_of(n0, "live", f"s{i}")
        assert snap["snap_id"] == i
        for b in range(BLOCKS):
            raw = snapshot_bytes(c.sheep[b % 3], "live", f"s{i}", b * OBJ, 4096)
            value = struct.unpack_from("<Q", raw)[0]
            assert raw == struct.pack("<Q", value) * 512, f"snapshot {i} block {b} torn"
            before = [k for k, _, ack in by_block[b] if ack < start]
            allowed = {before[-1] if before else 0}
            allowed |= {k for k, sent, ack in by_block[b] if ack >= start and sent <= end}
            assert value in allowed, (i, b, value, sorted(allowed))
            assert value >= previous[b]
            previous[b] = value
    # the writer really wrote between snapshots: consecutive snapshots differ
    assert len({snapshot_bytes(n0, "live", f"s{i}", 0, 8) for i in range(1, 11)}) > 5

    # after the writer left, the working VDI holds the last write of every block
    working = vdi_of(n0, "live")
    assert working["snap_id"] == 11
    for b in range(BLOCKS):
        last = by_block[b][-1][0]
        raw = api(c.sheep[b % 3], "/vdis/live/data", params={"offset": b * OBJ, "length": 8})
        assert raw.content == struct.pack("<Q", last)
