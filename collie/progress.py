"""Live output: a one-line progress bar on stderr for long reads and writes, and the
refresh loop and screen of ``--watch``.

``Progress.for_transfer(total, stream, enabled)`` gives a real bar only when the
caller allows it (not ``--json``), the stream is a TTY and the total is known and
above 8 MiB; otherwise a no-op object with the same interface.  ``render_bar``
is pure so the line can be tested without a terminal or a clock.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO

from collie import render_watch
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


class LiveScreen:
    """Shows successive blocks of text (one per refresh of a ``--watch``).

    On a TTY each block is redrawn in place: cursor home, every line cleared to its end,
    the rest of the screen cleared.  Elsewhere (a pipe, a log file) a block is printed only
    when its text changed, after a ``[HH:MM:SS]`` line, so logs stay readable.
    """

    def __init__(self, stream: TextIO, tty: bool | None = None,
                 stamp: Callable[[], str] = lambda: time.strftime("%H:%M:%S")):
        isatty = getattr(stream, "isatty", None)
        self.stream = stream
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.stamp = stamp
        self.last: str | None = None

    def show(self, text: str) -> None:
        if self.tty:
            clear = "\x1b[2J" if self.last is None else ""
            body = "".join(line + "\x1b[K\n" for line in text.split("\n"))
            self.stream.write(f"\x1b[H{clear}{body}\x1b[J")
        elif text != self.last:
            self.stream.write(f"{'' if self.last is None else chr(10)}[{self.stamp()}]\n{text}\n")
        self.last = text
        self.stream.flush()


def watch(fetch: Callable[[], dict], show: Callable[[float, dict], None],
          done: Callable[[dict], bool], interval_s: float, *,
          now: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> dict:
    """``show(t, fetch())`` every ``interval_s`` seconds (``t``: seconds since the first
    fetch) until ``done(answer)``; returns that last answer.  Errors of ``fetch`` and
    ``KeyboardInterrupt`` go to the caller."""
    start = now()
    while True:
        asked = now()
        answer = fetch()
        show(now() - start, answer)
        if done(answer):
            return answer
        sleep(max(0.0, interval_s - (now() - asked)))


def watch_recovery(fetch: Callable[[], dict], interval_s: float, stream: TextIO, *,
                   as_json: bool = False, now: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> dict:
    """``collie node recovery --watch``: ``GET /recovery`` answers (from ``fetch``) shown on
    a ``LiveScreen``, or as one JSON document per line, until recovery is done; returns
    the final answer."""
    tracker = render_watch.RateTracker()
    screen = None if as_json else LiveScreen(stream)

    def show(t: float, answer: dict) -> None:
        tracker.observe(t, answer)
        estimates = tracker.estimates(answer)
        if screen is None:
            stream.write(json.dumps(render_watch.watch_document(t, answer, estimates),
                                    sort_keys=True) + "\n")
            stream.flush()
        else:
            screen.show(render_watch.render_watch(answer, estimates))

    return watch(fetch, show, render_watch.recovery_done, interval_s, now=now, sleep=sleep)
