"""A sheep's store directory: node identity, cluster binding and small state.

Everything lives in ``DIR/sheep.json``::

    {"version": 1, "node_id": "10.0.0.5:7000",
     "cluster": {"name": "prod", "created": 1795000000.0} | null,
     "state": {"last_epoch": 12, ...}}

The node id is chosen once, at the first start (``default_node_id``, usually
``host:port``), and never changes, so a node that comes back with another
address is still the same node.  The first ``bind()`` ties the directory to one
formatted cluster (name + creation time); a later bind to anything else is
refused with ``StoreMismatch``, so a disk never silently joins a second cluster.

Every change is persisted at once by writing a tmp file, fsyncing it, renaming
it over ``sheep.json`` and fsyncing the directory: the file is always either
the old or the new version.  Methods block (fsync); call them off the event loop.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import threading

from common.errors import StoreMismatch

log = logging.getLogger(__name__)

FILENAME = "sheep.json"
VERSION = 1


def _describe_created(created) -> str:
    """A cluster's creation time for messages: ISO 8601 UTC for timestamps."""
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        try:
            return datetime.datetime.fromtimestamp(
                created, datetime.timezone.utc).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            pass
    return str(created)


class StoreDir:
    """An initialised store directory (``sheep.json`` present and valid).

    ``StoreDir(path)`` loads it and raises StoreMismatch when the path is not a
    directory or the file is missing, unreadable or corrupt.  Use
    ``StoreDir.open()`` to create it at first start.
    """

    def __init__(self, path) -> None:
        self.path = pathlib.Path(path)
        self._file = self.path / FILENAME
        if not self.path.is_dir():
            raise StoreMismatch(f"store {self.path} is not a directory", store=str(self.path))
        try:
            text = self._file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StoreMismatch(f"store {self.path} is not initialised: no {FILENAME}",
                                store=str(self.path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreMismatch(f"store {self.path}: cannot read {FILENAME}: {exc}",
                                store=str(self.path)) from None
        self._doc = self._validate(text)

    def _validate(self, text: str) -> dict:
        def corrupt(why: str) -> StoreMismatch:
            return StoreMismatch(f"store {self.path}: {FILENAME} is corrupt ({why})",
                                 store=str(self.path))
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise corrupt(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise corrupt("not an object")
        if doc.get("version") != VERSION:
            raise corrupt(f"unsupported version {doc.get('version')!r}")
        node_id = doc.get("node_id")
        if not isinstance(node_id, str) or not node_id:
            raise corrupt("no node_id")
        cluster = doc.get("cluster")
        if cluster is not None and not (isinstance(cluster, dict)
                                        and isinstance(cluster.get("name"), str)
                                        and "created" in cluster):
            raise corrupt("bad cluster binding")
        if not isinstance(doc.get("state", {}), dict):
            raise corrupt("bad state")
        doc.setdefault("state", {})
        return doc

    @classmethod
    def open(cls, path, default_node_id: str) -> "StoreDir":
        """Open the store at ``path``, creating the directory and file when missing.

        ``default_node_id`` becomes the node id only at the first start; later
        starts keep the recorded one.
        """
        path = pathlib.Path(path)
        if path.exists() and not path.is_dir():
            raise StoreMismatch(f"store {path} is not a directory", store=str(path))
        _make_durable_dirs(path)
        if not (path / FILENAME).exists():
            doc = {"version": VERSION, "node_id": default_node_id, "cluster": None, "state": {}}
            _persist(path, doc)
            log.info("initialised store %s as node %s", path, default_node_id)
        return cls(path)

    # ------------------------------------------------------------ identity

    @property
    def node_id(self) -> str:
        return self._doc["node_id"]

    @property
    def cluster_name(self) -> str | None:
        cluster = self._doc["cluster"]
        return None if cluster is None else cluster["name"]

    @property
    def cluster_created(self):
        """The bound cluster's creation time (as given to bind()); None until bound."""
        cluster = self._doc["cluster"]
        return None if cluster is None else cluster["created"]

    def bind(self, cluster_name: str, cluster_created) -> None:
        """Tie this store to one formatted cluster; idempotent for the same one.

        Raises StoreMismatch when already bound to another name or creation time.
        ``cluster_created`` is any JSON value (a timestamp or an ISO string).
        """
        cluster = self._doc["cluster"]
        if cluster is None:
            self._update(cluster={"name": cluster_name, "created": cluster_created})
            log.info("store %s bound to cluster %s (formatted %s)", self.path,
                     cluster_name, _describe_created(cluster_created))
            return
        if cluster["name"] == cluster_name and cluster["created"] == cluster_created:
            return
        theirs = f"'{cluster_name}'"
        if cluster["name"] == cluster_name:
            theirs += f" formatted {_describe_created(cluster_created)}"
        raise StoreMismatch(
            f"store {self.path} belongs to cluster '{cluster['name']}' "
            f"(formatted {_describe_created(cluster['created'])}), not {theirs}",
            store=str(self.path), cluster=cluster["name"], created=cluster["created"])

    def check_object_format(self, expected: int) -> None:
        """Refuse a store whose object files are of another format; record it in a new one."""
        recorded = self._doc["state"].get("object_format")
        if recorded == expected:
            return
        obj = self.path / "obj"
        has_objects = obj.is_dir() and any(obj.iterdir())
        if recorded is None and not has_objects:
            self.set("object_format", expected)
            return
        raise StoreMismatch(
            f"store {self.path} holds objects in format {recorded or 1}, this sheep reads "
            f"format {expected}; move the store aside (its data is not readable here)",
            store=str(self.path))

    # ------------------------------------------------------------ small state

    def get(self, key: str, default=None):
        """A persisted value (as JSON round-trips it), or ``default``."""
        return self._doc["state"].get(key, default)

    def set(self, key: str, value) -> None:
        """Persist a JSON-serialisable value under ``key`` (no write if unchanged)."""
        value = json.loads(json.dumps(value))  # keep what a restart would read
        if key in self._doc["state"] and self._doc["state"][key] == value:
            return
        state = dict(self._doc["state"])
        state[key] = value
        self._update(state=state)

    def _update(self, **changes) -> None:
        doc = {**self._doc, **changes}
        _persist(self.path, doc)
        self._doc = doc


def _persist(path: pathlib.Path, doc: dict) -> None:
    """Atomically replace ``path/sheep.json`` with ``doc`` and make it durable."""
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    tmp = path / f"{FILENAME}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / FILENAME)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path)


def _make_durable_dirs(path: pathlib.Path) -> None:
    """``mkdir -p`` whose new entries survive a crash (each new one's parent is fsynced)."""
    missing = []
    p = path.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
