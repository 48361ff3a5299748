"""coordinator.acl: the ACLs and credentials derived from a cluster secret (pure)."""
from __future__ import annotations

from kazoo.security import OPEN_ACL_UNSAFE, Permissions, make_acl, make_digest_acl

from common.secrets import ClusterSecret
from coordinator import acl

SECRET = ClusterSecret(bytes(range(32)))
OTHER = ClusterSecret(bytes(range(1, 33)))


def entries(acls):
    return sorted((e.id.scheme, e.id.id, e.perms) for e in acls)


def test_auth_data_and_defaults_follow_the_secret():
    assert acl.auth_data(SECRET) == [("digest", SECRET.zk_credentials)]
    assert acl.auth_data(None) is None and acl.default_acl(None) is None
    assert acl.default_acl(SECRET) == acl.member_acl(SECRET)


def test_member_acl_is_digest_all_plus_world_read():
    ident = acl.digest_id(SECRET)
    assert ident.startswith("sheep:") and SECRET.zk_password not in ident
    assert entries(acl.member_acl(SECRET)) == [("digest", ident, Permissions.ALL),
                                              ("world", "anyone", Permissions.READ)]
    assert entries(acl.private_acl(SECRET)) == [("digest", ident, Permissions.ALL)]
    assert acl.digest_id(OTHER) != ident


def test_who_may_create():
    member = acl.member_acl(SECRET)
    assert acl.may_create(member, SECRET)
    assert not acl.may_create(member, OTHER)
    assert not acl.may_create(member, None)
    assert acl.may_create(OPEN_ACL_UNSAFE, None) and acl.may_create(OPEN_ACL_UNSAFE, OTHER)
    assert acl.may_create(acl.SHARED_PARENT_ACL, OTHER)


def test_world_writable_and_private():
    assert acl.world_writable(OPEN_ACL_UNSAFE)
    assert acl.world_writable([make_acl("world", "anyone", read=True, delete=True)])
    assert not acl.world_writable(acl.member_acl(SECRET))
    assert not acl.world_writable(acl.private_acl(SECRET))
    assert acl.is_private(acl.private_acl(SECRET))
    assert not acl.is_private(acl.member_acl(SECRET)) and not acl.is_private(OPEN_ACL_UNSAFE)


def test_wanted_acl_keeps_private_private():
    assert acl.same_acl(acl.wanted_acl(OPEN_ACL_UNSAFE, SECRET), acl.member_acl(SECRET))
    assert acl.same_acl(acl.wanted_acl(acl.member_acl(OTHER), SECRET), acl.member_acl(SECRET))
    assert acl.same_acl(acl.wanted_acl(acl.private_acl(OTHER), SECRET), acl.private_acl(SECRET))


def test_same_acl_ignores_order_only():
    member = acl.member_acl(SECRET)
    assert acl.same_acl(member, list(reversed(member)))
    assert not acl.same_acl(member, acl.private_acl(SECRET))
    assert not acl.same_acl(member, [make_digest_acl("sheep", SECRET.zk_password, read=True),
                                     acl.WORLD_READ])


def test_cli_prints_the_credentials(tmp_path, capsys):
    path = tmp_path / "cluster.secret"
    path.write_text(bytes(range(32)).hex() + "\n")
    assert acl.main(["--secret-file", str(path)]) == 0
    assert capsys.readouterr().out == SECRET.zk_credentials + "\n"
    assert acl.main(["--secret-file", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_who_may_change_the_acls():
    assert acl.may_admin(acl.member_acl(SECRET), [SECRET])
    assert acl.may_admin(acl.private_acl(SECRET), [OTHER, SECRET])
    assert not acl.may_admin(acl.member_acl(SECRET), [OTHER, None])
    assert acl.may_admin(OPEN_ACL_UNSAFE, [None])
    assert not acl.may_admin(acl.SHARED_PARENT_ACL, [SECRET])


def test_the_admin_token_is_private_whatever_acl_it_was_planted_with():
    for found in (OPEN_ACL_UNSAFE, acl.member_acl(OTHER), acl.private_acl(OTHER)):
        assert acl.same_acl(acl.wanted_acl(found, SECRET, "/sheepdog/c/admin_token"),
                            acl.private_acl(SECRET))
    assert acl.same_acl(acl.wanted_acl(OPEN_ACL_UNSAFE, SECRET, "/sheepdog/c/members"),
                        acl.member_acl(SECRET))
