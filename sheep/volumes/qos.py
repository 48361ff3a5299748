"""Per-VDI QoS at this gateway: the request-path wait and the catalog watch (gevent shell).

The limits are the ``qos`` field of a VDI's catalog entry (`vdi.qos`); the buckets are
per VDI name on this node, shared by every connection attached to it here (the writer and
its standbys), and follow the VDI across snapshots (a snapshot moves the name to a new
vid; the new entry keeps ``qos``).  A VDI attached at two gateways gets the limit at each.

The request path: `VdiExport` has ``qos = None`` while its VDI has no limits (the whole
cost is that attribute check); otherwise ``qos.admit(kind, nbytes)`` returns at once when
the buckets grant it and no one of the same kind is queued, else waits its turn in a FIFO
(one per kind, so a throttled write never holds a read back) in its own request greenlet:
other VDIs and other requests are not held.  The head of a queue sleeps until its tokens
are due, at most ``TICK_S`` at a time, so a limit changed while it waits applies within
a tick.  FLUSH is never throttled (it covers only writes already acknowledged).

Changes: `QosRegistry.attach` watches the VDI's catalog entry while anything is attached
here; a change (``collie vdi qos``) re-reads it and reshapes the buckets in place.
"""
from __future__ import annotations

import logging
import time

import gevent
from gevent.lock import Semaphore

from common.errors import AlreadyExists, InvalidRequest, Unavailable
from vdi import family
from vdi.qos import LIMITS, READ, WRITE, QosError, QosLimits, Throttle

log = logging.getLogger(__name__)
__all__ = ["LIMITS", "READ", "WRITE", "QosRegistry", "VdiThrottle", "set_limits"]

TICK_S = 0.05


class VdiThrottle:
    """The buckets of one VDI here, with the time requests spent waiting for them."""

    def __init__(self, name: str, limits: QosLimits, clock=time.monotonic,
                 sleep=gevent.sleep) -> None:
        self.name = name
        self._clock, self._sleep = clock, sleep
        self.core = Throttle(limits, clock())
        self._queues = {READ: Semaphore(), WRITE: Semaphore()}
        self.throttled_s = {READ: 0.0, WRITE: 0.0}   # seconds requests waited, by kind
        self.throttled = {READ: 0, WRITE: 0}         # requests that waited, by kind

    @property
    def limits(self) -> QosLimits:
        return self.core.limits

    def set_limits(self, limits: QosLimits) -> None:
        self.core.set_limits(limits, self._clock())

    def admit(self, kind: str, nbytes: int) -> None:
        core, queue = self.core, self._queues[kind]
        if not queue.locked():
            now = self._clock()
            if core.delay(kind, nbytes, now) <= 0:
                core.take(kind, nbytes, now)
                return
        with queue:
            started = now = self._clock()
            while True:
                wait = core.delay(kind, nbytes, now)
                if wait <= 0:
                    break
                self._sleep(min(wait, TICK_S))
                now = self._clock()
            core.take(kind, nbytes, now)
            self.throttled_s[kind] += now - started
            self.throttled[kind] += 1


class QosRegistry:
    """The throttles of the VDIs attached here (kept after detach, for their counters)."""

    def __init__(self, catalog, clock=time.monotonic) -> None:
        self.catalog = catalog
        self._clock = clock
        self.throttles: dict[str, VdiThrottle] = {}
        self._exports: dict[str, set] = {}      # name -> attached exports here
        self._watched: dict[str, int] = {}      # name -> the vid whose entry is watched

    def attach(self, export) -> None:
        """``export`` (a working VdiExport) gets its VDI's throttle; watch its entry."""
        name = export.entry["name"]
        self._exports.setdefault(name, set()).add(export)
        self._apply(name, QosLimits.from_entry(export.entry))
        if self._watched.get(name) != export.entry["vid"]:
            self._watch(name, export.entry["vid"])

    def detach(self, export) -> None:
        name = export.entry["name"]
        exports = self._exports.get(name)
        if exports is not None:
            exports.discard(export)
            if not exports:
                del self._exports[name]

    def _apply(self, name: str, limits: QosLimits) -> None:
        throttle = self.throttles.get(name)
        if throttle is None:
            if not limits.enabled:
                for export in self._exports.get(name, ()):
                    export.qos = None
                return
            throttle = self.throttles[name] = VdiThrottle(name, limits, self._clock)
        elif throttle.limits != limits:
            throttle.set_limits(limits)
            log.info("vdi=%s qos limits now %s", name, limits.to_dict() or "unlimited")
        active = throttle if limits.enabled else None
        for export in self._exports.get(name, ()):
            export.qos = active

    def _watch(self, name: str, vid: int) -> None:
        self._watched[name] = vid
        try:
            self.catalog.watch(vid, lambda _vid: self._changed(name, vid))
        except Exception as exc:
            self._watched.pop(name, None)
            log.info("vdi=%s vid=%06x: no qos watch: %s", name, vid, exc)

    def _changed(self, name: str, vid: int) -> None:
        """The watched entry changed (a new greenlet): re-arm, then re-read and apply."""
        if self._watched.get(name) != vid:
            return
        del self._watched[name]
        if name not in self._exports:
            return                          # nothing attached here any more
        try:
            entry = self.catalog.get(vid)
            if entry.get("snapshot") or entry.get("deleted") or entry.get("name") != name:
                entry = family.working_of(self.catalog.list(), name)
            if entry is None:
                return
            self._watch(name, entry["vid"])
            entry = self.catalog.get(entry["vid"])  # watch first, then read: none missed
            self._apply(name, QosLimits.from_entry(entry))
        except Exception as exc:
            log.warning("vdi=%s: qos limits not re-read: %s", name, exc)


def set_limits(vdis, name: str, fields: dict, clear: bool = False) -> dict:
    """Change the QoS limits of the working VDI ``name`` (compare-and-swap on its catalog
    entry): ``fields`` update its limits (0 removes one), ``clear`` drops the others
    first.  Returns the new entry; InvalidRequest for limits that cannot apply."""
    for _attempt in range(16):
        vid = vdis.working(name)["vid"]
        current, version = vdis.catalog.get_with_version(vid)
        if current.get("snapshot") or current.get("deleted"):
            continue                        # a snapshot moved it meanwhile: look again
        try:
            limits = QosLimits.parse(fields, base=None if clear else current.get("qos"))
        except QosError as exc:
            raise InvalidRequest(str(exc)) from None
        entry = {k: v for k, v in current.items() if k != "qos"}
        if limits.values:
            entry["qos"] = limits.to_dict()
        try:
            vdis.catalog.update(vid, entry, expected_version=version)
        except AlreadyExists as exc:
            if exc.data.get("conflict"):
                continue
            raise
        log.info("vdi=%s vid=%06x qos set to %s", name, vid, limits.to_dict() or "unlimited")
        return entry
    raise Unavailable(f"VDI '{name}' kept changing while its QoS limits were set; try again")
