"""The daemon's glibc tuning applies on this platform (Debian: glibc)."""
from __future__ import annotations

import ctypes.util

from sheep.daemon import malloc


def test_thresholds_are_accepted_by_glibc():
    assert malloc.keep_large_buffers() is True


def test_without_mallopt_it_reports_not_applied(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: "/nonexistent/libc.so")
    assert malloc.keep_large_buffers() is False
