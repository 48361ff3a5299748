"""Who has a working VDI attached, and who asks its writer for the write right.

Attaching is not writing (live migration: qemu's destination opens the disk and reads
while the source still runs).  Every NBD connection to a working VDI registers an
*attachment*; the right to write is the VDI's lock (`coordinator.locks`), taken at a
connection's first mutation.  A connection that wants to write while another holds the
lock files a *hand-off request*; the holder gives the lock up once it is quiescent and
clean (`sheep.volumes.handoff`).

Theory of operation
-------------------
* ``/attachments/<vid>/a<seq>``: ephemeral sequential, one per attached connection, owned
  by the serving sheep's session (a dead sheep's attachments go with it).
* ``/handoffs/<vid>/r<seq>``: ephemeral sequential, one per waiting writer; withdrawn when
  it got the lock or gave up.  The holder watches the children of ``/handoffs/<vid>``
  while it holds the lock (`watch_requests`).
* Both parents are persistent per vid (created on demand, a few bytes each).
"""
from __future__ import annotations

import logging
import time

from kazoo.exceptions import NoNodeError

from common.errors import InvalidRequest
from coordinator.catalog import zk_unavailable
from coordinator.layout import Layout, decode, encode, parse_vid

log = logging.getLogger(__name__)


class Attachments:
    def __init__(self, client, cluster: str) -> None:
        self._client = client
        self._layout = Layout(cluster)

    # -- attachments --------------------------------------------------------------------
    def attach(self, vid: int, node_id: str, client: str) -> str:
        """Register an attached connection; returns its znode path (for `detach`)."""
        value = {"vid": vid, "node_id": node_id, "client": client, "since": time.time()}
        with zk_unavailable("attach"):
            return self._client.create(self._layout.attachments_of(vid) + "/a",
                                       encode(value), ephemeral=True, sequence=True,
                                       makepath=True)

    def detach(self, path: str) -> None:
        with zk_unavailable("detach"):
            try:
                self._client.delete(path)
            except NoNodeError:
                pass                    # the session ended: it went with it

    def of(self, vid: int) -> list[dict]:
        """The attachments of ``vid``, oldest first."""
        return self._children(self._layout.attachments_of(vid))

    def all(self) -> dict[int, list[dict]]:
        """vid -> its attachments, for every vid that has one."""
        with zk_unavailable("attachments"):
            try:
                names = self._client.get_children(self._layout.attachments)
            except NoNodeError:
                return {}
        out = {}
        for name in names:
            try:
                vid = parse_vid(name)
            except InvalidRequest:      # a foreign znode
                continue
            found = self.of(vid)
            if found:
                out[vid] = found
        return out

    # -- hand-off requests --------------------------------------------------------------
    def request_handoff(self, vid: int, node_id: str, client: str) -> str:
        value = {"vid": vid, "node_id": node_id, "client": client, "since": time.time()}
        with zk_unavailable("hand-off request"):
            path = self._client.create(self._layout.handoffs_of(vid) + "/r", encode(value),
                                       ephemeral=True, sequence=True, makepath=True)
        log.info("hand-off: vid=%06x requested by node=%s client=%s", vid, node_id, client)
        return path

    def withdraw(self, path: str) -> None:
        self.detach(path)

    def requests(self, vid: int) -> list[dict]:
        return self._children(self._layout.handoffs_of(vid))

    def watch_requests(self, vid: int, on_change) -> None:
        """Call ``on_change(vid, n)`` in a new greenlet with the number ``n`` of hand-off
        requests for ``vid``: once now, then whenever it changes, for the life of the
        session (one watch per vid: its caller dispatches to whoever holds it then)."""
        path = self._layout.handoffs_of(vid)
        handler = self._client.handler
        with zk_unavailable("hand-off watch"):
            self._client.ensure_path(path)

            def changed(children):
                handler.spawn(on_change, vid, len(children))
                return True
            self._client.ChildrenWatch(path, changed)

    # -- helpers ------------------------------------------------------------------------
    def _children(self, parent: str) -> list[dict]:
        with zk_unavailable("attachment list"):
            try:
                names = sorted(self._client.get_children(parent))
            except NoNodeError:
                return []
            pending = [(n, self._client.get_async(f"{parent}/{n}")) for n in names]
            out = []
            for name, result in pending:
                try:
                    data, _ = result.get()
                except NoNodeError:
                    continue
                value = decode(data)
                if isinstance(value, dict):
                    out.append({**value, "id": name})
            return out
