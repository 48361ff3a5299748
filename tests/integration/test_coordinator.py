"""Coordinator, catalog and locks against a real ZooKeeper (one server per module, one cluster per test).

The coordinators of a "cluster" all live in this process as gevent greenlets over kazoo's
gevent handler; nothing is monkey patched.  They share one cluster secret, so every znode
has the cluster's digest ACL (as with real sheep); the plain clients authenticate with it.
"""
from __future__ import annotations

import subprocess
import time

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.gevent import SequentialGeventHandler
from kazoo.protocol.connection import _CONNECTION_DROP

from common.errors import AlreadyExists, InvalidRequest, Locked, NotFound, NotReady, Unavailable
from common.secrets import ClusterSecret
from coordinator.acl import auth_data, default_acl
from coordinator.catalog import Catalog
from coordinator.cluster import Coordinator
from coordinator.locks import VdiLocks
from coordinator.ring import Member
from sheepdog_local.zookeeper import ZooKeeperServer, four_letter_word, free_port, pid_alive
from tests.integration.fixtures_zk import wait_until, zk_chroot, zk_server  # noqa: F401

SESSION_TIMEOUT_S = 4.0
SECRET = ClusterSecret(b"c" * 32)


def authed_client(hosts: str) -> KazooClient:
    """A kazoo client (gevent handler, not started) with the cluster's digest identity."""
    return KazooClient(hosts=hosts, handler=SequentialGeventHandler(), timeout=SESSION_TIMEOUT_S,
                       auth_data=auth_data(SECRET), default_acl=default_acl(SECRET))


def make_member(i: int) -> Member:
    return Member(node_id=f"n{i}", addr="127.0.0.1", port=7000 + i, admin_port=8000 + i,
                  nbd_port=10900 + i, zone="", weight=1, started=1700000000.0 + i)


class Node:
    """A Coordinator plus the record of what its callbacks saw."""

    def __init__(self, hosts, cluster, i):
        self.epochs: list[dict] = []
        self.fences = 0
        self.unfences = 0
        self.coord = Coordinator(hosts, cluster, make_member(i), session_timeout_s=SESSION_TIMEOUT_S,
                                 on_epoch=self.epochs.append, on_fence=self._fenced,
                                 on_unfence=self._unfenced, secret=SECRET)

    def _fenced(self):
        self.fences += 1

    def _unfenced(self):
        self.unfences += 1

    def seen(self) -> list[int]:
        return [e["epoch"] for e in self.epochs]


@pytest.fixture
def cluster(zk_server, zk_chroot):
    """Factory of started nodes in a fresh cluster; every node is stopped at teardown."""
    started: list[Node] = []

    def start(i: int) -> Node:
        node = Node(zk_server.hosts, zk_chroot, i)
        node.coord.start(timeout_s=15)
        started.append(node)
        return node

    yield start
    for node in started:
        node.coord.stop()


@pytest.fixture
def zk(zk_server, zk_chroot):
    """A plain kazoo client (gevent handler, the cluster's identity) for the catalog and lock tests."""
    client = authed_client(zk_server.hosts)
    client.start(timeout=15)
    yield client
    client.stop()
    client.close()


def ids(epoch: dict) -> list[str]:
    return [m["node_id"] for m in epoch["members"]]


def the_leader(nodes: list[Node]) -> Node | None:
    leaders = [n for n in nodes if n.coord.is_leader]
    return leaders[0] if len(leaders) == 1 else None


def test_membership_election_format_and_epochs(cluster):
    # three nodes join an unformatted cluster
    nodes = [cluster(i) for i in (1, 2, 3)]
    a = nodes[0].coord
    assert [m.node_id for m in a.members()] == ["n1", "n2", "n3"]
    assert a.members()[1] == make_member(2)
    assert a.cluster_format() is None
    assert a.latest_epoch() is None
    assert all(not n.coord.fenced for n in nodes)

    # exactly one leader, and everyone agrees who it is
    leader = wait_until(lambda: the_leader(nodes), what="one leader")
    assert {n.coord.leader() for n in nodes} == {leader.coord.node_id}

    # format: the leader turns the live members into epoch 1
    fmt = a.format(copies=3)
    assert fmt["copies"] == 3 and fmt["min_copies"] == 1 and fmt["block_size_shift"] == 22
    assert fmt["state"] == "running"
    for n in nodes:
        assert ids(n.coord.wait_for_epoch(1, timeout_s=10)) == ["n1", "n2", "n3"]
    assert nodes[1].coord.cluster_format() == fmt
    assert a.latest_epoch()["members"][0] == make_member(1).to_dict()

    # formatting twice, or with bad parameters, is refused
    with pytest.raises(AlreadyExists):
        nodes[2].coord.format(copies=2)
    for bad in ({"copies": 0}, {"copies": 32}, {"copies": 3, "block_size_shift": 19},
                {"copies": 3, "block_size_shift": 27}, {"copies": 2, "min_copies": 3}):
        with pytest.raises(InvalidRequest):
            a.format(**bad)

    # stop a follower: every remaining node sees epoch 2 with two members
    victim = next(n for n in nodes if n is not leader)
    survivors = [n for n in nodes if n is not victim]
    victim.coord.stop()
    assert victim.coord.fenced
    for n in survivors:
        assert ids(n.coord.wait_for_epoch(2, timeout_s=10)) == sorted(
            m.coord.node_id for m in survivors)
    assert survivors[0].epochs == survivors[1].epochs
    assert survivors[0].seen() == [1, 2]
    assert victim.seen() == [1]

    # start it again with the same node id: epoch 3; it is told the newest epoch at start
    back = cluster(int(victim.coord.node_id[1:]))
    for n in survivors + [back]:
        assert ids(n.coord.wait_for_epoch(3, timeout_s=10)) == ["n1", "n2", "n3"]
    assert back.seen()[0] in (2, 3) and back.seen()[-1] == 3
    assert survivors[0].seen() == [1, 2, 3]

    # the leader dies: another node leads and still makes epochs
    leader.coord.stop()
    rest = [n for n in survivors + [back] if n is not leader]
    new_leader = wait_until(lambda: the_leader(rest), what="a new leader")
    assert new_leader is not leader
    for n in rest:
        assert ids(n.coord.wait_for_epoch(4, timeout_s=10)) == sorted(m.coord.node_id for m in rest)
    assert wait_until(lambda: a.leader() if a is not leader.coord else rest[0].coord.leader(),
                      what="leader znode") == new_leader.coord.node_id

    # the history is complete and ascending
    history = rest[0].coord.epochs()
    assert [e["epoch"] for e in history] == [1, 2, 3, 4]
    assert [len(e["members"]) for e in history] == [3, 2, 3, 2]
    assert all(n.seen() == sorted(set(n.seen())) for n in nodes + [back])


def test_cluster_state_and_shutdown_freezes_epochs(cluster):
    n1, n2 = cluster(1), cluster(2)
    with pytest.raises(NotReady):
        n1.coord.set_cluster_state("shutdown")
    n1.coord.format(copies=1, block_size_shift=20)
    n1.coord.wait_for_epoch(1)
    with pytest.raises(InvalidRequest):
        n1.coord.set_cluster_state("exploded")

    # an orderly shutdown: members leave, but no shrinking epochs are recorded
    assert n1.coord.set_cluster_state("shutdown")["state"] == "shutdown"
    assert n2.coord.cluster_format()["state"] == "shutdown"
    assert n2.coord.cluster_format()["block_size_shift"] == 20
    n2.coord.stop()
    wait_until(lambda: [m.node_id for m in n1.coord.members()] == ["n1"], what="n2 gone")

    # back to running: the leader catches up with one epoch made after the state change
    resumed = time.time()
    n1.coord.set_cluster_state("running")
    epoch = n1.coord.wait_for_epoch(2)
    assert ids(epoch) == ["n1"] and epoch["created"] >= resumed
    assert [e["epoch"] for e in n1.coord.epochs()] == [1, 2]


def test_catalog(zk, zk_chroot):
    cat = Catalog(zk, zk_chroot)
    assert cat.list() == []
    with pytest.raises(NotFound):
        cat.get(0x7C2B25)

    # create, read back, list
    cat.create(0x7C2B25, {"name": "test", "size": 1 << 30, "snap_id": 1})
    assert cat.get(0x7C2B25) == {"name": "test", "size": 1 << 30, "snap_id": 1, "vid": 0x7C2B25}
    cat.create(0x000001, {"name": "other"})
    assert [e["vid"] for e in cat.list()] == [1, 0x7C2B25]

    # the vid allocation race: the second create of the same vid loses
    with pytest.raises(AlreadyExists):
        cat.create(0x7C2B25, {"name": "test-collision"})

    # optimistic update: a stale version is a conflict (reported as AlreadyExists)
    entry, version = cat.get_with_version(0x7C2B25)
    new_version = cat.update(0x7C2B25, {**entry, "size": 2 << 30}, expected_version=version)
    assert new_version == version + 1
    with pytest.raises(AlreadyExists) as err:
        cat.update(0x7C2B25, {**entry, "size": 3 << 30}, expected_version=version)
    assert err.value.data["conflict"] is True
    assert cat.get(0x7C2B25)["size"] == 2 << 30
    cat.update(0x7C2B25, {**entry, "size": 4 << 30})          # unconditional
    assert cat.get(0x7C2B25)["size"] == 4 << 30
    with pytest.raises(NotFound):
        cat.update(0x123456, {"name": "ghost"})

    # delete
    cat.delete(0x7C2B25)
    with pytest.raises(NotFound):
        cat.get(0x7C2B25)
    with pytest.raises(NotFound):
        cat.delete(0x7C2B25)
    assert [e["name"] for e in cat.list()] == ["other"]


def test_locks(zk, zk_server, zk_chroot):
    locks = VdiLocks(zk, zk_chroot)
    assert locks.list() == []

    # node n1 attaches a client to the VDI
    value = locks.acquire(0x7C2B25, "n1", "10.0.0.9:51234")
    assert value["node_id"] == "n1" and value["client"] == "10.0.0.9:51234"

    # a second attacher (from another node and session) is refused, with the holder named
    other = authed_client(zk_server.hosts)
    other.start(timeout=15)
    try:
        with pytest.raises(Locked) as err:
            VdiLocks(other, zk_chroot).acquire(0x7C2B25, "n2", "10.0.0.7:40000")
        assert "VDI 7c2b25 is locked by node n1 for client 10.0.0.9:51234 since" in err.value.message
        assert err.value.data["holder"] == "n1"
        # ... and cannot release what it does not hold
        assert VdiLocks(other, zk_chroot).release(0x7C2B25, "n2") is False
    finally:
        other.stop()
        other.close()

    # release and re-acquire
    assert locks.release(0x7C2B25, "n1") is True
    assert locks.release(0x7C2B25, "n1") is False
    locks.acquire(0x7C2B25, "n1", "10.0.0.9:51234")
    locks.acquire(0x000abc, "n1", "10.0.0.9:51235")
    assert [(v["vid"], v["node_id"]) for v in locks.list()] == [(0xABC, "n1"), (0x7C2B25, "n1")]

    # the holder watches its lock; an operator breaks it; the watch fires once
    gone = []
    locks.watch(0x7C2B25, gone.append)
    broken = locks.break_lock(0x7C2B25)
    assert broken["client"] == "10.0.0.9:51234"
    wait_until(lambda: gone == [0x7C2B25], what="lock watch")
    with pytest.raises(NotFound):
        locks.break_lock(0x7C2B25)
    assert [v["vid"] for v in locks.list()] == [0xABC]
    # re-locking the VDI later does not fire the old watch again
    locks.acquire(0x7C2B25, "n3", "10.0.0.3:1")
    locks.release(0x7C2B25, "n3")
    assert gone == [0x7C2B25]


def test_lock_generations_fence_every_holder(zk, zk_chroot):
    locks = VdiLocks(zk, zk_chroot)
    vid = 0x42
    assert locks.generation(vid) == 0
    # every acquisition bumps the generation; the value says whether the last one let go
    # cleanly (nothing for the next holder to resynchronise)
    first = locks.acquire(vid, "n1", "c1")
    assert (first["generation"], first["previous_clean"]) == (1, True)
    assert locks.release(vid, "n1", clean=False, lock=first)
    second = locks.acquire(vid, "n2", "c2")
    assert (second["generation"], second["previous_clean"]) == (2, False)
    # a break bumps it too; the broken holder's release (one transaction) then fails and
    # leaves the next holder's lock alone
    broken = locks.break_lock(vid)
    assert broken["new_generation"] == 3 and locks.generation(vid) == 3
    third = locks.acquire(vid, "n3", "c3")
    assert third["generation"] == 4 and not third["previous_clean"]
    assert not locks.release(vid, "n2", lock=second)
    assert locks.get(vid)["node_id"] == "n3"
    assert locks.release(vid, "n3", clean=True, lock=third)
    assert locks.get(vid) is None
    fourth = locks.acquire(vid, "n1", "c1")
    assert (fourth["generation"], fourth["previous_clean"]) == (5, True)


def expire_session(client: KazooClient, hosts: str) -> int:
    """Expire ``client``'s session the way kazoo's harness does: attach a second client to the
    same session and close it.  Returns the old session id."""
    session_id, password = client.client_id
    thief = KazooClient(hosts=hosts, client_id=(session_id, password), handler=SequentialGeventHandler())
    thief.start(timeout=15)
    thief.stop()
    thief.close()
    return session_id


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_session_expiry_fences_then_rejoins(cluster, zk_server, role):
    nodes = [cluster(i) for i in (1, 2, 3)]
    nodes[0].coord.format(copies=2)
    for n in nodes:
        n.coord.wait_for_epoch(1, timeout_s=10)
    leader = wait_until(lambda: the_leader(nodes), what="one leader")
    victim = leader if role == "leader" else next(n for n in nodes if n is not leader)
    others = [n for n in nodes if n is not victim]
    member_path = victim.coord.layout.member(victim.coord.node_id)

    # expire the victim's session behind its back
    old_session = expire_session(victim.coord.client, zk_server.hosts)

    # it fences at once, then re-registers with a new session and unfences
    wait_until(lambda: victim.fences >= 1, what="fence callback")
    wait_until(lambda: victim.unfences >= 1 and not victim.coord.fenced, what="unfence")
    stat = others[0].coord.client.exists(member_path)
    assert stat is not None and stat.ephemeralOwner == victim.coord.client.client_id[0] != old_session
    assert victim.coord.node_id in [m.node_id for m in others[0].coord.members()]

    # a lost leader steps down and someone else leads
    if role == "leader":
        wait_until(lambda: the_leader(nodes) is not None and the_leader(nodes) is not victim,
                   what="a new leader")

    # the cluster settles on all three members again (an epoch without the victim may or
    # may not appear in between: the leader's batching absorbs a re-registration within
    # BATCH_S); the victim follows and contends again
    wait_until(lambda: ids(others[0].coord.latest_epoch()) == ["n1", "n2", "n3"], what="epoch with all")
    latest = others[0].coord.latest_epoch()["epoch"]
    for n in nodes:
        n.coord.wait_for_epoch(latest, timeout_s=10)
    election = victim.coord.client.Election(victim.coord.layout.leader)
    wait_until(lambda: sorted(election.contenders()) == ["n1", "n2", "n3"], what="victim contending again")
    assert victim.seen() == sorted(set(victim.seen()))
    assert all(n.seen()[-1] == latest for n in nodes)


def test_connection_drop_with_session_kept_fences_and_unfences(cluster):
    nodes = [cluster(i) for i in (1, 2)]
    nodes[0].coord.format(copies=1)
    for n in nodes:
        n.coord.wait_for_epoch(1)
    victim = nodes[1]
    session = victim.coord.client.client_id[0]

    # drop the TCP connection (kazoo's own test hook); the session survives the reconnect
    victim.coord.client._call(_CONNECTION_DROP, victim.coord.client.handler.async_result())
    wait_until(lambda: victim.fences == 1, what="fence")
    wait_until(lambda: victim.unfences == 1 and not victim.coord.fenced, what="unfence")
    assert victim.coord.client.client_id[0] == session
    assert nodes[0].coord.client.exists(victim.coord.layout.member("n2")).ephemeralOwner == session
    # same session, same members: no new epoch
    assert [e["epoch"] for e in nodes[0].coord.epochs()] == [1]


def test_zookeeper_server_lifecycle(tmp_path):
    server = ZooKeeperServer(tmp_path / "zk", free_port(), fast=True)
    with server:
        pid = server.pid
        assert pid_alive(pid)
        assert "Mode: standalone" in four_letter_word("127.0.0.1", server.port, "srvr")
        assert server.hosts == f"127.0.0.1:{server.port}"
        assert "forceSync=no" in " ".join(server.command())
    assert server.pid is None
    assert not pid_alive(pid)
    assert str(pid) not in subprocess.run(["pgrep", "-f", "QuorumPeerMain"], capture_output=True,
                                          text=True).stdout.split()
    server.stop()       # idempotent


def test_zookeeper_server_refuses_a_port_in_use(tmp_path):
    port = free_port()
    with ZooKeeperServer(tmp_path / "a", port, fast=True):
        clash = ZooKeeperServer(tmp_path / "b", port, fast=True)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="in use"):
            clash.start(timeout_s=10)
        assert time.monotonic() - t0 < 10
        assert clash.pid is None


def test_start_refuses_a_duplicate_node_id_and_an_unreachable_zookeeper(cluster, zk_server, zk_chroot):
    first = cluster(1)

    # the same node id from another live session: waited for, then refused
    twin = Coordinator(zk_server.hosts, zk_chroot, make_member(1), session_timeout_s=SESSION_TIMEOUT_S,
                       secret=SECRET)
    with pytest.raises(AlreadyExists, match="n1"):
        twin.start(timeout_s=1)
    twin.stop()     # harmless after a failed start
    assert [m.node_id for m in first.coord.members()] == ["n1"]

    # no ZooKeeper on the port: Unavailable, not a hang
    lonely = Coordinator(f"127.0.0.1:{free_port()}", zk_chroot, make_member(9), session_timeout_s=2,
                         secret=SECRET)
    with pytest.raises(Unavailable):
        lonely.start(timeout_s=1)
    assert lonely.fenced


def test_the_complete_epoch_is_the_newest_every_member_marked(cluster):
    nodes = [cluster(i) for i in (1, 2)]
    nodes[0].coord.format(copies=2)
    for n in nodes:
        n.coord.wait_for_epoch(1, timeout_s=10)
    third = cluster(3)
    for n in (*nodes, third):
        n.coord.wait_for_epoch(2, timeout_s=10)
    coord = nodes[0].coord
    assert coord.complete_epoch(before=3) is None          # no markers at all
    nodes[0].coord.mark_recovered(1)
    assert coord.complete_epoch(before=3) is None          # n2 has not marked epoch 1
    nodes[1].coord.mark_recovered(1)
    assert coord.complete_epoch(before=3) == 1
    for n in nodes:
        n.coord.mark_recovered(2)
    assert coord.complete_epoch(before=3) == 1             # epoch 2 also needs n3
    third.coord.mark_recovered(2)
    assert coord.complete_epoch(before=3) == 2
    assert coord.complete_epoch(before=2) == 1             # only epochs older than asked
    assert ids(coord.epoch(2)) == ["n1", "n2", "n3"] and coord.epoch(9) is None
