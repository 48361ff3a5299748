"""Admin routes for volume management: snapshot, clone, rollback, tree."""
from __future__ import annotations

from sheep.admin import Router


def register(r: Router, sheep) -> None:
    """Add this module's routes for one `sheep.daemon.Sheep`."""
