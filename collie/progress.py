"""A one-line progress bar on stderr for long reads and writes.

``Progress.for_transfer(total, stream, enabled)`` gives a real bar only when the
caller allows it (not ``--json``), the stream is a TTY and the total is known and
above 8 MiB; otherwise a no-op object with the same interface.  ``render_bar``
is pure so the line can be tested without a terminal or a clock.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from collie.sizes import format_rate

MIN_TOTAL_BYTES = 8 << 20
_BAR_WIDTH = 30
_REDRAW_EVERY_S = 0.1


def render_bar(done: int, total: int, elapsed_s: float, width: int = _BAR_WIDTH) -> str:
    """``" 42.0% [============>                 ] 12.3 MiB/s"`` (no carriage return)."""
    fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
    filled = int(fraction * width)
    if filled >= width:
        bar = "=" * width
    else:
        bar = "=" * filled + ">" + " " * (width - filled - 1)
    return f"{fraction * 100:5.1f}% [{bar}] {format_rate(done, elapsed_s)}"


class NullProgress:
    """Progress that shows nothing."""

    def update(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class Progress(NullProgress):
    """Redraws ``render_bar`` in place at most every 0.1 s; ``close`` draws 100% state and a newline."""

    def __init__(self, total: int, stream: TextIO, now: Callable[[], float] = time.monotonic):
        self.total = total
        self.done = 0
        self.stream = stream
        self.now = now
        self.started = now()
        self.last_draw = float("-inf")

    @classmethod
    def for_transfer(cls, total: int | None, stream: TextIO | None = None,
                     enabled: bool = True) -> NullProgress:
        """A bar when enabled, ``stream`` (default stderr) is a TTY and ``total`` > 8 MiB; else a no-op."""
        stream = stream if stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        if not enabled or total is None or total <= MIN_TOTAL_BYTES or not (isatty and isatty()):
            return NullProgress()
        return cls(total, stream)

    def update(self, nbytes: int) -> None:
        self.done += nbytes
        t = self.now()
        if t - self.last_draw >= _REDRAW_EVERY_S:
            self.last_draw = t
            self._draw(t)

    def close(self) -> None:
        self._draw(self.now())
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, t: float) -> None:
        self.stream.write("\r" + render_bar(self.done, self.total, t - self.started))
        self.stream.flush()
