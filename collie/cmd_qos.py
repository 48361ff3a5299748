"""``collie vdi qos NAME [--iops N] [--bps SIZE] ... [--clear]``: a VDI's QoS limits.

With no limit flag (and no ``--clear``) it shows the current limits; otherwise it sets
the given ones (0 removes one; ``--clear`` first removes all the others) and shows the
result.  Limits follow librbd's (docs/volumes.md): total, read and write IOPS and bytes
per second, each with an optional burst, and ``--burst-seconds``.
"""
from __future__ import annotations

import argparse

from collie.client import vdi_path
from collie.sizes import format_iec, parse_size

# (flag, API field, is a byte rate)
LIMIT_FLAGS = tuple((f"--{k.replace('_', '-')}", k, "bps" in k) for k in (
    "iops", "read_iops", "write_iops", "bps", "read_bps", "write_bps"))
BURST_FLAGS = tuple((f"{flag}-burst", f"{field}_burst", in_bytes)
                    for flag, field, in_bytes in LIMIT_FLAGS)
FLAGS = LIMIT_FLAGS + BURST_FLAGS + (("--burst-seconds", "burst_seconds", False),)
MAX_VALUE = 1 << 50


def _rate(text: str) -> int:
    """A count per second (or seconds): a non-negative integer, 0 = unlimited."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_VALUE:
        raise argparse.ArgumentTypeError(f"invalid value '{text}': expected an integer >= 0")
    return value


def _byte_rate(text: str) -> int:
    """Bytes per second, size suffixes allowed (10M); 0 = unlimited."""
    try:
        return parse_size(text, allow_zero=True)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(vdi_commands, add) -> None:
    """Add ``vdi qos`` to the ``vdi`` group; ``add(sub, name, func, help)`` makes a leaf."""
    p = add(vdi_commands, "qos", cmd_vdi_qos,
            "show or set a VDI's QoS limits (IOPS, bytes per second; 0 = unlimited)")
    p.add_argument("name")
    for flag, field, in_bytes in FLAGS:
        if field == "burst_seconds":
            what = "how many seconds a burst may last (default 1)"
        else:
            kind = "read " if "read" in field else "write " if "write" in field else ""
            what = (f"{kind}bytes per second, e.g. 10M" if in_bytes
                    else f"{kind}requests per second")
            if field.endswith("_burst"):
                what = f"the rate {flag[2:-len('-burst')]} may burst to, {what}"
        p.add_argument(flag, dest=f"qos_{field}", type=_byte_rate if in_bytes else _rate,
                       default=None, metavar="SIZE" if in_bytes else "N", help=what)
    p.add_argument("--clear", action="store_true",
                   help="remove every limit not given on this command line")


def cmd_vdi_qos(client, args) -> int:
    from collie.cli import _emit, _route   # the shared helpers (cli imports this module)
    limits = {field: getattr(args, f"qos_{field}") for _flag, field, _b in FLAGS
              if getattr(args, f"qos_{field}", None) is not None}
    clear = bool(getattr(args, "clear", False))
    with _route("vdi qos"):
        if limits or clear:
            answer = client.post(vdi_path(args.name, "qos"), {"limits": limits, "clear": clear})
        else:
            answer = client.get(vdi_path(args.name, "qos"))
    return _emit(args, answer, render_qos(answer))


def _shown(field: str, value: int) -> str:
    return f"{format_iec(value).replace(' ', '')}/s" if "bps" in field else str(value)


def render_qos(answer: dict) -> str:
    """``{"name", "qos"}`` -> one line per field set, or "unlimited"."""
    qos = answer.get("qos") or {}
    name = answer.get("name", "")
    if not qos:
        return f"vdi '{name}': no QoS limits (unlimited)"
    lines = [f"vdi '{name}' QoS limits:"]
    for flag, field, _in_bytes in FLAGS:
        if field in qos:
            lines.append(f"  {flag[2:]:<18} {_shown(field, int(qos[field]))}")
    return "\n".join(lines)


def qos_summary(entry: dict) -> str:
    """The ``QoS`` column of ``vdi list -l``: ``iops=500,bps=10MiB/s``, or ``-``."""
    qos = entry.get("qos") or {}
    return ",".join(f"{field}={_shown(field, int(qos[field]))}"
                    for _flag, field, _b in LIMIT_FLAGS if field in qos) or "-"
