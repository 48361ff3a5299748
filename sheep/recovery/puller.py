"""One object at a time: pulling the newest copy here, and making a copy current on demand.

`ObjectPuller` is the part of recovery that a client request meets.  At most one pull
of an object runs at a time (others wait for it); a copy a client made current (a
fresh first write, or `ensure`) is never overwritten by a pull of this epoch.

`ensure(oid, epoch)` runs before a replica serves an object while this epoch's pass is
not finished: the copy is known current when this node is continuous for it
(`sheep.recovery.history`), or when every member that can hold it (every member, when
that is unknown) answered for it (live or stale copy, or none) and the newest copy was
pulled; a silent member or a
failed pull makes the request wait and try again, failing retryably (`Unavailable`) at
the I/O timeout, and a request of an epoch that is over gets `OldEpoch`.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
from gevent.event import Event

from common.errors import Corrupt, NewEpoch, NoObject, OldEpoch, SheepError, Unavailable
from coordinator.ring import Member
from sheep.recovery.stale import fetch_any, version_any
from sheep.replication.epoch import EpochState, EpochView
from sheep.replication.replica import Replica
from sheep.store.objfile import Version

log = logging.getLogger(__name__)

ENSURE_RETRY_S = 0.2
NONE = Version(-1)          # "no copy": older than any version


class ObjectPuller:
    def __init__(self, node_id: str, replica: Replica, call_member: Callable, epochs: EpochState,
                 done_epoch: Callable[[], int], on_pulled: Callable[[int], None], *,
                 holders: Callable | None = None, io_timeout_s: float = 60.0) -> None:
        self.node_id = node_id
        self.replica = replica
        self.store = replica.store
        self._call = call_member          # (Member, header) -> (reply header, payload)
        self.epochs = epochs
        self._done_epoch = done_epoch     # the last epoch whose pass completed here
        self._on_pulled = on_pulled       # (bytes) after every installed copy
        self._holders = holders           # (oid, view) -> members to ask, [] none, None all
        self._io_timeout_s = io_timeout_s
        self._verified: dict[int, int] = {}   # oid -> epoch it was known current for
        self._inflight: dict[int, Event] = {}

    def forget(self) -> None:
        """The pass is complete: nothing needs remembering for this epoch any more."""
        self._verified.clear()

    def local_version(self, oid: int) -> Version:
        try:
            return self.store.version_of(oid)
        except NoObject:
            return NONE

    def recover(self, oid: int, newest: Version, sources: list[Member], view: EpochView) -> int:
        """Pull ``oid`` unless a pull of it runs (then wait for that one); returns the bytes
        moved here (0 when nothing was needed or another pull did it)."""
        event = self._inflight.get(oid)
        if event is not None:
            event.wait()
        elif self.local_version(oid) < newest and self._verified.get(oid) != view.epoch:
            event = self._inflight[oid] = Event()
            try:
                return self._pull(oid, newest, sources, view)
            finally:
                del self._inflight[oid]
                event.set()
        return 0

    def current(self, oid: int, newest: Version, epoch: int) -> bool:
        """The local copy is at least ``newest``, or a client made it current at ``epoch``."""
        return self.local_version(oid) >= newest or self._verified.get(oid) == epoch

    def _pull(self, oid: int, newest: Version, sources: list[Member], view: EpochView) -> int:
        """Pull from the first source that hands over a verified copy.  `Corrupt` only when
        every source's copy failed its checksums; else the last other error."""
        errors: list[Exception] = []
        # this node first (a stale copy of its own costs no network), then the others
        for m in sorted(sources, key=lambda m: m.node_id != self.node_id):
            try:
                if m.node_id == self.node_id:
                    version, data = self.replica._io(fetch_any, self.store, oid)
                else:
                    header, data = self._call(m, {"op": "fetch_any", "oid": oid,
                                                  "epoch": view.epoch})
                    version = Version.from_wire(header["version"])
            except SheepError as exc:
                errors.append(exc)
                continue
            if self._verified.get(oid) == view.epoch:
                return 0  # a client made it current meanwhile: never overwrite that
            nbytes = memoryview(data).nbytes
            installed = self.replica._io(lambda: self.store.install(oid, data, version,
                                                                    only_if_newer=True))
            if installed:
                self._on_pulled(nbytes)
                log.debug("oid=%016x pulled version %s from %s (%d bytes)", oid, version,
                          m.node_id, nbytes)
            return nbytes
        if errors:
            others = [e for e in errors if not isinstance(e, Corrupt)]
            raise others[-1] if others else errors[-1]
        log.warning("oid=%016x: no live holder of version %s; left as is", oid, newest)
        return 0

    def created(self, oid: int, epoch: int) -> None:
        """A fresh copy of ``oid`` is being made at ``epoch`` (a first write): it is current
        by definition; wait for a pull of it already in flight, then never pull it again."""
        event = self._inflight.get(oid)
        if event is not None:
            event.wait()
        if self.epochs.epoch > self._done_epoch():
            self._verified[oid] = epoch

    def ensure(self, oid: int, epoch: int) -> None:
        """Called before serving ``oid`` at ``epoch``: make this copy current first, if this
        epoch's pass has not.  Returns only when the copy is known current; `OldEpoch` when
        the node moved past ``epoch``; `Unavailable` at the I/O timeout."""
        deadline = time.monotonic() + self._io_timeout_s
        while True:
            view = self.epochs.view
            if view is None or self._done_epoch() >= epoch:
                return
            if view.epoch != epoch:
                raise OldEpoch(f"epoch {epoch} is over (at {view.epoch})", epoch=view.epoch)
            if self._verified.get(oid) == epoch:
                return
            event = self._inflight.get(oid)
            if event is not None:
                event.wait()
                continue            # look again: that pull may have failed
            try:
                newest, sources = self._probe(oid, view)
                if newest > self.local_version(oid):
                    self.recover(oid, newest, sources, view)
                if self.current(oid, newest, epoch):
                    if self.epochs.epoch != epoch:
                        continue
                    self._verified[oid] = epoch
                    return
                why = f"pull of version {newest} failed"
            except SheepError as exc:
                if isinstance(exc, OldEpoch) or self.epochs.epoch != epoch:
                    raise OldEpoch(f"epoch {epoch} is over", epoch=self.epochs.epoch) from None
                if not isinstance(exc, (Unavailable, NewEpoch, Corrupt, NoObject)):
                    raise           # e.g. NoSpace: waiting does not make room
                why = exc.message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"object {oid:016x} not known current at epoch {epoch}: {why}",
                                  oid=oid)
            log.info("oid=%016x epoch=%d not known current yet (%s); retrying", oid, epoch, why)
            self.epochs.wait_newer(epoch, min(ENSURE_RETRY_S, remaining))

    def _probe(self, oid: int, view: EpochView) -> tuple[Version, list[Member]]:
        """(newest version, holders of it) among the live and stale copies of every member
        that can hold one (`sheep.recovery.history`; every member when that is unknown),
        this node's too; Unavailable unless every one of them answered."""
        asked = self._holders(oid, view) if self._holders is not None else None
        if asked is None:
            asked = view.members
        others = [m for m in asked if m.node_id != self.node_id]
        jobs = {m: gevent.spawn(self._call, m, {"op": "version_any", "oid": oid,
                                                "epoch": view.epoch}) for m in others}
        gevent.joinall(list(jobs.values()))
        versions: dict[Member, Version] = {}
        silent = []
        for m, j in jobs.items():
            if j.exception is None:
                versions[m] = Version.from_wire(j.value[0]["version"])
            elif isinstance(j.exception, NoObject):
                continue
            elif isinstance(j.exception, OldEpoch):
                raise j.exception
            else:
                silent.append(f"{m.node_id}: {j.exception}")
        if silent:
            raise Unavailable(f"no answer about {oid:016x} from {', '.join(silent)}", oid=oid)
        me = view.member(self.node_id)
        if me is not None:          # a stale copy of our own counts too
            try:
                versions[me] = self.replica._io(version_any, self.store, oid)
            except NoObject:
                pass
        if not versions:
            return NONE, []
        newest = max(versions.values())
        return newest, [m for m, v in versions.items() if v == newest]
