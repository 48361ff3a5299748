"""The pure core of ``collie node recovery --watch``: rates observed between refreshes, ETAs,
the "is recovery done" test and the text of one refresh.

``RateTracker.observe(t, answer)`` takes each ``GET /recovery`` answer with the (monotonic)
time it arrived and keeps, per node and recovery pass, the samples of the last
``window_s`` seconds; ``estimates(answer)`` turns them into one ``Estimate`` per node: objects
and bytes done and remaining, the observed rates and the ETA.  Nothing here reads a clock
or does I/O, so every figure is tested with made-up times.

Bytes remaining: a sheep reports the objects of a pass (``total``, ``done``) but only the
bytes already pulled (``bytes`` over ``pulled`` objects), so the bytes still to move are an
estimate, ``remaining objects x average object pulled so far`` (``None`` before the first
pull).  A sheep that reports ``bytes_total`` gets the exact figure.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

from collie.render import render_throttle, table
from collie.sizes import format_size

WINDOW_S = 10.0


def recovery_done(answer: dict) -> bool:
    """True when every member of the current epoch reports ``complete`` for that epoch
    (the sheep's own ``state == "complete"`` says the same; both are required)."""
    nodes = answer.get("nodes") or []
    epoch = answer.get("epoch")
    return (answer.get("state") == "complete" and bool(nodes)
            and all(n.get("state") == "complete" and n.get("epoch") == epoch for n in nodes))


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def observed_rate(samples) -> tuple[float | None, float | None]:
    """``(objects_per_s, bytes_per_s)`` between the first and last ``(t, objects, bytes)``
    sample; ``(None, None)`` with fewer than two samples or no time between them."""
    if len(samples) < 2:
        return None, None
    (t0, o0, b0), (t1, o1, b1) = samples[0], samples[-1]
    if t1 <= t0:
        return None, None
    return (o1 - o0) / (t1 - t0), (b1 - b0) / (t1 - t0)


def eta_seconds(remaining: int, rate: float | None) -> float | None:
    """Seconds until ``remaining`` units are done at ``rate`` per second: 0 when nothing
    remains, ``None`` when unknown (no rate yet, or a stalled one)."""
    if remaining <= 0:
        return 0.0
    if rate is None or rate <= 0:
        return None
    return remaining / rate


def format_duration(seconds: float | None) -> str:
    """``"0:07"``, ``"12:30"``, ``"1:02:03"``; ``"-"`` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Estimate:
    """One node's figures for the current refresh (``None``: not known yet)."""

    node_id: str
    state: str
    done: int
    total: int
    remaining: int
    bytes_done: int
    bytes_remaining: int | None
    objects_per_s: float | None
    bytes_per_s: float | None
    eta_s: float | None
    complete: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _went_back(samples, done: int, nbytes: int) -> bool:
    return bool(samples) and (done < samples[-1][1] or nbytes < samples[-1][2])


class RateTracker:
    """Samples ``(t, done objects, bytes)`` per node and pass, for the last ``window_s`` seconds.

    A new pass (another epoch or start time) or a count going backwards starts the node's
    samples afresh, so a restarted pass never shows a negative rate.
    """

    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self._samples: dict[str, tuple[tuple, deque]] = {}

    def observe(self, t: float, answer: dict) -> None:
        for n in answer.get("nodes") or []:
            key = str(n.get("node_id", ""))
            run = (n.get("epoch"), n.get("started"))
            done, nbytes = _int(n.get("done")), _int(n.get("bytes"))
            known = self._samples.get(key)
            if known is None or known[0] != run or _went_back(known[1], done, nbytes):
                known = self._samples[key] = (run, deque())
            samples = known[1]
            samples.append((t, done, nbytes))
            while len(samples) > 2 and t - samples[1][0] >= self.window_s:
                samples.popleft()

    def estimates(self, answer: dict) -> list[Estimate]:
        """One ``Estimate`` per node of ``answer`` (the last one observed)."""
        epoch = answer.get("epoch")
        out = []
        for n in answer.get("nodes") or []:
            key = str(n.get("node_id", ""))
            complete = n.get("state") == "complete" and n.get("epoch") == epoch
            done, total = _int(n.get("done")), _int(n.get("total"))
            bytes_done, pulled = _int(n.get("bytes")), _int(n.get("pulled"))
            remaining = 0 if complete else max(total - done, 0)
            if n.get("bytes_total") is not None:
                bytes_left = max(_int(n["bytes_total"]) - bytes_done, 0)
            elif remaining == 0:
                bytes_left = 0
            else:
                bytes_left = remaining * bytes_done // pulled if pulled else None
            samples = self._samples.get(key, (None, ()))[1]
            obj_rate, byte_rate = observed_rate(list(samples))
            if complete:
                eta = 0.0
            else:       # no total yet (listing): no ETA, even with nothing "remaining"
                eta = eta_seconds(remaining, obj_rate) if total else None
            out.append(Estimate(key, str(n.get("state") or "-"), done, total, remaining, bytes_done,
                                bytes_left, obj_rate, byte_rate, eta, complete))
        return out


def cluster_eta(estimates: list[Estimate]) -> float | None:
    """Nodes recover in parallel: the cluster is done when the slowest node is (``None``
    while any unfinished node has no ETA)."""
    etas = [e.eta_s for e in estimates]
    if not etas or any(eta is None for eta in etas):
        return None
    return max(etas)


def _rate(e: Estimate) -> str:
    if e.objects_per_s is None:
        return "-"
    return f"{format_size(int(e.bytes_per_s or 0))}/s {e.objects_per_s:.1f} obj/s"


def _state(e: Estimate, node: dict, epoch) -> str:
    if node.get("epoch") is not None and node.get("epoch") != epoch:
        return f"{e.state} (epoch {node['epoch']})"
    return e.state


def _left_bytes(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    return "~" + format_size(nbytes) if nbytes else "0"


def summary(answer: dict, estimates: list[Estimate]) -> dict:
    """The cluster-wide figures: objects and bytes done and remaining, rates (the sum of
    the nodes' observed ones), ETA, done.  ``None``: not known (yet)."""
    def total(field, all_known=True):
        values = [getattr(e, field) for e in estimates]
        known = [v for v in values if v is not None]
        return None if not known or (all_known and len(known) < len(values)) else sum(known)
    return {"done": recovery_done(answer), "objects_done": total("done") or 0,
            "objects_total": total("total") or 0, "objects_remaining": total("remaining") or 0,
            "bytes_done": total("bytes_done") or 0, "bytes_remaining": total("bytes_remaining"),
            "objects_per_s": total("objects_per_s", False), "bytes_per_s": total("bytes_per_s", False),
            "eta_s": cluster_eta(estimates)}


def render_watch(answer: dict, estimates: list[Estimate]) -> str:
    """One refresh: ``Recovery: STATE (epoch N)`` with the cluster's totals, then one row
    per node (``Bytes left`` is an estimate, ``~``; ``-``: not known yet)::

        Recovery: running (epoch 2): objects 12/33 (21 left), 12 MB done (~21 MB left), ETA 0:05
        Id  Node  State       Done/Total  Left  Bytes  Bytes left  Rate                ETA
         0  n1    recovering       12/33    21  12 MB      ~21 MB  4.0 MB/s 4.0 obj/s  0:05
    """
    state = answer.get("state") or "unknown"
    epoch = answer.get("epoch")
    s = summary(answer, estimates)
    head = f"Recovery: {state}" + (f" (epoch {epoch})" if epoch is not None else "")
    head += f": objects {s['objects_done']}/{s['objects_total']}"
    if s["done"]:
        head += f", {format_size(s['bytes_done'])} moved, complete"
    else:
        left = _left_bytes(s["bytes_remaining"])
        head += (f" ({s['objects_remaining']} left), {format_size(s['bytes_done'])} done ({left} left), "
                 f"ETA {format_duration(s['eta_s'])}")
    nodes = answer.get("nodes") or []
    rows = [(i, e.node_id, _state(e, n, epoch), f"{e.done}/{e.total}", e.remaining,
             format_size(e.bytes_done), _left_bytes(e.bytes_remaining), _rate(e),
             "done" if e.complete else format_duration(e.eta_s))
            for i, (e, n) in enumerate(zip(estimates, nodes))]
    out = head + "\n" + table(("Id", "Node", "State", "Done/Total", "Left", "Bytes", "Bytes left",
                                "Rate", "ETA"), rows, right={0, 3, 4, 5, 6, 8})
    throttle = answer.get("throttle") or {}
    if any(throttle.values()):
        out += "\n" + render_throttle(throttle)
    if answer.get("enabled") is False:
        out += "\nrecovery is disabled ('collie cluster recover enable')"
    return out + "".join(f"\n{n.get('node_id')}: {n['error']}" for n in nodes if n.get("error"))


def watch_document(t: float, answer: dict, estimates: list[Estimate]) -> dict:
    """The NDJSON line of one refresh: the API answer plus ``watch`` (``elapsed_s`` since
    the watch started, the ``summary`` and each node's ``Estimate``)."""
    return {**answer, "watch": {"elapsed_s": round(t, 3), **summary(answer, estimates),
                                "nodes": [e.to_dict() for e in estimates]}}
