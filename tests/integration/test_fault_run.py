"""A bounded, seeded fault run: real sheep, a real ZooKeeper, a real NBD client, end-to-end checks.

One test.  A 4-node cluster (copies 3, no zones) serves a 64 MiB VDI to a verifying libnbd writer
attached through node 0.  While it writes, a schedule of 8-12 faults drawn from
``random.Random(seed)`` runs: SIGKILL of a node (never node 0, at most one node down at a
time), restart of the killed node, one 5th node joining, and TRIMs through the writer (some of
them while a node is down, so that node comes back holding copies of trimmed data).  At the end
every node is up, recovery is complete, the writer stops (and flushes), and:

* ``collie cluster check -e`` finds no problem;
* the whole VDI reads the same through every node (md5);
* every block holds the content of its last acknowledged write, zeros after an acknowledged
  trim, or, when its last operation failed, its previous or its new content;
* in particular every block whose last operation was an acknowledged trim reads as zeros.

Reproducible from its seed: ``FAULT_SEED=N pytest tests/integration/test_fault_run.py -s``
replays the same schedule (which fault, which node, which range, the pauses) and the same
writer offsets; timing (what is in flight when a fault hits) is not reproduced.  The seed is
printed first and is part of every failure message.

The writer (a child process, libnbd exists only for Debian's ``/usr/bin/python3``) keeps up to
``DEPTH`` non-overlapping writes of 1-8 sequence-numbered 4 KiB blocks in flight, sends a FLUSH
every ``FLUSH_EVERY`` writes, and takes commands from files in its control directory
(``cmd-NNNN.json``, answered by ``res-NNNN.json``): ``trim`` (after draining what is in flight,
optionally keeping its writes out of the range until a later ``release``, so that the trimmed
objects stay unallocated until the node that was down returns), ``release`` and ``stop``.  It
records for every block the set of contents it may hold: ``{seq}`` after an acknowledged write,
``{0}`` (zeros) after an acknowledged trim, the previous set plus the new content after a failed
write or trim; a failed request is never taken as acknowledged.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import struct
import subprocess
import time

import pytest

from tests.integration.fixtures_cluster import api_json, collie, poll, wait_epoch, wait_recovered

MiB = 1 << 20
OBJ = 4 * MiB                   # default object size (block_size_shift 22)
BS = 4096                       # the writer's block
VDI_SIZE = 64 * MiB
NBLOCKS = VDI_SIZE // BS
BLOCKS_PER_OBJ = OBJ // BS
NODES, COPIES = 4, 3
DEPTH = 8                       # writes in flight
FLUSH_EVERY = 50                # writes between FLUSHes
FAULTS = (8, 12)                # how many faults (inclusive range)
PAUSE_S = (3.0, 6.0)            # writer-only time after each fault
BUDGET_S = 100.0                # no new fault is started after this long (the end still runs)
DEBIAN_PY = "/usr/bin/python3"

WRITER = r'''
import json, os, random, struct, sys, time, traceback
import nbd

uri, ctl, seed, nblocks, depth, flush_every = (sys.argv[1], sys.argv[2], sys.argv[3],
                                               int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
BS = 4096
rng = random.Random(f"writer-{seed}")

def content(seq, idx):
    return struct.pack("<QQ", seq, idx) * (BS // 16)

# what each block may read as: 0 = zeros, s > 0 = content(s, idx)
allowed = [[0] for _ in range(nblocks)]
trimmed = bytearray(nblocks)     # 1: the block's last operation is an acknowledged trim
held = bytearray(nblocks)        # 1: no write goes there until a `release`
acked_at = [0.0] * nblocks       # wall clock of the block's last acknowledged write or trim
busy = bytearray(nblocks)        # 1: a write of this block is in flight
stats = dict(writes_acked=0, writes_failed=0, flushes_acked=0, flushes_failed=0,
             trims_acked=0, trims_failed=0, reconnects=0)
errors, trims = [], []
pending = {}                     # cookie -> (kind, seq, first, count, buffer)
seq = issued = 0

def clock(t=None):
    t = time.time() if t is None else t
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"

def note(msg):
    if len(errors) < 200:
        errors.append(f"{clock()} {msg}")

def atomic_json(path, doc):
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)

def connect(timeout):
    deadline = time.monotonic() + timeout
    while True:
        h = nbd.NBD()
        try:
            h.connect_uri(uri)
            return h
        except nbd.Error as e:
            if time.monotonic() > deadline:
                raise
            note(f"connect: {e}")
            time.sleep(0.5)

def settle(cookie, ok, err=None):
    kind, s, first, count, _ = pending.pop(cookie)
    now = round(time.time(), 3)
    if kind == "flush":
        stats["flushes_acked" if ok else "flushes_failed"] += 1
    else:
        stats["writes_acked" if ok else "writes_failed"] += 1
        for i in range(first, first + count):
            busy[i] = 0
            trimmed[i] = 0
            if ok:
                allowed[i] = [s]
                acked_at[i] = now
            elif s not in allowed[i]:
                allowed[i].append(s)      # failed: the old content or the new one
    if not ok:
        note(f"{kind} seq={s} blocks={first}+{count}: {err}")

def reap():
    for cookie in list(pending):
        try:
            if h.aio_command_completed(cookie):
                settle(cookie, True)
        except nbd.Error as e:
            settle(cookie, False, e)

def pump(timeout_ms):
    global h
    try:
        if h.aio_in_flight() > 0:
            h.poll(timeout_ms)
        else:
            time.sleep(timeout_ms / 1000)
    except nbd.Error as e:
        note(f"poll: {e}")
    reap()
    if h.aio_is_dead() or h.aio_is_closed():
        for cookie in list(pending):
            settle(cookie, False, "connection died")
        note("connection died; reconnecting")
        stats["reconnects"] += 1
        h = connect(60)

def drain():
    while pending:
        pump(100)

def issue_write():
    global seq, issued
    n = 1 if rng.random() < 0.9 else rng.randint(2, 8)
    for _ in range(20):
        first = rng.randrange(nblocks - n + 1)
        if not any(busy[first:first + n]) and not any(held[first:first + n]):
            break
    else:
        return False
    seq += 1
    issued += 1
    buf = nbd.Buffer.from_bytearray(bytearray(b"".join(content(seq, i)
                                                       for i in range(first, first + n))))
    for i in range(first, first + n):
        busy[i] = 1
    try:
        cookie = h.aio_pwrite(buf, first * BS)
    except nbd.Error as e:         # not sent at all: still taken as failed, never as acked
        cookie = -seq
        pending[cookie] = ("write", seq, first, n, buf)
        settle(cookie, False, e)
        return True
    pending[cookie] = ("write", seq, first, n, buf)
    if issued % flush_every == 0:
        try:
            pending[h.aio_flush()] = ("flush", seq, 0, 0, None)
        except nbd.Error as e:
            stats["flushes_failed"] += 1
            note(f"flush after seq={seq}: {e}")
    return True

def do_trim(cmd):
    drain()
    offset, length = cmd["offset"], cmd["length"]
    first, count = offset // BS, length // BS
    rec = {"id": cmd["id"], "offset": offset, "length": length, "after_seq": seq,
           "t": round(time.time(), 3)}
    try:
        h.trim(length, offset)
        ok, err = True, None
    except nbd.Error as e:
        ok, err = False, str(e)
    now = round(time.time(), 3)
    for i in range(first, first + count):
        if ok:
            allowed[i] = [0]
            trimmed[i] = 1
            acked_at[i] = now
        else:
            trimmed[i] = 0
            if 0 not in allowed[i]:
                allowed[i].append(0)
        if cmd.get("hold"):
            held[i] = 1
    stats["trims_acked" if ok else "trims_failed"] += 1
    rec.update(ok=ok, error=err)
    trims.append(rec)
    if not ok:
        note(f"trim {offset}+{length}: {err}")
    return rec

def command(n):
    path = os.path.join(ctl, f"cmd-{n:04d}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)

h = connect(30)
next_cmd, last_check, last_progress = 1, 0.0, 0.0
final_flush = None
try:
    while True:
        now = time.monotonic()
        if now - last_check > 0.05:
            last_check = now
            cmd = command(next_cmd)
            if cmd is not None:
                cmd["id"] = next_cmd
                if cmd["op"] == "stop":
                    drain()
                    try:
                        h.flush()
                        final_flush = "ok"
                    except nbd.Error as e:
                        final_flush = str(e)
                    break
                if cmd["op"] == "trim":
                    res = do_trim(cmd)
                elif cmd["op"] == "release":
                    held[:] = bytes(nblocks)
                    res = {"id": next_cmd, "ok": True}
                else:
                    res = {"id": next_cmd, "ok": False, "error": f"unknown op {cmd['op']}"}
                atomic_json(os.path.join(ctl, f"res-{next_cmd:04d}.json"), res)
                next_cmd += 1
        if now - last_progress > 0.25:
            last_progress = now
            atomic_json(os.path.join(ctl, "progress.json"), {**stats, "seq": seq})
        while len(pending) < depth and issue_write():
            pass
        pump(50)
finally:
    result = {**stats, "seq": seq, "final_flush": final_flush, "errors": errors,
              "trims": trims, "in_flight": len(pending),
              "trimmed": [i for i in range(nblocks) if trimmed[i]], "acked_at": acked_at,
              "allowed": {str(i): a for i, a in enumerate(allowed) if a != [0]}}
    atomic_json(os.path.join(ctl, "result.json"), result)
try:
    h.shutdown()
except nbd.Error:
    pass
'''

READER = r'''
import hashlib, sys, time
import nbd
uri, out = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 30
while True:                      # the last attacher's lock goes a moment after it left
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
        break
    except nbd.Error as e:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.3)
size, chunk = h.get_size(), 4 << 20
with open(out, "wb") as f:
    for off in range(0, size, chunk):
        f.write(h.pread(min(chunk, size - off), off))
h.shutdown()
'''


def content(seq: int, idx: int) -> bytes:
    return struct.pack("<QQ", seq, idx) * (BS // 16)


def clock(t: float | None = None) -> str:
    """Wall-clock time as the sheep logs show it (to correlate a finding with them)."""
    t = time.time() if t is None else t
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


ZERO = bytes(BS)


def token(block: bytes, idx: int):
    """What a block read back as: 0 (zeros), the seq of a write of this block, or a description."""
    if block == ZERO:
        return 0
    seq, i = struct.unpack_from("<QQ", block)
    if i == idx and block == content(seq, idx):
        return seq
    if i != idx and block == content(seq, i):
        return f"block {i}'s seq {seq}"
    return f"garbage {block[:16].hex()}"


def make_plan(rng: random.Random) -> list[dict]:
    """The fault schedule: drawn until it kills at least once, joins the 5th node, and trims
    whole objects while a node is down (and keeps writes out of them until it returns)."""
    while True:
        plan, down, joined, nodes = [], None, False, [1, 2, 3]
        for _ in range(rng.randint(*FAULTS)):
            kinds = ["trim", "trim"] + (["kill"] * 3 if down is None else ["restart"] * 3)
            if not joined:
                kinds.append("join")
            step = {"kind": rng.choice(kinds), "pause": round(rng.uniform(*PAUSE_S), 1)}
            if step["kind"] == "kill":
                down = step["node"] = rng.choice(nodes)
            elif step["kind"] == "restart":
                step["node"], down = down, None
            elif step["kind"] == "join":
                joined, step["node"] = True, NODES
                nodes.append(NODES)
            else:
                step["while_down"] = down
                if rng.random() < 0.5:          # whole objects (more while a node is down, so
                    n = rng.choice((1, 1, 2) if down is None else (2, 3))  # it holds some)
                    first = rng.randrange(VDI_SIZE // OBJ - n + 1)
                    step.update(offset=first * OBJ, length=n * OBJ, whole=True)
                else:                           # a partial range, maybe across an object boundary
                    first = rng.randrange(NBLOCKS)
                    n = min(rng.randint(1, 2 * BLOCKS_PER_OBJ // 4), NBLOCKS - first)
                    step.update(offset=first * BS, length=n * BS, whole=False)
                # writes stay out of a range trimmed while a node is down until it is back
                step["hold"] = down is not None and rng.random() < 0.8
            plan.append(step)
        if joined and any(s["kind"] == "trim" and s["whole"] and s["hold"] for s in plan):
            return plan


def describe(step: dict) -> str:
    if step["kind"] != "trim":
        return f"{step['kind']} node {step['node']}"
    what = "whole " if step["whole"] else ""
    extra = f" while node {step['while_down']} is down" if step["while_down"] is not None else ""
    first, last = step["offset"] // OBJ, (step["offset"] + step["length"] - 1) // OBJ
    objs = f"object {first}" + (f"..{last}" if last != first else "")
    return (f"trim {what}{step['offset']}+{step['length']} ({objs}){extra}"
            f"{', held' if step['hold'] else ''}")


class Writer:
    """The WRITER script in a child process, driven through command files."""

    def __init__(self, tmp_path, node, name: str, seed: int):
        self.ctl = tmp_path / "writer"
        self.ctl.mkdir()
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        self.stderr = open(tmp_path / "writer.stderr", "w+b")
        self.proc = subprocess.Popen(
            [DEBIAN_PY, str(script), f"nbd://127.0.0.1:{node.nbd_port}/{name}", str(self.ctl),
             str(seed), str(NBLOCKS), str(DEPTH), str(FLUSH_EVERY)],
            stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.next_cmd = 1

    def err(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-3000:]

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the writer exited {self.proc.returncode}: {self.err()}"

    def progress(self) -> dict:
        try:
            return json.loads((self.ctl / "progress.json").read_text())
        except (OSError, ValueError):
            return {"writes_acked": 0, "seq": 0}

    def wait_acked(self, more: int, timeout: float = 60) -> None:
        target = self.progress()["writes_acked"] + more
        poll(lambda: self.progress()["writes_acked"] >= target or self.proc.poll() is not None,
             timeout, f"{more} more acknowledged writes")
        self.alive()

    def command(self, op: str, timeout: float = 90, **args) -> dict:
        n, self.next_cmd = self.next_cmd, self.next_cmd + 1
        tmp = self.ctl / f"cmd-{n:04d}.tmp"
        tmp.write_text(json.dumps({"op": op, **args}))
        os.replace(tmp, self.ctl / f"cmd-{n:04d}.json")
        if op == "stop":
            return {}
        res = self.ctl / f"res-{n:04d}.json"
        poll(lambda: res.exists() or self.proc.poll() is not None, timeout, f"writer {op} {args}")
        self.alive()
        return json.loads(res.read_text())

    def finish(self, timeout: float = 120) -> dict:
        self.command("stop")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the writer did not stop within {timeout}s") from None
        assert self.proc.returncode == 0, f"the writer exited {self.proc.returncode}: {self.err()}"
        return json.loads((self.ctl / "result.json").read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def members(node) -> set[str]:
    return set(api_json(node, "/cluster")["epochs"][-1]["members"])


def wait_members(live: list, what: str, timeout: float = 45) -> int:
    """Until every live node's newest epoch has exactly the live nodes; returns that epoch."""
    want = {n.node_id for n in live}
    poll(lambda: all(members(n) == want for n in live), timeout, f"an epoch of {what}")
    epoch = api_json(live[0], "/cluster")["epochs"][-1]["epoch"]
    wait_epoch(live, epoch)
    return epoch


def read_through(tmp_path, node, name: str) -> bytes:
    script = tmp_path / "reader.py"
    script.write_text(READER)
    out = tmp_path / f"read-{node.index}.raw"
    proc = subprocess.run([DEBIAN_PY, str(script), f"nbd://127.0.0.1:{node.nbd_port}/{name}",
                           str(out)], capture_output=True, timeout=120)
    assert proc.returncode == 0, f"read through node {node.index}: {proc.stderr.decode()[-2000:]}"
    data = out.read_bytes()
    out.unlink()
    return data


def check_image(data: bytes, allowed: dict, trimmed: set, trims: list,
                acked_at: list) -> list[str]:
    """Every block against the writer's record; returns the problems (at most a few shown)."""
    def trim_of(idx):
        hits = [t for t in trims if t["ok"] and t["offset"] <= idx * BS < t["offset"] + t["length"]]
        return hits[-1] if hits else None

    not_zero, wrong = [], []
    for idx in range(NBLOCKS):
        got = token(data[idx * BS:(idx + 1) * BS], idx)
        if idx in trimmed:
            if got != 0:
                not_zero.append((idx, got))
        elif got not in allowed.get(str(idx), [0]):
            wrong.append((idx, got))
    problems = []
    if not_zero:
        objs = sorted({i // BLOCKS_PER_OBJ for i, _ in not_zero})
        ex = []
        for idx, got in not_zero[:5]:
            t = trim_of(idx)
            when = (f"trim #{t['id']} {t['offset']}+{t['length']} at {clock(t['t'])} after "
                    f"seq {t['after_seq']}" if t else "a trim")
            old = " (older than the trim: trimmed data came back)" if (
                t and isinstance(got, int) and got <= t["after_seq"]) else ""
            ex.append(f"block {idx} (object {idx // BLOCKS_PER_OBJ}) reads seq {got}{old}, "
                      f"zeros expected after {when}")
        problems.append(f"{len(not_zero)} trimmed blocks do not read as zeros, in objects {objs}: "
                        + "; ".join(ex))
    if wrong:
        objs = sorted({i // BLOCKS_PER_OBJ for i, _ in wrong})
        ex = [f"block {idx} (object {idx // BLOCKS_PER_OBJ}) reads {got!r}, expected one of "
              f"{allowed.get(str(idx), [0])}"
              + (f" (acknowledged at {clock(acked_at[idx])})" if acked_at[idx] else "")
              for idx, got in wrong[:5]]
        problems.append(f"{len(wrong)} blocks do not hold their last acknowledged (or an allowed) "
                        f"content, in objects {objs}: " + "; ".join(ex))
    return problems


def check_clean(node) -> tuple[int, dict, list[str]]:
    proc = collie(node, "cluster", "check", "-e", "--json", check=False, timeout=180)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, {}, [f"cluster check -e exited {proc.returncode}: "
                                     f"{proc.stdout[-1000:]!r} {proc.stderr[-1000:]!r}"]
    problems = []
    if proc.returncode != 0 or report.get("problems") or report.get("lost"):
        details = report.get("details", [])
        problems.append(f"cluster check -e exited {proc.returncode}: {report.get('problems')} "
                        f"problems, {report.get('lost')} lost of {report.get('objects')} objects: "
                        f"{details[:8]}")
    return proc.returncode, report, problems


needs_libnbd = pytest.mark.skipif(not os.path.exists(DEBIAN_PY) or subprocess.run(
    [DEBIAN_PY, "-c", "import nbd"], capture_output=True).returncode != 0,
    reason="python3-libnbd for /usr/bin/python3 is not installed")


@pytest.mark.slow
@needs_libnbd
def test_seeded_fault_run(cluster_factory, tmp_path):
    env_seed = os.environ.get("FAULT_SEED", "").strip()
    seed = int(env_seed) if env_seed else random.SystemRandom().randrange(1 << 31)
    print(f"fault run seed={seed}")
    try:
        _fault_run(cluster_factory, tmp_path, seed)
    except AssertionError as exc:
        raise AssertionError(f"fault run seed={seed} (replay: FAULT_SEED={seed}): {exc}") from None
    except Exception as exc:
        raise AssertionError(f"fault run seed={seed} (replay: FAULT_SEED={seed}): "
                             f"{type(exc).__name__}: {exc}") from exc


def _fault_run(cluster_factory, tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    plan = make_plan(rng)
    print("schedule:\n" + "\n".join(f"  {i + 1:2d}. {describe(s)}, then {s['pause']}s"
                                     for i, s in enumerate(plan)))
    t0 = time.monotonic()
    c = cluster_factory(NODES, copies=COPIES)
    n0 = c.sheep[0]
    collie(n0, "vdi", "create", "vol", str(VDI_SIZE))
    nodes = {s.index: s for s in c.sheep}
    down: int | None = None
    faults: collections.Counter = collections.Counter()
    writer = Writer(tmp_path, n0, "vol", seed)
    try:
        writer.wait_acked(2000, timeout=60)    # most objects allocated before the first fault
        for i, step in enumerate(plan):
            if time.monotonic() - t0 > BUDGET_S:
                print(f"time budget spent: steps {i + 1}.. of the schedule skipped")
                break
            writer.alive()
            kind = step["kind"]
            t = time.monotonic()
            if kind == "kill":
                victim = nodes[step["node"]]
                victim.kill()
                down = step["node"]
                wait_members([n for k, n in nodes.items() if k != down], f"the survivors of {down}")
            elif kind == "restart":
                back = nodes[step["node"]]
                back.start()
                back.wait_ready()
                down = None
                wait_members(list(nodes.values()), f"node {step['node']} back")
                writer.command("release")
            elif kind == "join":
                new = c.add_node()
                assert new.index == step["node"]
                new.start()
                c.save()
                new.wait_ready()
                nodes[new.index] = new
                wait_members([n for k, n in nodes.items() if k != down], "the 5th node joined")
            else:
                res = writer.command("trim", offset=step["offset"], length=step["length"],
                                     hold=step["hold"])
                kind = "trim" + (" while a node is down" if step["while_down"] is not None else "")
                kind += "" if res["ok"] else " (failed)"
            faults[kind] += 1
            print(f"{clock()} {time.monotonic() - t0:5.1f}s step {i + 1}: {describe(step)} "
                  f"({time.monotonic() - t:.1f}s; writer {writer.progress()})")
            time.sleep(step["pause"])

        # the end: every node up, recovery complete everywhere, then a few more writes
        if down is not None:
            nodes[down].start()
            nodes[down].wait_ready()
            faults["restart (end)"] += 1
            down = None
        writer.command("release")
        wait_members(list(nodes.values()), "every node")
        wait_recovered(list(nodes.values()), timeout=120)
        print(f"{clock()} {time.monotonic() - t0:5.1f}s recovered on every node")
        writer.wait_acked(500)
        result = writer.finish()
    finally:
        writer.kill()
    print(f"{clock()} {time.monotonic() - t0:5.1f}s writer stopped")

    problems = []
    if result["final_flush"] != "ok":
        problems.append(f"the writer's final flush failed: {result['final_flush']}")
    if result["in_flight"]:
        problems.append(f"{result['in_flight']} requests still in flight at the end")
    _, report, found = check_clean(nodes[rng.randrange(len(nodes))])
    problems += found
    allowed, trimmed = result["allowed"], set(result["trimmed"])
    digests = {}
    seen: dict[str, list[int]] = {}          # a problem -> the nodes it was read through
    for k, node in sorted(nodes.items()):
        data = read_through(tmp_path, node, "vol")
        if len(data) != VDI_SIZE:
            problems.append(f"node {k} read {len(data)} bytes, not {VDI_SIZE}")
            continue
        digests[k] = hashlib.md5(data).hexdigest()
        for p in check_image(data, allowed, trimmed, result["trims"], result["acked_at"]):
            seen.setdefault(p, []).append(k)
    problems += [f"through node{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}: {p}"
                 for p, ks in seen.items()]
    if len(set(digests.values())) > 1:
        problems.append(f"the VDI reads differently through the nodes (md5): {digests}")

    summary = (f"writes acknowledged {result['writes_acked']}, failed "
               f"{result['writes_failed']}; flushes {result['flushes_acked']} (failed "
               f"{result['flushes_failed']}); trims {result['trims_acked']} (failed "
               f"{result['trims_failed']}); reconnects {result['reconnects']}; faults "
               f"{dict(faults)}; cluster check: {report.get('objects')} objects, "
               f"{report.get('problems')} problems; blocks trimmed at the end {len(trimmed)}; "
               f"{time.monotonic() - t0:.0f}s")
    print(f"fault run seed={seed}: {summary}")
    if result["errors"]:
        print("writer errors:\n  " + "\n  ".join(result["errors"][:30]))
    ids = {k: n.node_id for k, n in sorted(nodes.items())}
    assert not problems, (summary + f"; nodes {ids}\n" + "\n".join(f"- {p}" for p in problems))
