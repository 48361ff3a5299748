"""The VDI catalog: one persistent znode per VDI id under ``/sheepdog/<cluster>/vdis``.

Entries are JSON dicts whose fields the caller (the vdi layer) defines; the catalog only
adds the ``vid`` key on the way out.  ZooKeeper's create is the compare-and-swap that settles
vid allocation races: two gateways probing the same name's run both try ``create(vid)``
and exactly one wins; the other gets ``AlreadyExists`` and probes on.

Updates are optimistic: ``get_with_version`` returns the znode version and
``update(..., expected_version=v)`` fails when someone else wrote in between.  There is no
conflict class in ``common.errors`` (and this package does not own it), so a version
conflict raises ``AlreadyExists`` with ``data["conflict"] = True`` and the versions:
"a newer entry already exists; re-read and retry".

Every kazoo failure that means "ZooKeeper is not reachable right now" becomes
``common.errors.Unavailable``, a refusal by the cluster's ACLs ``NotReady``; nothing kazoo
leaks out of this package.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)

from common.errors import AlreadyExists, InvalidRequest, NotFound, NotReady, Unavailable
from coordinator.acl import REFUSED
from coordinator.layout import Layout, decode, encode, parse_vid

log = logging.getLogger(__name__)

_UNREACHABLE = (ConnectionLoss, ConnectionClosedError, SessionExpiredError, OperationTimeoutError)


@contextmanager
def zk_unavailable(what: str):
    """Translate "ZooKeeper unreachable" kazoo errors into ``Unavailable`` for ``what``,
    and a refusal by the cluster's ACLs (NoAuth) into ``NotReady`` saying why."""
    try:
        yield
    except _UNREACHABLE as e:
        raise Unavailable(f"ZooKeeper unavailable during {what}: {e.__class__.__name__}") from e
    except NoAuthError as e:
        raise NotReady(f"{REFUSED} ({what})") from e


def read_vid_znodes(client, parent: str, path_of) -> list[tuple[int, bytes]]:
    """(vid, data) of every vid-named child of ``parent``, ascending by vid.

    The reads are pipelined (one round trip for all of them, not one each);
    children that vanish meanwhile are skipped, foreign names ignored.
    """
    try:
        children = client.get_children(parent)
    except NoNodeError:
        return []
    vids = []
    for name in children:
        try:
            vids.append(parse_vid(name))
        except InvalidRequest:
            log.warning("ignoring foreign znode %s/%s", parent, name)
    pending = [(vid, client.get_async(path_of(vid))) for vid in sorted(vids)]
    out = []
    for vid, result in pending:
        try:
            data, _ = result.get()
        except NoNodeError:
            continue
        out.append((vid, data))
    return out


class Catalog:
    """CRUD on ``/vdis/<vid hex>`` with CAS semantics; thread/greenlet safe (stateless)."""

    def __init__(self, client, cluster: str):
        self._client = client
        self._layout = Layout(cluster)

    def list(self) -> list[dict]:
        """Every entry, ascending by vid; each has ``"vid"`` (int). Entries deleted between
        the listing and the read are skipped."""
        with zk_unavailable("catalog list"):
            return [self._entry(vid, data) for vid, data in
                    read_vid_znodes(self._client, self._layout.vdis, self._layout.vdi)]

    def get(self, vid: int) -> dict:
        """The entry of ``vid``; NotFound when there is none."""
        return self.get_with_version(vid)[0]

    def get_with_version(self, vid: int) -> tuple[dict, int]:
        """``(entry, version)``; pass the version to ``update`` for a compare-and-swap."""
        path = self._layout.vdi(vid)
        with zk_unavailable("catalog get"):
            try:
                data, stat = self._client.get(path)
            except NoNodeError:
                raise NotFound(f"no VDI with vid {vid:06x}", vid=vid) from None
        return self._entry(vid, data), stat.version

    def watch(self, vid: int, on_change) -> None:
        """Call ``on_change(vid)`` once, in a new greenlet, when the entry of ``vid`` is
        changed or deleted after this call (e.g. a snapshot turned it into one)."""
        state = {"version": None, "fired": False}
        handler = self._client.handler

        def changed(data, stat, event=None):
            if state["fired"]:
                return False
            version = stat.version if stat is not None else -1
            if state["version"] is None:
                state["version"] = version
                return True
            if version != state["version"]:
                state["fired"] = True
                handler.spawn(on_change, vid)
                return False
            return True
        with zk_unavailable("catalog watch"):
            self._client.DataWatch(self._layout.vdi(vid), changed)

    def create(self, vid: int, entry: dict) -> None:
        """Create the entry; AlreadyExists when the vid is taken (the allocation CAS)."""
        path = self._layout.vdi(vid)
        with zk_unavailable("catalog create"):
            try:
                self._client.create(path, encode(self._stored(vid, entry)), makepath=True)
            except NodeExistsError:
                raise AlreadyExists(f"vid {vid:06x} is already in the catalog", vid=vid) from None
        log.info("catalog: created vid=%06x name=%s", vid, entry.get("name"))

    def update(self, vid: int, entry: dict, expected_version: int | None = None) -> int:
        """Replace the entry and return the new version.

        NotFound when the vid has no entry; with ``expected_version``, AlreadyExists
        (``conflict=True``) when the stored version differs.
        """
        path = self._layout.vdi(vid)
        version = -1 if expected_version is None else int(expected_version)
        with zk_unavailable("catalog update"):
            try:
                stat = self._client.set(path, encode(self._stored(vid, entry)), version=version)
            except NoNodeError:
                raise NotFound(f"no VDI with vid {vid:06x}", vid=vid) from None
            except BadVersionError:
                raise AlreadyExists(
                    f"vid {vid:06x} was changed by someone else (expected version {version}); "
                    "re-read and retry", vid=vid, conflict=True, expected_version=version) from None
        return stat.version

    def delete(self, vid: int, expected_version: int | None = None) -> None:
        """Remove the entry; NotFound when absent, AlreadyExists (conflict) on a version mismatch."""
        path = self._layout.vdi(vid)
        version = -1 if expected_version is None else int(expected_version)
        with zk_unavailable("catalog delete"):
            try:
                self._client.delete(path, version=version)
            except NoNodeError:
                raise NotFound(f"no VDI with vid {vid:06x}", vid=vid) from None
            except BadVersionError:
                raise AlreadyExists(f"vid {vid:06x} was changed by someone else; re-read and retry",
                                    vid=vid, conflict=True, expected_version=version) from None
        log.info("catalog: deleted vid=%06x", vid)

    @staticmethod
    def _stored(vid: int, entry: dict) -> dict:
        if not isinstance(entry, dict):
            raise TypeError("catalog entries are dicts")
        return {**entry, "vid": vid}

    @staticmethod
    def _entry(vid: int, data: bytes) -> dict:
        entry = decode(data) or {}
        entry["vid"] = vid
        return entry
