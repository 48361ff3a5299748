"""The ACLs of a cluster's tree in ZooKeeper: made at start, reset for a new secret.

* ``ensure_tree`` (``Coordinator.start``): the cluster's directories exist, new ones with
  the client's ``default_acl``; ``/sheepdog`` is shared by every cluster of the ZooKeeper
  (``acl.SHARED_PARENT_ACL``); with a secret, a root this sheep's identity may not write
  raises NoAuthError, and a world-writable root (a tree from before ACLs, or one someone
  else made open to plant state, e.g. an admin token of their choosing) is refused
  (`OpenTree`) until an operator tightens it with ``set_tree_acls``.
* ``set_tree_acls`` walks ``/sheepdog/<cluster>`` and gives every znode the ACL of a
  secret (``acl.wanted_acl``: private znodes stay private): it tightens a tree made
  before ACLs, and it moves the tree to a new secret (rotation), authenticated with both.

CLI, for operators (docs/zookeeper.md)::

    python -m coordinator.rekey --zk HOSTS --cluster NAME --new-secret-file G \\
        [--old-secret-file F]

Without ``--old-secret-file`` it tightens a world-writable tree to ``G``'s ACLs.
"""
from __future__ import annotations

import argparse
import logging
import sys

from kazoo.exceptions import KazooException, NoAuthError, NodeExistsError, NoNodeError

from common.errors import InvalidRequest
from common.secrets import ClusterSecret, SecretError
from coordinator import acl
from coordinator.layout import BASE, Layout

log = logging.getLogger(__name__)

BATCH = 256     # requests in flight during a walk


class OpenTree(InvalidRequest):
    """The cluster's tree in ZooKeeper may be written by anyone: a sheep will not use it."""


def ensure_tree(client, layout: Layout, secret: ClusterSecret | None) -> None:
    """Make the cluster's directories exist; see the module docstring."""
    if secret is not None and client.exists(BASE) is None:
        try:
            client.create(BASE, acl=acl.SHARED_PARENT_ACL)
        except NodeExistsError:
            pass
    client.ensure_path(layout.root)
    if secret is not None:
        acls, _ = client.get_acls(layout.root)
        if not acl.may_create(acls, secret):
            raise NoAuthError(layout.root)
        if acl.world_writable(acls):
            raise OpenTree(
                f"cluster {layout.cluster}: {layout.root} in ZooKeeper is world-writable (made "
                f"before ACLs, or by someone else); check it, then tighten it with: python -m "
                f"coordinator.rekey --zk HOSTS --cluster {layout.cluster} --new-secret-file "
                f"SECRET (docs/zookeeper.md)")
    for path in layout.base_paths():
        client.ensure_path(path)


def _batched(items: list, call):
    """(item, result or exception) of ``call(item)`` (an async kazoo call) for every item,
    at most BATCH in flight."""
    for i in range(0, len(items), BATCH):
        chunk = items[i:i + BATCH]
        pending = [call(item) for item in chunk]
        for item, result in zip(chunk, pending):
            try:
                yield item, result.get()
            except (NoNodeError, NoAuthError) as e:
                yield item, e


def tree(client, root: str) -> list[str]:
    """Every znode under ``root``, deepest first and ``root`` last (a walk interrupted
    half way has not touched the root yet)."""
    out, level = [], [root]
    while level:
        out.extend(level)
        below = []
        for path, children in _batched(level, client.get_children_async):
            if not isinstance(children, Exception):
                below.extend(f"{path}/{name}" for name in children)
        level = below
    return out[::-1]


def set_tree_acls(client, root: str, secret: ClusterSecret,
                  old: ClusterSecret | None = None) -> tuple[int, int]:
    """Give every znode under ``root`` (root included) ``acl.wanted_acl(..., secret)``.

    ``client`` is authenticated with ``secret`` and ``old`` (the secret that owns the
    tree now; None for a world-writable tree).  Returns (znodes seen, changed); znodes
    that vanish meanwhile are skipped.  A znode that neither may change raises
    NoAuthError naming it, before any ACL is changed.
    """
    paths = tree(client, root)
    todo = []
    for path, got in _batched(paths, client.get_acls_async):
        if isinstance(got, NoAuthError) or (
                not isinstance(got, Exception) and not acl.may_admin(got[0], [secret, old])):
            raise NoAuthError(path)
        if isinstance(got, Exception):
            continue
        want = acl.wanted_acl(got[0], secret, path)
        if not acl.same_acl(got[0], want):
            todo.append((path, want))
    changed = 0
    for (path, _), result in _batched(todo, lambda item: client.set_acls_async(*item)):
        if isinstance(result, NoAuthError):
            raise NoAuthError(path)
        changed += not isinstance(result, Exception)
    return len(paths), changed


def main(argv: list[str] | None = None) -> int:
    from kazoo.client import KazooClient

    p = argparse.ArgumentParser(prog="python -m coordinator.rekey",
                                description="set the ZooKeeper ACLs of a cluster's znodes to a "
                                            "(new) cluster secret")
    p.add_argument("--zk", required=True, help="ZooKeeper hosts (host:port[,host:port...])")
    p.add_argument("--cluster", default="default", help="the sheep's --cluster name")
    p.add_argument("--new-secret-file", required=True, help="the secret the tree moves to")
    p.add_argument("--old-secret-file", help="the secret that owns the tree now (none: the "
                                             "tree is world-writable, from before ACLs)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to reach ZooKeeper")
    args = p.parse_args(argv)
    try:
        new = acl.read_secret(args.new_secret_file)
        old = acl.read_secret(args.old_secret_file) if args.old_secret_file else None
        layout = Layout(args.cluster)
    except (SecretError, InvalidRequest) as exc:
        print(f"rekey: {exc}", file=sys.stderr)
        return 1
    auth = acl.auth_data(new) + (acl.auth_data(old) if old else [])
    client = KazooClient(hosts=args.zk, auth_data=auth, timeout=args.timeout)
    try:
        client.start(timeout=args.timeout)
        seen, changed = set_tree_acls(client, layout.root, new, old)
    except NoAuthError as exc:
        print(f"rekey: ZooKeeper refused to change {exc.args[0] if exc.args else layout.root}: "
              f"neither secret owns it (--old-secret-file)", file=sys.stderr)
        return 1
    except (KazooException, client.handler.timeout_exception) as exc:
        print(f"rekey: ZooKeeper at {args.zk}: {exc!r}", file=sys.stderr)
        return 1
    finally:
        client.stop()
        client.close()
    print(f"cluster {args.cluster}: {changed} of {seen} znodes set to the ACLs of secret "
          f"{new.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
