"""Pure rendering of admin-API answers as text (no I/O, no clock).

Every function takes the decoded JSON of one API answer (docs/internals.md,
"HTTP admin API") and returns the text to print, without a trailing newline.
Tables have left-aligned text columns and right-aligned number columns, two
spaces apart, no trailing blanks.  Times are the API's ``created`` values (Unix
seconds, or ISO 8601 strings) shown in ``tz`` (``None``: local time).
"""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, tzinfo
from typing import Iterable, Sequence

from collie.cmd_qos import qos_summary
from collie.sizes import format_iec, format_size

VNODES_PER_WEIGHT = 128

_STATUS_TEXT = {
    "running": "running",
    "unformatted": "Waiting for cluster format",
    "waiting": "Waiting for other nodes to join cluster",
    "joining": "Waiting for other nodes to join cluster",
    "shutdown": "Shutdown",
    "halt": "Halted (not enough nodes for the redundancy)",
}


def render_json(doc) -> str:
    """The API's answer as pretty JSON (2-space indent, sorted keys)."""
    return json.dumps(doc, indent=2, sort_keys=True)


def table(headers: Sequence[str], rows: Iterable[Sequence], right: Iterable[int] = ()) -> str:
    """Aligned columns; ``right`` names the indexes of right-aligned columns."""
    right = set(right)
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def to_datetime(created, tz: tzinfo | None = None) -> datetime | None:
    """``created`` (Unix seconds or ISO 8601) as a datetime in ``tz``; ``None`` when absent or unreadable."""
    if created is None or created == "" or isinstance(created, bool):
        return None
    if isinstance(created, (int, float)):
        return datetime.fromtimestamp(created, tz)
    try:
        dt = datetime.fromisoformat(str(created))
    except ValueError:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(tz)
    return dt


def format_time(created, fmt: str = "%Y-%m-%d %H:%M", tz: tzinfo | None = None) -> str:
    """``created`` formatted with ``fmt``; ``"-"`` when absent, the raw text when unreadable."""
    dt = to_datetime(created, tz)
    if dt is None:
        return "-" if created in (None, "") else str(created)
    return dt.strftime(fmt)


def render_format(answer: dict) -> str:
    """``POST /cluster/format`` answer -> ``"cluster formatted: copies 3, object size 4 MiB"``."""
    fmt = answer.get("format") or answer
    shift = fmt.get("block_size_shift", 22)
    return f"cluster formatted: copies {fmt.get('copies')}, object size {format_iec(1 << shift)}"


def status_text(state: str | None) -> str:
    """Sheepdog's wording for a cluster state ("Waiting for cluster format", ...)."""
    return _STATUS_TEXT.get(state or "", state or "unknown")


def render_cluster_info(cluster: dict, tz: tzinfo | None = None) -> str:
    """``GET /cluster`` -> status, creation time, copies, then the epoch history, newest first."""
    lines = [f"Cluster status: {status_text(cluster.get('state'))}"]
    fmt = cluster.get("format")
    if fmt:
        created = to_datetime(fmt.get("created"), tz)
        lines += ["", f"Cluster created at {created.ctime() if created else '-'}"]
        copies = f"Copies: {fmt.get('copies')}"
        if fmt.get("min_copies") is not None:
            copies += f" (min {fmt['min_copies']})"
        if fmt.get("block_size_shift") is not None:
            copies += f", object size {format_iec(1 << fmt['block_size_shift'])}"
        lines.append(copies)
    epochs = sorted(cluster.get("epochs") or [], key=lambda e: e.get("epoch", 0), reverse=True)
    if epochs:
        rows = [(format_time(e.get("created"), "%Y-%m-%d %H:%M:%S", tz), e.get("epoch", "-"),
                 "[" + ", ".join(e.get("members") or []) + "]") for e in epochs]
        lines += ["", table(("Epoch Time", "Version", "Nodes"), rows, right={1})]
    return "\n".join(lines)


def _zone(node: dict) -> str:
    return node.get("zone") or "-"


def _role(node: dict) -> str:
    return node.get("role") or ("gateway" if int(node.get("weight", 1)) == 0 else "storage")


def render_node_list(nodes: list[dict]) -> str:
    """``GET /nodes`` -> ``Id  Node  Host:Port  V-Nodes  Zone  Role`` (V-Nodes = 128 x weight;
    zone "" -> "-"; role ``storage`` or ``gateway``, which holds no data)."""
    rows = [(i, n.get("node_id", "-"), f"{n.get('addr')}:{n.get('port')}",
             VNODES_PER_WEIGHT * int(n.get("weight", 1)), _zone(n), _role(n))
            for i, n in enumerate(nodes)]
    return table(("Id", "Node", "Host:Port", "V-Nodes", "Zone", "Role"), rows, right={0, 3})


def _use_percent(used: int, size: int) -> str:
    return f"{used * 100 // size}%" if size > 0 else "-"


def render_node_info(nodes: list[dict]) -> str:
    """``GET /nodes`` -> per node ``Id Size Used Avail Use%`` then a Total line (nodes without a store: "-")."""
    rows = []
    total_size = total_used = total_free = 0
    for i, node in enumerate(nodes):
        store = node.get("store")
        if not store:
            rows.append((str(i), "-", "-", "-", "-"))
            continue
        size, used, free = (int(store.get(k) or 0) for k in ("capacity_bytes", "used_bytes", "free_bytes"))
        total_size, total_used, total_free = total_size + size, total_used + used, total_free + free
        rows.append((str(i), format_size(size), format_size(used), format_size(free), _use_percent(used, size)))
    rows.append(("Total", format_size(total_size), format_size(total_used), format_size(total_free),
                 _use_percent(total_used, total_size)))
    return table(("Id", "Size", "Used", "Avail", "Use%"), rows, right={1, 2, 3, 4})


def vdi_flag(entry: dict) -> str:
    """``s`` for a snapshot, ``c`` for a clone, else blank.

    As in Sheepdog, a clone is a non-snapshot with a parent that is still at its
    first generation (``snap_id`` 1): a VDI's working copy after a snapshot also
    has a parent, but a later ``snap_id``.
    """
    if entry.get("snapshot"):
        return "s"
    if entry.get("parent") and (entry.get("snap_id") or 1) == 1:
        return "c"
    return " "


def _vdi_order(entry: dict):
    return (entry.get("name", ""), 0 if entry.get("snapshot") else 1, entry.get("snap_id") or 0,
            entry.get("vid") or 0)


def render_vdi_list(vdis: list[dict], tz: tzinfo | None = None) -> str:
    """``GET /vdis`` -> Sheepdog's ``vdi list`` table, by name, snapshots before the working VDI.

    Used: the objects the VDI owns; Shared: the objects it shares with its parents
    (``shared_bytes``; "-" when the sheep does not report it).
    """
    return table(_VDI_HEADERS, [_vdi_row(v, tz) for v in sorted(vdis, key=_vdi_order)],
                 right=_VDI_RIGHT)


_VDI_HEADERS = (" ", "Name", "Id", "Size", "Used", "Shared", "Creation time", "VDI id", "Copies", "Tag")
_VDI_RIGHT = {2, 3, 4, 5, 7, 8}


def _vdi_row(v: dict, tz: tzinfo | None) -> tuple:
    return (vdi_flag(v), v.get("name", ""), v.get("snap_id") or 0, format_size(int(v.get("size") or 0)),
            format_size(int(v.get("used_bytes") or 0)), _shared(v), format_time(v.get("created"), tz=tz),
            f"{int(v.get('vid') or 0):x}", _copies(v), v.get("tag") or "")


def _copies(v: dict):
    """The copies, ``OLD->NEW`` while recovery of an ``alter-copy`` is not finished."""
    if v.get("copies_recovering") and v.get("copies_from") is not None:
        return f"{v['copies_from']}->{v.get('copies', '-')}"
    return v.get("copies", "-")


def with_attachments(vdis: list[dict], locks: dict) -> list[dict]:
    """``GET /vdis`` entries joined (by vid) with ``GET /locks``: each gets ``lock`` (the
    holder of its write right: ``node_id``, ``client``, ``since``, ``generation``; ``None``
    when nobody holds it), ``attachments`` (every connection attached to it) and
    ``standbys`` (the attachments other than the holder)."""
    found = {}
    for lock in locks.get("locks") or []:
        holder = {k: lock.get(k) for k in ("node_id", "client", "since", "generation")}
        found[lock.get("vid")] = (holder, lock.get("attachments") or [], lock.get("standbys") or [])
    for entry in locks.get("attached") or []:
        attached = entry.get("attachments") or []
        found.setdefault(entry.get("vid"), (None, attached, attached))
    out = []
    for v in vdis:
        holder, attached, standbys = found.get(v.get("vid"), (None, [], []))
        out.append({**v, "lock": holder, "attachments": attached, "standbys": standbys})
    return out


def _standbys(entry: dict) -> str:
    return ", ".join(f"{a.get('client') or '-'}@{a.get('node_id') or '-'}"
                     for a in entry.get("standbys") or []) or "-"


def render_vdi_list_long(vdis: list[dict], tz: tzinfo | None = None) -> str:
    """``with_attachments`` entries -> the ``vdi list`` table plus ``QoS`` (its limits,
    `collie.cmd_qos.qos_summary`), ``Writer`` (the node holding
    the write right), ``Client`` (its NBD client, or the admin operation holding it) and
    ``Standbys`` (the other attachments, ``CLIENT@NODE``); ``-`` where there is none."""
    rows = []
    for v in sorted(vdis, key=_vdi_order):
        holder = v.get("lock") or {}
        rows.append(_vdi_row(v, tz) + (qos_summary(v), holder.get("node_id") or "-",
                                       holder.get("client") or "-", _standbys(v)))
    return table(_VDI_HEADERS + ("QoS", "Writer", "Client", "Standbys"), rows, right=_VDI_RIGHT)


def _shared(entry: dict) -> str:
    shared = entry.get("shared_bytes")
    return "-" if shared is None else format_size(int(shared))


def _tree_label(entry: dict, parent: dict | None, tz: tzinfo | None) -> str:
    name = entry.get("name", "")
    if entry.get("snapshot"):
        tag = entry.get("tag") or f"#{entry.get('snap_id') or 0}"
        return f"{name} [{tag}] {format_time(entry.get('created'), tz=tz)}"
    if parent is None:
        return name
    if parent.get("name") == name:
        return f"{name} (you are here)"
    return f"{name} (clone)"


def render_vdi_tree(vdis: list[dict], tz: tzinfo | None = None) -> str:
    """``GET /vdis`` drawn as trees from the ``parent`` links (parent = the parent's vid, 0/None for roots)."""
    by_vid = {v.get("vid"): v for v in vdis}
    children: dict = defaultdict(list)
    roots = []
    for v in sorted(vdis, key=_vdi_order):
        parent = v.get("parent")
        if parent and parent in by_vid and parent != v.get("vid"):
            children[parent].append(v)
        else:
            roots.append(v)
    lines: list[str] = []
    seen: set = set()

    def walk(entry: dict, parent: dict | None, prefix: str, last: bool) -> None:
        seen.add(entry.get("vid"))
        label = _tree_label(entry, parent, tz)
        if parent is None:
            lines.append(label)
            child_prefix = ""
        else:
            lines.append(prefix + ("`-- " if last else "|-- ") + label)
            child_prefix = prefix + ("    " if last else "|   ")
        kids = [k for k in children[entry.get("vid")] if k.get("vid") not in seen]
        for i, kid in enumerate(kids):
            walk(kid, entry, child_prefix, i == len(kids) - 1)

    for root in roots:
        walk(root, None, "", True)
    return "\n".join(lines)


def render_locks(answer: dict) -> str:
    """``GET /locks`` -> ``VDI  Owner  Client  Since  Gen  Standbys``: the holder of each VDI's
    write right (node, NBD client, since when), its lock generation and how many other
    connections are attached; then VDIs attached by connections none of which holds it
    (owner ``-``)."""
    rows = []
    for lock in answer.get("locks") or []:
        name = lock.get("name") or lock.get("vdi") or "-"
        owner = lock.get("owner") or lock.get("node_id") or lock.get("holder") or "-"
        since = lock.get("since") or lock.get("created") or lock.get("acquired")
        rows.append((name, owner, lock.get("client") or "-",
                     format_time(since, "%Y-%m-%d %H:%M:%S"),
                     str(lock.get("generation", "-")), str(len(lock.get("standbys") or ()))))
    for entry in answer.get("attached") or []:
        rows.append((entry.get("name") or "-", "-", "-", "-", "-",
                     str(len(entry.get("attachments") or ()))))
    return table(("VDI", "Owner", "Client", "Since", "Gen", "Standbys"), rows, right={4, 5})


def _progress(node: dict) -> str:
    if node.get("total"):
        return f"{int(node.get('done') or 0) * 100 // int(node['total'])}%"
    progress = node.get("progress")
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        return f"{progress * 100 if progress <= 1 else progress:.0f}%"
    return "-"


def render_recovery(answer: dict) -> str:
    """``GET /recovery`` -> ``Recovery: STATE (epoch N)`` then, if any, the nodes still recovering."""
    state = answer.get("state") or ("running" if answer.get("recovering") else "idle")
    head = f"Recovery: {state}"
    if answer.get("epoch") is not None:
        head += f" (epoch {answer['epoch']})"
    nodes = answer.get("nodes") or []
    if not nodes:
        return head
    rows = [(i, n.get("node_id", "-"), f"{n.get('addr', '-')}:{n.get('port', '-')}",
             n.get("state", "-"), _progress(n)) for i, n in enumerate(nodes)]
    if not any("bytes_per_s" in n for n in nodes):
        return head + "\n\n" + table(("Id", "Node", "Host:Port", "State", "Progress"), rows, right={0, 4})
    rows = [row + (f"{int(n.get('done') or 0)}/{int(n.get('total') or 0)}",
                   f"{format_size(int(n.get('bytes_per_s') or 0))}/s {n.get('objects_per_s', 0):g} obj/s")
            for row, n in zip(rows, nodes)]
    out = head + "\n\n" + table(("Id", "Node", "Host:Port", "State", "Progress", "Done/Total", "Rate"),
                                 rows, right={0, 4, 5})
    errors = [f"{n.get('node_id')}: {n['error']}" for n in nodes if n.get("error")]
    throttle = answer.get("throttle") or {}
    if any(throttle.values()):
        out += "\n" + render_throttle(throttle)
    if answer.get("enabled") is False:
        out += "\nrecovery is disabled ('collie cluster recover enable')"
    return out + "".join("\n" + e for e in errors)


def render_throttle(throttle: dict) -> str:
    """``{"objects_per_s", "bytes_per_s"}`` -> ``Recovery throttle: ...`` (0 = unlimited)."""
    objs, nbytes = float(throttle.get("objects_per_s") or 0), float(throttle.get("bytes_per_s") or 0)
    if not objs and not nbytes:
        return "Recovery throttle: unlimited"
    parts = ([f"{objs:g} objects/s"] if objs else []) + ([f"{format_size(int(nbytes))}/s"] if nbytes else [])
    return "Recovery throttle: " + ", ".join(parts)


def render_check(name: str, answer: dict) -> str:
    """``POST /vdis/NAME/check`` -> ``vdi 'NAME' checked`` plus the answer's counters, if any."""
    details = ", ".join(f"{k} {v}" for k, v in sorted(answer.items())
                        if isinstance(v, (int, float, str)) and not isinstance(v, bool))
    return f"vdi '{name}' checked" + (f": {details}" if details else "") + _check_details(answer)


def _check_details(answer: dict) -> str:
    return "".join(f"\n  {d.get('oid', '-')} on {d.get('node', '-')}: {d.get('problem', '-')}"
                   for d in answer.get("details") or [])


def render_check_report(what: str, answer: dict) -> str:
    """``POST /cluster/check`` -> one summary line plus one line per problem copy."""
    return (f"{what} checked: {answer.get('objects', 0)} objects, {answer.get('problems', 0)} problems, "
            f"{answer.get('repaired', 0)} repaired, {answer.get('lost', 0)} lost"
            + (f", {answer['no_majority']} without a majority" if answer.get("no_majority") else "")
            + _check_details(answer))
