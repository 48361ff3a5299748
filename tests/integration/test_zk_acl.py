"""ZooKeeper ACLs of a cluster's znodes, against a real ZooKeeper (and real sheep).

Anonymous clients may read what operators watch and write nothing under
``/sheepdog/<cluster>``; the cluster's digest identity (from its secret) may write; a
sheep with another secret is refused; ``coordinator.rekey`` moves the tree to a new
secret (and tightens a tree made before ACLs).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.handlers.gevent import SequentialGeventHandler
from kazoo.security import OPEN_ACL_UNSAFE

from common.errors import NotReady
from common.secrets import ClusterSecret
from coordinator import acl
from coordinator.admin_token import AdminToken
from coordinator.attachments import Attachments
from coordinator.catalog import Catalog
from coordinator.cluster import Coordinator
from coordinator.layout import BASE, Layout, vid_name
from coordinator.locks import VdiLocks
from coordinator.rekey import OpenTree, set_tree_acls, tree
from coordinator.ring import Member
from tests.integration.fixtures_cluster import api_json, cluster_factory, collie, poll  # noqa: F401
from tests.integration.fixtures_zk import wait_until, zk_chroot, zk_server  # noqa: F401

SECRET = ClusterSecret(b"s" * 32)
NEW = ClusterSecret(b"n" * 32)
OTHER = ClusterSecret(b"o" * 32)
VID = 0x7C2B25


def member(i: int) -> Member:
    return Member(node_id=f"n{i}", addr="127.0.0.1", port=7000 + i, admin_port=8000 + i,
                  nbd_port=10900 + i, zone="", weight=1, started=1700000000.0 + i)


@pytest.fixture
def clients(zk_server):
    """``connect(secret=None)``: a started kazoo client, anonymous or with the digest of
    ``secret`` (and its member ACL as default); all stopped at teardown."""
    made: list[KazooClient] = []

    def connect(secret: ClusterSecret | None = None, hosts: str | None = None) -> KazooClient:
        client = KazooClient(hosts=hosts or zk_server.hosts, handler=SequentialGeventHandler(),
                             auth_data=acl.auth_data(secret), default_acl=acl.default_acl(secret))
        made.append(client)
        client.start(timeout=15)
        return client

    yield connect
    for client in made:
        client.stop()
        client.close()


@pytest.fixture
def coordinators(zk_server, zk_chroot):
    """``make(i, secret, **kw)``: a Coordinator (not started); all stopped at teardown."""
    made: list[Coordinator] = []

    def make(i: int, secret, **kw) -> Coordinator:
        coord = Coordinator(zk_server.hosts, zk_chroot, member(i), session_timeout_s=4.0,
                            secret=secret, **kw)
        made.append(coord)
        return coord

    yield make
    for coord in made:
        coord.stop()


def acls_of(client, root: str) -> dict[str, list]:
    """The ACL of every znode under ``root``.  ZooKeeper shows a digest id as ``user:x``
    to a client without ADMIN permission: ``client`` must hold the owning secret."""
    return {path: client.get_acls(path)[0] for path in tree(client, root)}


def assert_writes_refused(anon: KazooClient, root: str) -> int:
    """Every create, set and delete an anonymous client tries under ``root`` is refused;
    returns the number of znodes tried."""
    paths = tree(anon, root)
    for path in paths:
        for attempt in (lambda: anon.create(f"{path}/intruder", b"x"),
                        lambda: anon.create(f"{path}/seq-", b"x", sequence=True, ephemeral=True),
                        lambda: anon.set(path, b"{}"),
                        lambda: anon.set_acls(path, OPEN_ACL_UNSAFE)):
            with pytest.raises(NoAuthError):
                attempt()
        if path != root:
            with pytest.raises(NoAuthError):
                anon.delete(path)
    return len(paths)


def test_anonymous_clients_read_and_cannot_write(coordinators, clients, zk_chroot):
    layout = Layout(zk_chroot)
    coord = coordinators(1, SECRET)
    coord.start(timeout_s=15)
    coord.format(copies=1)
    coord.wait_for_epoch(1)
    wait_until(lambda: coord.is_leader, what="leader")
    # what a sheep creates while serving, through its coordinator's client
    Catalog(coord.client, zk_chroot).create(VID, {"name": "test", "size": 1 << 20})
    VdiLocks(coord.client, zk_chroot).acquire(VID, "n1", "10.0.0.9:5000")
    Attachments(coord.client, zk_chroot).attach(VID, "n1", "10.0.0.9:5000")
    Attachments(coord.client, zk_chroot).request_handoff(VID, "n1", "10.0.0.9:5001")
    coord.mark_recovered(1)

    anon = clients()
    # operators watch: the format, members, epochs, catalog, locks
    assert b'"copies":1' in anon.get(layout.cluster_path)[0]
    assert anon.get_children(layout.members) == ["n1"]
    assert b'"node_id":"n1"' in anon.get(layout.member("n1"))[0]
    assert anon.get_children(layout.epochs) == ["0000000001"]
    assert b'"epoch":1' in anon.get(layout.epoch(1))[0]
    assert anon.get_children(layout.vdis) == [vid_name(VID)]
    assert b'"name":"test"' in anon.get(layout.vdi(VID))[0]
    assert b'"client":"10.0.0.9:5000"' in anon.get(layout.lock(VID))[0]

    # every znode of the cluster has the member ACL, whoever (or whichever recipe) made it
    authed = clients(SECRET)
    found = acls_of(authed, layout.root)
    assert {layout.lock(VID), layout.generation(VID), layout.attachments_of(VID),
            layout.handoffs_of(VID), layout.recovery_marker(1, "n1")} <= set(found)
    assert any(p.startswith(layout.leader + "/") for p in found)     # the election contender
    assert [p for p, a in found.items() if not acl.same_acl(a, acl.member_acl(SECRET))] == []
    # /sheepdog is shared: another cluster (another secret) may still add itself
    assert acl.may_create(anon.get_acls(BASE)[0], OTHER)

    # ... and no anonymous write anywhere under the cluster: not one create, set or delete
    assert assert_writes_refused(anon, layout.root) == len(found)
    assert anon.get_children(layout.members) == ["n1"]
    assert anon.exists(layout.lock(VID)) is not None

    # the cluster's identity may write (a second session of the same secret)
    authed.create(f"{layout.members}/probe", b"{}", ephemeral=True)
    authed.delete(f"{layout.members}/probe")
    # the coordinator still works: a second member joins and is in the next epoch
    coordinators(2, SECRET).start(timeout_s=15)
    assert [m["node_id"] for m in coord.wait_for_epoch(2)["members"]] == ["n1", "n2"]


def test_a_sheep_with_another_secret_is_refused_at_start(coordinators, clients, zk_chroot):
    layout = Layout(zk_chroot)
    coordinators(1, SECRET).start(timeout_s=15)
    for secret in (OTHER, None):        # another secret, or none at all (anonymous)
        stranger = coordinators(2, secret)
        with pytest.raises(NotReady) as err:
            stranger.start(timeout_s=15)
        assert acl.REFUSED in err.value.message
        assert stranger.fenced
    assert clients().get_children(layout.members) == ["n1"]


def write_secret(path, secret_hex: str):
    path.write_text(secret_hex + "\n")
    return str(path)


def rekey(zk_server, cluster: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator.rekey", "--zk", zk_server.hosts,
                           "--cluster", cluster, *args], capture_output=True, text=True,
                          timeout=60)


def test_rekey_moves_the_tree_to_a_new_secret(coordinators, clients, zk_server, zk_chroot,
                                              tmp_path):
    layout = Layout(zk_chroot)
    refusals = []
    old = coordinators(1, SECRET, on_refused=lambda: refusals.append(1))
    old.start(timeout_s=15)
    old.format(copies=1)
    old.wait_for_epoch(1)
    wait_until(lambda: old.is_leader, what="leader")
    token = f"{layout.root}/admin_token"
    old.client.create(token, b"t0ken", acl=acl.private_acl(SECRET))
    anon = clients()
    with pytest.raises(NoAuthError):
        anon.get(token)                 # private: not even readable

    old_file = write_secret(tmp_path / "old.secret", (b"s" * 32).hex())
    new_file = write_secret(tmp_path / "new.secret", (b"n" * 32).hex())
    done = rekey(zk_server, zk_chroot, "--old-secret-file", old_file, "--new-secret-file", new_file)
    assert done.returncode == 0, done.stderr
    seen = len(tree(anon, layout.root))
    assert f"cluster {zk_chroot}: {seen} of {seen} znodes set to the ACLs of secret " \
           f"{NEW.fingerprint}" in done.stdout

    after = acls_of(clients(NEW), layout.root)
    assert acl.same_acl(after.pop(token), acl.private_acl(NEW))
    assert [p for p, a in after.items() if not acl.same_acl(a, acl.member_acl(NEW))] == []
    with pytest.raises(NoAuthError):
        clients(SECRET).create(f"{layout.members}/probe", b"{}", ephemeral=True)
    assert clients(NEW).get(token)[0] == b"t0ken"

    # a sheep with the new secret joins; the old-secret leader's next write (the epoch) is
    # refused: it says so once, fences, and does not retry
    fresh = coordinators(2, NEW)
    fresh.start(timeout_s=15)
    wait_until(lambda: refusals, what="the old-secret leader refused")
    assert old.fenced
    old.stop()
    assert [m["node_id"] for m in fresh.wait_for_epoch(2)["members"]] == ["n2"]
    assert refusals == [1]

    # a rekey with a wrong old secret changes nothing, not even what it could change
    scratch = clients(NEW).create(f"{layout.root}/scratch", acl=OPEN_ACL_UNSAFE)
    third = write_secret(tmp_path / "third.secret", (b"o" * 32).hex())
    wrong = rekey(zk_server, zk_chroot, "--old-secret-file", third, "--new-secret-file", third)
    assert wrong.returncode == 1 and "neither secret owns it" in wrong.stderr
    assert acl.same_acl(clients(NEW).get_acls(layout.root)[0], acl.member_acl(NEW))
    assert acl.same_acl(anon.get_acls(scratch)[0], OPEN_ACL_UNSAFE)


def test_a_world_writable_tree_is_refused_until_tightened(coordinators, clients, zk_chroot):
    layout = Layout(zk_chroot)
    legacy = coordinators(1, None)      # a sheep from before ACLs: everything world-writable
    legacy.start(timeout_s=15)
    legacy.format(copies=1)
    legacy.wait_for_epoch(1)
    assert acl.world_writable(clients().get_acls(layout.epoch(1))[0])
    # anyone could have planted state there (an admin token of their choosing, ...)
    anon = clients()
    anon.create(f"{layout.root}/admin_token", b"planted-by-a-stranger")
    legacy.stop()

    with pytest.raises(OpenTree, match="world-writable.*coordinator.rekey"):
        coordinators(2, SECRET).start(timeout_s=15)

    authed = clients(SECRET)
    seen, changed = set_tree_acls(authed, layout.root, SECRET)
    assert seen >= 12 and changed == seen
    assert set_tree_acls(authed, layout.root, SECRET) == (seen, 0)     # idempotent
    found = acls_of(authed, layout.root)
    # the planted secret is private now (not world-readable), everything else member
    assert acl.same_acl(found.pop(f"{layout.root}/admin_token"), acl.private_acl(SECRET))
    assert [p for p, a in found.items() if not acl.same_acl(a, acl.member_acl(SECRET))] == []
    assert assert_writes_refused(clients(), layout.root) == seen
    coordinators(3, SECRET).start(timeout_s=15)      # a tightened tree is joined


def test_real_sheep_tree_acls_and_a_stranger_sheep(cluster_factory, clients, tmp_path):
    c = cluster_factory(2, copies=1)
    collie(c.sheep[0], "vdi", "create", "vol", "4M")
    layout = Layout(c.cluster)
    secret = acl.read_secret(str(c.keys_dir / "cluster.secret"))
    anon = clients(hosts=c.zk.hosts)
    assert sorted(anon.get_children(layout.members)) == sorted(n.node_id for n in c.sheep)
    assert anon.get_children(layout.epochs)
    assert b'"copies":1' in anon.get(layout.cluster_path)[0]
    vids = anon.get_children(layout.vdis)
    assert len(vids) == 1 and b'"name":"vol"' in anon.get(f"{layout.vdis}/{vids[0]}")[0]

    assert acl.same_acl(anon.get_acls(BASE)[0], acl.SHARED_PARENT_ACL)
    found = acls_of(clients(secret, hosts=c.zk.hosts), layout.root)
    assert [p for p, a in found.items()
            if not acl.same_acl(a, acl.wanted_acl(a, secret))] == []
    for path, acls in found.items():
        if acl.is_private(acls):        # the admin token: sheep only
            with pytest.raises(NoAuthError):
                anon.get(path)
    assert assert_writes_refused(anon, layout.root) == len(found)

    stranger = c.add_node()
    stranger.keys_dir = tmp_path / "stranger-keys"      # a secret of its own
    stranger.start()
    poll(lambda: not stranger.running(), 30, "the stranger sheep exits")
    assert stranger.stop() not in (0, None)
    log = stranger.log_path.read_text()
    assert acl.REFUSED in log, log[-2000:]
    assert stranger.node_id not in anon.get_children(layout.members)
    api_json(c.sheep[0], "/node")       # the cluster is unaffected

    # the tree moves to a new secret under running sheep: the next epoch (sheep 1 leaves)
    # is refused, and sheep 0 says so and exits 1 instead of retrying
    new_file = write_secret(tmp_path / "new.secret", (b"n" * 32).hex())
    done = rekey(c.zk, c.cluster, "--old-secret-file", str(c.keys_dir / "cluster.secret"),
                 "--new-secret-file", new_file)
    assert done.returncode == 0, done.stderr
    c.sheep[1].stop()
    poll(lambda: not c.sheep[0].running(), 30, "sheep 0 exits")
    assert c.sheep[0].stop() == 1
    lines = [line for line in c.sheep[0].log_path.read_text().splitlines() if acl.REFUSED in line]
    assert len(lines) == 1 and "ERROR" in lines[0], lines


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_an_admin_token_others_can_read_is_replaced_by_a_private_one(clients, zk_chroot):
    layout = Layout(zk_chroot)
    authed = clients(SECRET)
    path = f"{layout.root}/admin_token"
    authed.create(path, b"known-to-everyone-0123", acl=acl.member_acl(SECRET), makepath=True)
    token = AdminToken(authed, zk_chroot, None, acl=acl.private_acl(SECRET))
    fresh = token.load()
    assert fresh != "known-to-everyone-0123" and token.current == fresh
    assert acl.same_acl(authed.get_acls(path)[0], acl.private_acl(SECRET))
    with pytest.raises(NoAuthError):
        clients().get(path)
    assert authed.get(path)[0].decode() == fresh
