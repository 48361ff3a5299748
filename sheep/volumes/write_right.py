"""Taking and handing over a VDI's write right, for `sheep.volumes.nbd_exports`.

`WriteRightMixin.take_write_right` runs at a connection's first mutation: it takes the
VDI's lock (`VdiService.take`: fenced, resynced), or files a hand-off request and waits
while another connection holds it.  The holder's side is `_serve_handoff`: while someone
waits, it hands the lock over as soon as its export is quiescent and clean
(`sheep.volumes.handoff`), with the export's write barrier closed so that nothing slips in
between the check and the release.  The provider using it has ``vdis``, ``locks``,
``attachments``, ``policy``, ``node_id``, ``_attached`` (vid -> holding export),
``_request_counts`` (vid -> waiting writers, for every vid watched), ``_serving``, and
``_revoke``, ``_watch_entry``, ``_move_attachment``, ``_quietly``.  One watch on the
requests of a vid serves every holder of it here, for the life of the daemon.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent

from common.errors import Locked, Unavailable

if TYPE_CHECKING:
    from sheep.volumes.nbd_exports import VdiExport

log = logging.getLogger(__name__)


class WriteRightMixin:
    def take_write_right(self, export: VdiExport) -> None:
        """Make ``export`` the VDI's writer: take the lock, asking its holder to hand it
        over (and waiting up to the policy's timeout) when another connection has it.
        Mutations queued behind one that waits share its deadline."""
        export.waiting += 1
        if export.taking_since is None:
            export.taking_since = time.monotonic()
        try:
            with export._taking:
                if export.writer is not None:
                    return              # a mutation queued before us took it meanwhile
                export._check_write_right()
                self._take(export, export.taking_since + self.policy.timeout_s)
        finally:
            export.waiting -= 1
            if export.waiting == 0:
                export.taking_since = None

    def _take(self, export: VdiExport, deadline: float) -> None:
        name = export.entry["name"]
        request = request_vid = None
        try:
            while True:
                export._check()
                entry = self.vdis.working(name)         # a snapshot may have moved it on
                if request is not None and request_vid != entry["vid"]:
                    self._quietly(self.attachments.withdraw, request)
                    request = None
                try:
                    writer = self.vdis.take(entry, export.client)
                except Locked as exc:
                    if self.attachments is None:
                        raise
                    if request is None:
                        request, request_vid = self.attachments.request_handoff(
                            entry["vid"], self.node_id, export.client), entry["vid"]
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise Unavailable(
                            f"VDI '{name}' is being written by another attachment that did "
                            f"not become quiescent and clean (every write flushed) within "
                            f"{self.policy.timeout_s:.0f}s: {exc.message}",
                            vid=entry["vid"]) from None
                    self.locks.wait_released(entry["vid"], min(remaining, 1.0))
                    continue
                if self.vdis.working(name)["vid"] == entry["vid"]:
                    break
                self.vdis.give_back(writer)             # a snapshot flipped it: again
        finally:
            if request is not None:
                self._quietly(self.attachments.withdraw, request)
        try:
            volume = self.vdis.open_volume(entry, gateway=writer)  # the inode, again
        except BaseException:
            self.vdis.give_back(writer)
            raise
        moved = entry["vid"] != export.entry["vid"]
        if moved:
            self._quietly(self._move_attachment, export, entry["vid"])
        export.writer, export.volume, export.entry = writer, volume, entry
        if moved:
            export.moved = False
            self._watch_entry(export)
        self._holding(export)
        log.info("vdi=%s vid=%06x write right taken by %s (generation %d)", name,
                 entry["vid"], export.client, writer.generation)

    def _holding(self, export: VdiExport) -> None:
        vid = export.entry["vid"]
        self._attached[vid] = export
        self.locks.watch(vid, lambda gone, e=export: self._revoke(e, gone))
        if self.attachments is not None and vid not in self._request_counts:
            try:
                self.attachments.watch_requests(vid, self._on_requests)
                self._request_counts.setdefault(vid, 0)
            except Exception as exc:    # writers that ask will time out; nothing is lost
                log.warning("vid=%06x: no watch on hand-off requests: %s", vid, exc)
        elif self._request_counts.get(vid):
            gevent.spawn(self._on_requests, vid, self._request_counts[vid])

    def _not_holding(self, vid: int) -> None:
        self._attached.pop(vid, None)

    def _on_requests(self, vid: int, waiting: int) -> None:
        self._request_counts[vid] = waiting
        if not waiting or vid in self._serving:
            return
        self._serving.add(vid)
        try:
            self._serve_handoff(vid)
        finally:
            self._serving.discard(vid)

    def _serve_handoff(self, vid: int) -> None:
        """Someone waits for the write right: hand it over as soon as the holder is
        quiescent and clean and has been so for the policy's idle time."""
        while self._request_counts.get(vid):
            export = self._attached.get(vid)
            if export is None or export.closed or export.revoked:
                return
            if export.may_hand_over(self.policy):
                with export._snapshotting:          # no live snapshot meanwhile
                    export._open.clear()            # hold new writes at the barrier
                    try:
                        if (self._attached.get(vid) is export
                                and export.may_hand_over(self.policy)
                                and self._asked_by_another(vid, export)
                                and export.may_hand_over(self.policy)
                                and self._hand_over(export)):
                            return
                    finally:
                        export._open.set()
            gevent.sleep(export.state.wait_before_asking_again(self.policy))

    def _asked_by_another(self, vid: int, export: VdiExport) -> bool:
        """Does a connection other than the holder still wait (read again, not the count
        a watch saw: an asker may have given up meanwhile)?"""
        try:
            requests = self.attachments.requests(vid)
        except Exception:
            return False
        return any((r.get("node_id"), r.get("client")) != (self.node_id, export.client)
                   for r in requests)

    def _hand_over(self, export: VdiExport) -> bool:
        vid, writer = export.entry["vid"], export.writer
        export.handing_over = True          # the lock watch firing now is no revocation
        try:
            self.vdis.give_back(writer)     # clean unless a mutation of it failed
        except Exception as exc:
            export.handing_over = False
            log.warning("vdi=%s vid=%06x hand-off failed, still the writer: %s",
                        export.entry["name"], vid, exc)
            return False
        self._not_holding(vid)
        export.handed_over = True
        export.writer = None
        export.volume.follow = True         # the new holder changes the map from now on
        export.handing_over = False
        log.warning("vdi=%s vid=%06x write right handed over by %s (generation %d): its "
                    "writes now fail with EPERM", export.entry["name"], vid, export.client,
                    writer.generation)
        return True
