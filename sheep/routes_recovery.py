"""Admin routes for recovery and cluster lifecycle: shutdown, recover, check, throttle."""
from __future__ import annotations

from sheep.admin import Router


def register(r: Router, sheep) -> None:
    """Add this module's routes for one `sheep.daemon.Sheep`."""
