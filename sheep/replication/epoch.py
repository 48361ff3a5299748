"""The epoch this node is in, and waiting for the next one.

An `EpochView` is a plain value: the epoch number, its member list and the ring
computed from it.  `EpochState` holds the current view and lets greenlets wait
until a given epoch (or a newer one than they saw) arrives; the coordinator's
``on_epoch`` callback feeds it.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from gevent.event import Event

from coordinator.ring import Member, Ring

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochView:
    epoch: int
    members: tuple[Member, ...]
    ring: Ring = field(repr=False)
    placement_seq: int = 0          # bumped by a copies change (``collie vdi alter-copy``)

    @classmethod
    def from_dict(cls, d: dict) -> "EpochView":
        members = tuple(sorted((Member.from_dict(m) for m in d["members"]),
                               key=lambda m: m.node_id))
        return cls(int(d["epoch"]), members, Ring(members), int(d.get("placement_seq") or 0))

    def member(self, node_id: str) -> Member | None:
        for m in self.members:
            if m.node_id == node_id:
                return m
        return None


class EpochState:
    """Current epoch view plus waiting for newer ones (greenlet-safe)."""

    def __init__(self) -> None:
        self._view: EpochView | None = None
        self._changed = Event()

    @property
    def view(self) -> EpochView | None:
        return self._view

    @property
    def epoch(self) -> int:
        return self._view.epoch if self._view else 0

    def update(self, view: EpochView) -> bool:
        """Install ``view`` if it is newer; wake every waiter.  True if installed."""
        if self._view is not None and view.epoch <= self._view.epoch:
            return False
        self._view = view
        log.info("epoch=%d members=%s", view.epoch, [m.node_id for m in view.members])
        changed, self._changed = self._changed, Event()
        changed.set()
        return True

    def wait_for(self, epoch: int, timeout_s: float) -> bool:
        """Block until the current epoch is >= ``epoch``; False on timeout."""
        deadline = _now() + timeout_s
        while self.epoch < epoch:
            remaining = deadline - _now()
            if remaining <= 0:
                return False
            self._changed.wait(remaining)
        return True

    def wait_newer(self, epoch: int, timeout_s: float) -> bool:
        return self.wait_for(epoch + 1, timeout_s)


def _now() -> float:
    return time.monotonic()


class InFlight:
    """Mutations a replica has admitted and not finished, by the epoch they carry.

    The barrier between epochs (DESIGN §5, recovery): a node answers recovery for epoch
    ``e`` only after every mutation it admitted at an older epoch has finished, so the
    object lists and copies it serves include every write acknowledged before ``e``.
    Mutations of older epochs cannot start any more once the node is at ``e`` (they get
    `OldEpoch`), so the wait is short.
    """

    def __init__(self) -> None:
        self._count: dict[int, int] = {}
        self._changed = Event()

    def enter(self, epoch: int) -> None:
        self._count[epoch] = self._count.get(epoch, 0) + 1

    def leave(self, epoch: int) -> None:
        n = self._count[epoch] - 1
        if n:
            self._count[epoch] = n
        else:
            del self._count[epoch]
            changed, self._changed = self._changed, Event()
            changed.set()

    @contextlib.contextmanager
    def mutation(self, epoch: int):
        """`enter` and `leave` around a block."""
        self.enter(epoch)
        try:
            yield
        finally:
            self.leave(epoch)

    def older_than(self, epoch: int) -> int:
        """How many admitted mutations carry an epoch older than ``epoch``."""
        return sum(n for e, n in self._count.items() if e < epoch)

    def wait_older_done(self, epoch: int, timeout_s: float) -> bool:
        """Until no mutation older than ``epoch`` is in flight; False on timeout."""
        deadline = _now() + timeout_s
        while self.older_than(epoch):
            remaining = deadline - _now()
            if remaining <= 0:
                return False
            self._changed.wait(remaining)
        return True
