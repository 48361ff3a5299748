"""Parse and format byte sizes (pure).

Input sizes use binary units, case-insensitive, with an optional ``B`` or ``iB``:
``4096``, ``4k``, ``512M``, ``10G``, ``1T``, ``1.5GiB``, ``512b``.  A decimal
mantissa is accepted only when the result is a whole number of bytes.

Output follows Sheepdog's ``size_to_str``: megabytes and up, one decimal below
10 units and none above (``"4.0 MB"``, ``"10 GB"``, ``"0.0 MB"``); a non-zero
size under 1 MiB is shown in KB (under 1 KiB in B) so it never reads as zero.  The units are binary
(1 GB = 2**30 bytes) as in Sheepdog, despite the SI-looking names.
"""
from __future__ import annotations

import io
import os
import re
import stat
from decimal import Decimal, InvalidOperation

_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_HUMAN_UNITS = ("MB", "GB", "TB", "PB", "EB")
_IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def parse_size(text: str, *, allow_zero: bool = False) -> int:
    """Return the number of bytes ``text`` names.

    Raises ``ValueError`` with a one-line, user-facing message when the text is
    not a size, or when it is zero and ``allow_zero`` is false.
    """
    match = _SIZE_RE.match(text)
    if match is None or (match.group(3) and match.group(3).lower() == "ib" and not match.group(2)):
        raise ValueError(f"invalid size '{text}': expected bytes or a number with K, M, G or T (e.g. 10G)")
    number, unit = match.group(1), match.group(2).lower()
    try:
        exact = Decimal(number) * _MULTIPLIERS[unit]
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"invalid size '{text}'") from None
    if exact != exact.to_integral_value():
        raise ValueError(f"invalid size '{text}': not a whole number of bytes")
    value = int(exact)
    if value == 0 and not allow_zero:
        raise ValueError(f"invalid size '{text}': must be greater than zero")
    return value


def format_size(nbytes: int) -> str:
    """Sheepdog-style human size: ``"10 GB"``, ``"4.0 MB"``, ``"0.0 MB"``, ``"512 KB"``, ``"7 B"``."""
    if 0 < nbytes < 1024:
        return f"{nbytes} B"
    if 0 < nbytes < (1 << 20):
        return _one_or_no_decimal(nbytes / 1024, "KB")
    size = nbytes / (1 << 20)
    unit = 0
    while unit < len(_HUMAN_UNITS) - 1 and size >= 1024:
        size /= 1024
        unit += 1
    return _one_or_no_decimal(size, _HUMAN_UNITS[unit])


def _one_or_no_decimal(size: float, unit: str) -> str:
    return f"{size:.0f} {unit}" if size >= 10 else f"{size:.1f} {unit}"


def format_iec(nbytes: int) -> str:
    """Binary size with IEC units, exact when a unit divides it: ``"4 MiB"``, ``"1 GiB"``, ``"512 B"``.

    Otherwise one decimal in the largest unit below the value (``"1.5 MiB"``).
    """
    unit, value = 0, nbytes
    while unit < len(_IEC_UNITS) - 1 and value >= 1024 and value % 1024 == 0:
        value //= 1024
        unit += 1
    if value < 1024 or unit == len(_IEC_UNITS) - 1:
        return f"{value} {_IEC_UNITS[unit]}"
    size = float(value)
    while unit < len(_IEC_UNITS) - 1 and size >= 1024:
        size /= 1024
        unit += 1
    return f"{size:.1f} {_IEC_UNITS[unit]}"


def format_rate(nbytes: float, seconds: float) -> str:
    """Throughput in MiB/s with one decimal; ``"-- MiB/s"`` before any time has passed."""
    if seconds <= 0:
        return "-- MiB/s"
    return f"{nbytes / seconds / (1 << 20):.1f} MiB/s"


def input_remaining(stream) -> int | None:
    """Bytes left in ``stream`` when it is a regular file we can seek in, else None."""
    try:
        st = os.fstat(stream.fileno())
        return st.st_size - stream.tell() if stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
