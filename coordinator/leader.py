"""The leader's duties: contending in the election, and turning membership into epochs.

A mixin of `coordinator.cluster.Coordinator` (it uses the coordinator's ``client``,
``layout``, ``node_id``, events and session state), kept apart so each file owns one
concern.  The theory of operation (election, epochs, batching, restarts) is in
``cluster.py``.
"""
from __future__ import annotations

import logging
import time

from gevent.event import Event
from kazoo.exceptions import (BadVersionError, KazooException, NoAuthError, NodeExistsError,
                              NoNodeError)

from common.errors import SheepError
from coordinator.layout import decode, encode, epoch_numbers

log = logging.getLogger("coordinator.cluster")


def same_members(epoch: dict, live: list[dict], resumed: dict | None = None) -> bool:
    """True when the live member values are the epoch's member list.

    ``started`` changes on every start: it may differ only for the restart recorded in
    ``resumed`` (``{"epoch": n, "started": {node_id: started}}``) of this very epoch.
    """
    members = epoch["members"]
    if members == live:
        return True
    def strip(ms):
        return [{k: v for k, v in m.items() if k != "started"} for m in ms]
    if not resumed or resumed.get("epoch") != epoch.get("epoch") or strip(members) != strip(live):
        return False
    restarted = resumed.get("started") or {}
    return all(m.get("started") in (old.get("started"), restarted.get(m["node_id"]))
               for m, old in zip(live, members))


class LeaderMixin:
    def _election_loop(self) -> None:
        while not self._stopping:
            self._registered.wait()
            if self._stopping:
                break
            self._election = self.client.Election(self.layout.leader, self.node_id)
            try:
                self._election.run(self._lead, self._generation)
            except NoAuthError:
                self._refuse("election")
                break
            except Exception as e:
                if self._stopping:
                    break
                log.warning("election node=%s: %r; contending again", self.node_id, e)
                self._state_changed.clear()
                self._state_changed.wait(self.RETRY_PAUSE_S)

    def _lead(self, generation: int) -> None:
        if generation != self._generation or self._stopping:
            return                      # won with a session that is gone: step down at once
        log.info("leader node=%s cluster=%s", self.node_id, self.cluster)
        self._is_leader = True
        try:
            while not self._stopping and generation == self._generation:
                self._leader_wake.clear()
                if self._registered.is_set() and not self._fenced:
                    try:
                        self._evaluate()
                    except NoAuthError:
                        self._refuse("leader")
                        break
                    except (KazooException, SheepError) as e:
                        log.info("leader node=%s: evaluation failed: %r", self.node_id, e)
                        self._leader_wake.wait(self.RETRY_PAUSE_S)
                        continue
                self._leader_wake.wait()
        finally:
            self._is_leader = False
            log.info("leader node=%s steps down", self.node_id)

    def _evaluate(self) -> dict | None:
        """One leader pass: create the next epoch if the live members differ from the newest."""
        settled, self._settled = self._settled, False
        try:
            data, stat = self.client.get(self.layout.cluster_path, watch=self._on_leader_watch)
        except NoNodeError:
            if self.client.exists(self.layout.cluster_path, watch=self._on_leader_watch) is None:
                return None             # not formatted: format() wakes us through the watch
            self._leader_wake.set()     # created in between: look again
            return None
        value = decode(data) or {}
        # gateways hold no data: their comings and goings are not epochs (no recovery pass,
        # no retried I/O), and a restart does not wait for them
        live = [d for d in self._member_dicts(watch=self._on_leader_watch)
                if d.get("weight", 1) > 0]
        if value.get("state") in ("shutdown", "waiting"):
            # an orderly shutdown is not a cascade of shrinking epochs; a restart waits
            # for every member of the last epoch
            self._restart_check(value, stat.version, live)
            return None
        if not live:
            return None
        while True:
            nums = epoch_numbers(self.client.get_children(self.layout.epochs))
            latest = self._read_epoch(nums[-1]) if nums else None
            # a placement change without a member change (``collie vdi alter-copy``) is an
            # epoch too: its recovery pass makes or retires the replicas it implies
            seq = int(value.get("placement_seq") or 0)
            if latest is not None and same_members(latest, live, value.get("resumed")) \
                    and int(latest.get("placement_seq") or 0) == seq:
                return None
            if latest is not None and not settled:
                # a change: let the rest of a burst (nodes started or killed together)
                # arrive, so that it makes one epoch and one recovery pass, not one each;
                # then evaluate afresh (/cluster may say shutdown by now, and the loop
                # checks that this node still leads)
                self._settle()
                self._settled = True
                self._leader_wake.set()
                return None
            n = (nums[-1] if nums else 0) + 1
            epoch = {"epoch": n, "members": live, "created": time.time()}
            if seq:
                epoch["placement_seq"] = seq
            try:
                self.client.create(self.layout.epoch(n), encode(epoch), makepath=True)
            except NodeExistsError:
                log.info("leader node=%s: epoch %d was created by someone else; re-reading",
                         self.node_id, n)
                continue
            log.info("leader node=%s created epoch=%d members=%s", self.node_id, n,
                     ",".join(m["node_id"] for m in live))
            return epoch

    def _settle(self) -> None:
        """Until ``/members`` has been quiet for ``BATCH_S`` (at most ``BATCH_MAX_S``)."""
        deadline = time.monotonic() + self.BATCH_MAX_S
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            changed = Event()
            self.client.get_children(self.layout.members, watch=lambda _e: changed.set())
            if not changed.wait(min(self.BATCH_S, left)):
                return

    def _restart_check(self, value: dict, version: int, live: list[dict]) -> None:
        """Leader, state shutdown/waiting: resume when every last-epoch member is back."""
        since = float(value.get("shutdown_at") or 0)
        back = {m["node_id"]: m for m in live if float(m.get("started") or 0) > since}
        if not back:
            return                      # still shutting down: nobody has restarted yet
        nums = epoch_numbers(self.client.get_children(self.layout.epochs))
        latest = self._read_epoch(nums[-1]) if nums else None
        need = {m["node_id"] for m in (latest or {}).get("members", [])}
        missing = sorted(need - set(back))
        if not missing:
            resumed = {"epoch": latest["epoch"] if latest else 0,
                       "started": {n: back[n].get("started") for n in sorted(need)}}
            new = {**{k: x for k, x in value.items() if k != "waiting_for"},
                   "state": "running", "resumed": resumed}
            log.warning("leader node=%s: every member of epoch %s is back; cluster running",
                        self.node_id, resumed["epoch"])
        elif value.get("state") != "waiting" or value.get("waiting_for") != missing:
            new = {**value, "state": "waiting", "waiting_for": missing}
            log.warning("leader node=%s: cluster waiting for %s (or 'collie cluster recover "
                        "force')", self.node_id, ",".join(missing))
        else:
            return
        try:
            self.client.set(self.layout.cluster_path, encode(new), version=version)
        except (NoNodeError, BadVersionError):
            self._leader_wake.set()     # changed meanwhile: look again

    def _on_leader_watch(self, event) -> None:
        self._leader_wake.set()
