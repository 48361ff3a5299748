"""The daemon's glibc tuning applies on this platform (Debian: glibc)."""
from __future__ import annotations

import ctypes.util

from sheep.daemon import malloc


def test_thresholds_are_accepted_by_glibc():
    assert malloc.keep_large_buffers() is True


def test_without_mallopt_it_reports_not_applied(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: "/nonexistent/libc.so")
    assert malloc.keep_large_buffers() is False


def test_an_idle_spell_after_work_trims_once():
    decide = malloc.IdleTrim(idle_cpu_s=0.05)
    assert decide.step(1.0) is False             # the first reading only sets the base
    assert decide.step(1.01) is False            # idle, but nothing was cached since start
    assert decide.step(3.0) is False             # busy
    assert decide.step(3.02) is True             # idle after work: trim
    assert decide.step(3.03) is False            # still idle: once is enough
    assert decide.step(4.0) is False and decide.step(4.0) is True


def test_malloc_trim_exists_here_and_the_trimmer_starts():
    g = malloc.trim_when_idle(interval_s=0.01)
    try:
        assert g is not None and not g.dead
    finally:
        g.kill()
