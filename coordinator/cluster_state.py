"""The ``/cluster`` znode and the recovery markers: format, state changes, shutdown.

A mixin of `coordinator.cluster.Coordinator` (it uses the coordinator's ``client``,
``layout``, ``cluster`` and ``node_id``), kept apart so each file owns one concern:
``cluster.py`` membership, epochs and fencing; this one the cluster's configuration and
lifecycle values.  The theory of operation (shutdown, waiting, force) is in ``cluster.py``.
"""
from __future__ import annotations

import logging
import time

from gevent.event import Event
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

from common.errors import AlreadyExists, InvalidRequest, NotReady, Unavailable
from coordinator.catalog import zk_unavailable
from coordinator.layout import decode, encode, epoch_numbers

log = logging.getLogger(__name__)

CLUSTER_STATES = ("running", "shutdown", "waiting")
COPIES_RANGE = (1, 31)
BLOCK_SIZE_SHIFT_RANGE = (20, 26)


def prunable_marker_epochs(present: list[int], complete_epoch: int) -> list[int]:
    """The recovery marker epochs that may be deleted once ``complete_epoch`` is complete.

    ``complete_epoch`` must have a marker from every member and the caller's stale area
    purged up to it.  Every older marker directory is then dead: each member of the
    complete epoch is past the older ones (their purge waiters have ended, and the purge
    of ``stale/<=complete_epoch>`` covered them), and a node that was not a member comes
    back in a newer epoch whose own completion purges its stale area.  The complete
    epoch's own markers stay (other members may still be reading them to purge), and so
    do newer ones.
    """
    return sorted(e for e in present if e < complete_epoch)


class ClusterStateMixin:
    # -- cluster format -------------------------------------------------------------

    def format(self, copies: int, block_size_shift: int = 22, min_copies: int | None = None) -> dict:
        """Create ``/cluster`` and return its value; the leader then creates epoch 1.

        InvalidRequest unless 1 <= min_copies <= copies <= 31 and 20 <= shift <= 26;
        ``min_copies`` defaults to 1.  AlreadyExists when the cluster is formatted.
        """
        def bad(v, lo, hi):
            return not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi
        if bad(copies, *COPIES_RANGE):
            raise InvalidRequest(f"copies must be {COPIES_RANGE[0]}..{COPIES_RANGE[1]}, got {copies!r}")
        if bad(block_size_shift, *BLOCK_SIZE_SHIFT_RANGE):
            raise InvalidRequest(f"block_size_shift must be {BLOCK_SIZE_SHIFT_RANGE[0]}.."
                                 f"{BLOCK_SIZE_SHIFT_RANGE[1]}, got {block_size_shift!r}")
        min_copies = 1 if min_copies is None else min_copies
        if bad(min_copies, 1, copies):
            raise InvalidRequest(f"min_copies must be 1..{copies}, got {min_copies!r}")
        value = {"copies": copies, "min_copies": min_copies, "block_size_shift": block_size_shift,
                 "created": time.time(), "state": "running"}
        with zk_unavailable("format"):
            try:
                self.client.create(self.layout.cluster_path, encode(value), makepath=True)
            except NodeExistsError:
                raise AlreadyExists(f"cluster {self.cluster} is already formatted") from None
        log.info("cluster formatted cluster=%s copies=%d min_copies=%d shift=%d by node=%s",
                 self.cluster, copies, min_copies, block_size_shift, self.node_id)
        return value

    def cluster_format(self) -> dict | None:
        """The ``/cluster`` value, or None when the cluster is not formatted."""
        with zk_unavailable("cluster read"):
            try:
                data, _ = self.client.get(self.layout.cluster_path)
            except NoNodeError:
                return None
        return decode(data)

    def set_cluster_state(self, state: str) -> dict:
        """Set ``/cluster``'s state (running / shutdown / waiting) and return the new value.

        NotReady when unformatted; InvalidRequest for an unknown state.
        """
        if state not in CLUSTER_STATES:
            raise InvalidRequest(f"cluster state must be one of {', '.join(CLUSTER_STATES)}, got {state!r}")
        value = self.update_cluster(lambda v: {**v, "state": state})
        log.info("cluster state cluster=%s state=%s", self.cluster, state)
        return value

    def update_cluster(self, change) -> dict:
        """Compare-and-set ``/cluster`` to ``change(current value)``; returns the new value.

        ``change`` may raise to refuse.  NotReady when the cluster is not formatted.
        """
        path = self.layout.cluster_path
        with zk_unavailable("cluster update"):
            while True:
                try:
                    data, stat = self.client.get(path)
                except NoNodeError:
                    raise NotReady(f"cluster {self.cluster} is not formatted") from None
                value = change(dict(decode(data) or {}))
                try:
                    self.client.set(path, encode(value), version=stat.version)
                except BadVersionError:
                    continue
                return value

    def bump_placement(self, timeout_s: float = 30.0) -> dict:
        """Ask the leader for a new epoch with the same members (``placement_seq`` in
        ``/cluster`` goes up; the leader copies it into the epoch it makes); returns that
        epoch's record once it exists.  Unavailable when none appears within ``timeout_s``."""
        value = self.update_cluster(
            lambda v: {**v, "placement_seq": int(v.get("placement_seq") or 0) + 1})
        seq = value["placement_seq"]
        deadline = time.monotonic() + timeout_s
        while True:
            changed = Event()
            with zk_unavailable("epochs"):
                self.client.get_children(self.layout.epochs, watch=lambda _e: changed.set())
            latest = self.latest_epoch()
            if latest is not None and int(latest.get("placement_seq") or 0) >= seq:
                return latest
            left = deadline - time.monotonic()
            if left <= 0 or not changed.wait(left):
                break
        raise Unavailable(f"no epoch for placement change {seq} within {timeout_s:.0f}s "
                          "(is the cluster running, with a leader?)")

    def shutdown(self) -> dict:
        """Orderly shutdown: every node started before now stops; no epochs are recorded."""
        def change(v):
            if v.get("state") != "running":
                raise InvalidRequest(f"cluster {self.cluster} is {v.get('state')}, not running")
            out = {k: x for k, x in v.items() if k not in ("waiting_for", "resumed")}
            return {**out, "state": "shutdown", "shutdown_at": time.time()}
        value = self.update_cluster(change)
        log.warning("cluster shutdown cluster=%s requested by node=%s", self.cluster, self.node_id)
        return value

    def force_recover(self) -> dict:
        """Give up waiting for missing members: the present nodes become the next epoch."""
        def change(v):
            if v.get("state") != "waiting":
                raise InvalidRequest(f"cluster {self.cluster} is {v.get('state')}, "
                                     "not waiting for nodes: nothing to force")
            out = {k: x for k, x in v.items() if k not in ("waiting_for", "resumed")}
            return {**out, "state": "running"}
        value = self.update_cluster(change)
        log.warning("cluster recover force cluster=%s by node=%s", self.cluster, self.node_id)
        return value

    # -- recovery markers -----------------------------------------------------------

    def mark_recovered(self, epoch: int) -> None:
        """Record that this node finished recovering ``epoch`` (idempotent)."""
        with zk_unavailable("recovery marker"):
            try:
                self.client.create(self.layout.recovery_marker(epoch, self.node_id),
                                   encode({"finished": time.time()}), makepath=True)
            except NodeExistsError:
                pass

    def prune_recovery_markers(self, complete_epoch: int) -> list[int]:
        """Delete ``/recovery/<e>`` subtrees for every e < ``complete_epoch`` (see
        `prunable_marker_epochs`); returns the epochs deleted.  Every node calls this after
        its own purge, so concurrent deletes of the same subtree are expected and harmless;
        a marker recreated meanwhile by a late node leaves its directory to the next prune.
        """
        removed = []
        with zk_unavailable("recovery markers cleanup"):
            try:
                children = self.client.get_children(self.layout.recovery)
            except NoNodeError:
                return removed
            for epoch in prunable_marker_epochs(epoch_numbers(children), complete_epoch):
                try:
                    self.client.delete(self.layout.recovery_epoch(epoch), recursive=True)
                except NoNodeError:
                    pass
                except NotEmptyError:
                    continue
                removed.append(epoch)
        if removed:
            log.info("recovery markers of epochs %s..%s deleted (epoch %d complete)",
                     removed[0], removed[-1], complete_epoch)
        return removed

    def recovered(self, epoch: int, watch=None) -> set[str]:
        """The node ids that finished recovering ``epoch``."""
        with zk_unavailable("recovery markers"):
            path = self.layout.recovery_epoch(epoch)
            try:
                return set(self.client.get_children(path, watch=watch))
            except NoNodeError:
                if watch is not None:   # arm a watch on its creation instead
                    self.client.exists(path, watch=watch)
                return set()

    def epoch(self, n: int) -> dict | None:
        """Epoch ``n``'s record (None when it does not exist)."""
        with zk_unavailable("epoch"):
            return self._read_epoch(n)

    def complete_epoch(self, before: int) -> int | None:
        """The newest epoch older than ``before`` that every one of its members finished
        recovering (all their markers present), or None when no such epoch is known."""
        with zk_unavailable("recovery markers"):
            try:
                children = self.client.get_children(self.layout.recovery)
            except NoNodeError:
                return None
            for n in sorted((e for e in epoch_numbers(children) if e < before), reverse=True):
                epoch = self._read_epoch(n)
                if epoch is None:
                    continue
                if {m["node_id"] for m in epoch["members"]} <= self.recovered(n):
                    return n
        return None
