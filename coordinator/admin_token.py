"""The cluster's admin token in ZooKeeper: ``/sheepdog/<cluster>/admin_token``.

One token for the whole cluster, so that collie can talk to any sheep.  The znode has
the private ACL (the sheep's digest identity only: anonymous ZooKeeper clients cannot
read it).  The first sheep to start creates it, from its token file when that file
exists ("given from a file") or at random; every sheep keeps the current value in
memory (a data watch follows rotations) and writes it to its token file (0600) for
operators.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError

from common.errors import NotReady
from common.secrets import SecretError, new_token, read_line, write_private
from coordinator.acl import REFUSED, is_private
from coordinator.layout import Layout

log = logging.getLogger(__name__)


class AdminToken:
    """``current`` is the token (None until `load`); ``rotate`` replaces it cluster-wide."""

    def __init__(self, client, cluster: str, file: Path | None, acl=None,
                 write_file: Callable[[Path, str], None] = write_private) -> None:
        self._client = client
        self.path = f"{Layout(cluster).root}/admin_token"
        self.file = file
        self._acl = acl
        self._write_file = write_file
        self.current: str | None = None
        self._watching = False

    def load(self) -> str:
        """Read the cluster's token (creating it if this is the first sheep), keep it
        current with a watch, and write it to the token file.  A token znode others can
        read or write is not trusted: it is made private and the token replaced."""
        try:
            try:
                token = self._read()
                if self._acl is not None and not is_private(self._client.get_acls(self.path)[0]):
                    log.error("the admin token znode %s is not private (its ACL lets others "
                              "read or write it): replacing it with a new private token",
                              self.path)
                    self._client.set_acls(self.path, self._acl)
                    token = self.rotate()
            except NoNodeError:
                token = self._create()
        except NoAuthError:
            raise NotReady(f"{REFUSED} (admin token {self.path})") from None
        self._set(token)
        if not self._watching:
            self._watching = True
            self._client.DataWatch(self.path, self._changed)
        return token

    def rotate(self, token: str | None = None) -> str:
        """Replace the cluster's token (a new random one unless ``token`` is given)."""
        token = (token or new_token()).strip()
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ValueError("an admin token needs at least 16 characters and no spaces")
        self._client.set(self.path, token.encode())
        self._set(token)
        log.warning("admin token rotated (the old one is refused from now on)")
        return token

    def _read(self) -> str:
        data, _ = self._client.get(self.path)
        token = data.decode().strip()
        if not token:
            raise NoNodeError(self.path)
        return token

    def _create(self) -> str:
        token = None
        if self.file is not None:
            try:
                token = read_line(self.file)
            except SecretError as exc:
                log.warning("%s; making a new admin token", exc)
        token = token or new_token()
        try:
            self._client.create(self.path, token.encode(), acl=self._acl, makepath=True)
            log.warning("created the cluster's admin token (copy: %s)", self.file)
            return token
        except NodeExistsError:
            return self._read()          # another sheep was first

    def _changed(self, data, stat) -> None:
        if data:
            token = data.decode().strip()
            if token and token != self.current:
                self._set(token)

    def _set(self, token: str) -> None:
        self.current = token
        if self.file is None:
            return
        try:
            if read_line(self.file) != token:
                self._write_file(self.file, token + "\n")
        except (OSError, SecretError) as exc:
            log.warning("cannot write the admin token file %s: %s", self.file, exc)
