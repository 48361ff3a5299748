"""ZooKeeper ACLs of a cluster's znodes, derived from the cluster secret (pure: no I/O).

Every sheep of a cluster authenticates to ZooKeeper with the digest identity
``sheep:<password>`` (``ClusterSecret.zk_credentials``; the password is derived from the
cluster secret, so every sheep holding the secret file has it and nobody else does).

=====================  =============================================  ========================
ACL                    entries                                        used for
=====================  =============================================  ========================
``member_acl``         digest ``sheep``: ALL; world: READ             every znode of the
                                                                      cluster (the client's
                                                                      ``default_acl``)
``private_acl``        digest ``sheep``: ALL                          secrets (the admin token)
``SHARED_PARENT_ACL``  world: READ, CREATE                            ``/sheepdog``, shared by
                                                                      the clusters of one
                                                                      ZooKeeper
=====================  =============================================  ========================

So an anonymous client can watch the whole tree (docs/zookeeper.md) except the private
znodes, and write nothing under ``/sheepdog/<cluster>``; a sheep with another secret has
another digest identity and is refused like an anonymous client.

``python -m coordinator.acl --secret-file F`` prints the credentials for zkCli's
``addauth digest`` (docs/zookeeper.md).
"""
from __future__ import annotations

import argparse
import sys

from kazoo.security import ACL, Permissions, make_acl, make_digest_acl, make_digest_acl_credential

from common.secrets import ZK_USER, ClusterSecret, SecretError, read_line

REFUSED = ("ZooKeeper refused this sheep (NoAuth): its cluster secret differs from the "
           "cluster's (--secret-file)")

WORLD_READ = make_acl("world", "anyone", read=True)
SHARED_PARENT_ACL = [make_acl("world", "anyone", read=True, create=True)]


def auth_data(secret: ClusterSecret | None) -> list[tuple[str, str]] | None:
    """kazoo ``auth_data`` of a sheep: its digest credentials (None without a secret)."""
    return None if secret is None else [("digest", secret.zk_credentials)]


def digest_id(secret: ClusterSecret) -> str:
    """The ACL id of the cluster's identity: ``sheep:<base64 sha1 of user:password>``."""
    return make_digest_acl_credential(ZK_USER, secret.zk_password)


def member_acl(secret: ClusterSecret) -> list[ACL]:
    """The cluster's identity may do anything; anybody may read (operators watch)."""
    return [make_digest_acl(ZK_USER, secret.zk_password, all=True), WORLD_READ]


def private_acl(secret: ClusterSecret) -> list[ACL]:
    """The cluster's identity only: not even readable by anonymous clients."""
    return [make_digest_acl(ZK_USER, secret.zk_password, all=True)]


def default_acl(secret: ClusterSecret | None) -> list[ACL] | None:
    """kazoo ``default_acl`` of a sheep (None without a secret: kazoo's open ACL)."""
    return None if secret is None else member_acl(secret)


def _grants(entry: ACL, perm: int, ids: set[tuple[str, str]]) -> bool:
    return bool(entry.perms & perm) and (entry.id.scheme, entry.id.id) in ids


def _ids(secrets) -> set[tuple[str, str]]:
    return {("world", "anyone")} | {("digest", digest_id(s)) for s in secrets if s is not None}


def may_create(acls: list[ACL], secret: ClusterSecret | None) -> bool:
    """May a client authenticated with ``secret`` (anonymous when None) create children
    of a znode with these ACLs?"""
    return any(_grants(e, Permissions.CREATE, _ids([secret])) for e in acls)


def may_admin(acls: list[ACL], secrets) -> bool:
    """May a client authenticated with each of ``secrets`` change these ACLs?  (The
    digest in ``acls`` must be as its owner sees it: others are shown ``user:x``.)"""
    return any(_grants(e, Permissions.ADMIN, _ids(secrets)) for e in acls)


def world_writable(acls: list[ACL]) -> bool:
    """True when anonymous clients may do more than read (a tree from before ACLs)."""
    anyone = {("world", "anyone")}
    return any(_grants(e, Permissions.ALL & ~Permissions.READ, anyone) for e in acls)


def is_private(acls: list[ACL]) -> bool:
    """True when the world has no entry at all (a secret such as the admin token)."""
    return not any((e.id.scheme, e.id.id) == ("world", "anyone") for e in acls)


PRIVATE_NAMES = frozenset({"admin_token"})     # cluster znodes that hold a secret


def wanted_acl(acls: list[ACL], secret: ClusterSecret, path: str = "") -> list[ACL]:
    """The ACL a cluster znode at ``path`` whose ACL is ``acls`` (open, or under an older
    secret) should have under ``secret``: the secrets (`PRIVATE_NAMES`, whatever their
    ACL is now: one planted in an open tree must not become world-readable) and what is
    private stay private, everything else is member."""
    if is_private(acls) or path.rsplit("/", 1)[-1] in PRIVATE_NAMES:
        return private_acl(secret)
    return member_acl(secret)


def same_acl(a: list[ACL], b: list[ACL]) -> bool:
    """Equal as sets of (perms, scheme, id): ZooKeeper keeps no order worth comparing."""
    def key(acls):
        return {(e.perms, e.id.scheme, e.id.id) for e in acls}
    return key(a) == key(b)


def read_secret(path: str) -> ClusterSecret:
    """An existing cluster secret file (operators' tools never create one)."""
    line = read_line(path)
    if line is None:
        raise SecretError(f"{path} does not exist")
    return ClusterSecret.parse(line, path)


def main(argv: list[str] | None = None) -> int:
    """Print ``sheep:<password>`` of a secret file (for zkCli's ``addauth digest``)."""
    p = argparse.ArgumentParser(prog="python -m coordinator.acl",
                                description="ZooKeeper digest credentials of a cluster secret")
    p.add_argument("--secret-file", required=True, help="the cluster secret file of the sheep")
    args = p.parse_args(argv)
    try:
        secret = read_secret(args.secret_file)
    except SecretError as exc:
        print(f"coordinator.acl: {exc}", file=sys.stderr)
        return 1
    print(secret.zk_credentials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
