"""Several sheep in one process: real stores, replicas and gateways, no sockets.

`LocalPeers` stands in for `sheep.peer.client.PeerPool`: a call is encoded and decoded with
the real frame codec (so headers are what the wire carries) and handed to the
target node's `Replica.handle`, as `sheep.peer.server.PeerServer` does; a reply's error
is raised as the same `SheepError` class.  Tests cut links (`down`), hold calls
(`hold`: the call waits until released, like a packet stuck in the network) or run
code when a given op reaches a node (`on`).  Every node has its own `EpochState`,
so a node can lag behind an epoch change.
"""
from __future__ import annotations

import itertools

import gevent
from gevent.event import Event

from common.errors import SheepError, Unavailable
from coordinator.ring import Member, Ring
from sheep.peer import wire
from sheep.recovery.executor import Recovery
from sheep.replication.epoch import EpochState, EpochView
from sheep.replication.gateway import Gateway
from sheep.replication.guard import WriteGuard
from sheep.replication.replica import Replica
from sheep.store.objects import ObjectStore

MiB = 1 << 20


class LocalPeers:
    def __init__(self) -> None:
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.down: set[tuple[str, int]] = set()      # (from node_id, to port) or (None, port)
        self.holds: dict[tuple, Event] = {}           # (to port, op) -> released when set
        self.on: dict[tuple, object] = {}             # (to port, op) -> fn(header), before
        self.after: dict[tuple, object] = {}          # (to port, op) -> fn(header), after
        self.sent: list[tuple[int, str]] = []

    def for_node(self, node_id: str) -> "NodePeers":
        return NodePeers(self, node_id)

    def dispatch(self, src: str, addr: str, port: int, header: dict, payload=b""):
        op = header.get("op")
        self.sent.append((port, op))
        if (src, port) in self.down or (None, port) in self.down:
            raise Unavailable(f"peer {addr}:{port}: link down")
        hook = self.on.get((port, op))
        if hook is not None:
            hook(header)
        held = self.holds.get((port, op))
        if held is not None:
            held.wait()
        raw = wire.encode_frame(header, bytes(payload))
        prefix_len = wire.PREFIX.size
        hlen, plen = wire.parse_prefix(raw[:prefix_len])
        header = wire.parse_header(raw[prefix_len:prefix_len + hlen])
        body = raw[prefix_len + hlen:]
        try:
            reply, data = self.replicas[(addr, port)].handle(header, body)
        except SheepError as exc:
            raise SheepError.from_wire(wire.parse_header(wire.encode_frame(
                exc.to_wire())[prefix_len:])) from None
        after = self.after.get((port, op))
        if after is not None:
            after(header)
        return wire.Frame({"code": 0, **wire.parse_header(
            wire.encode_frame(reply)[prefix_len:])}, bytes(data))


class NodePeers:
    """The PeerPool of one node (knows who is calling, for one-way cuts)."""

    def __init__(self, net: LocalPeers, node_id: str) -> None:
        self.net, self.node_id = net, node_id

    def call(self, addr, port, header, payload=b"", timeout_s=30.0):
        return self.net.dispatch(self.node_id, addr, port, header, payload)

    def start(self, addr, port, header, payload=b""):
        return _Pending(gevent.spawn(self.net.dispatch, self.node_id, addr, port, header,
                                     payload))

    @staticmethod
    def gather(calls, timeout_s):
        gevent.joinall([c.greenlet for c in calls], timeout=timeout_s)

    def drop(self, addr, port, why):
        pass

    def close(self):
        pass


class _Pending:
    """What `PeerPool.start` returns, for the in-process peers."""

    def __init__(self, greenlet) -> None:
        self.greenlet = greenlet

    def get(self, timeout_s=30.0):
        return self.greenlet.get(timeout=timeout_s)

    def result(self, timeout_s):
        if not self.greenlet.ready():
            raise Unavailable(f"no reply in {timeout_s}s")
        return self.greenlet.get()


class Node:
    def __init__(self, member: Member, store: ObjectStore, replica: Replica, gateway: Gateway,
                 epochs: EpochState) -> None:
        self.member, self.store, self.replica, self.gateway, self.epochs = (
            member, store, replica, gateway, epochs)
        self.recovery: Recovery | None = None

    @property
    def node_id(self) -> str:
        return self.member.node_id


class Cluster:
    """``n`` nodes at epoch 1 over ``tmp_path``; ``copies`` per object by default."""

    _ports = itertools.count(9000)

    def __init__(self, tmp_path, n: int = 3, *, io_timeout_s: float = 2.0, min_copies: int = 1,
                 generation_of=lambda vid: 0, recovery: bool = False, catalog=None) -> None:
        self.tmp_path = tmp_path
        self.net = LocalPeers()
        self.io_timeout_s = io_timeout_s
        self.min_copies = min_copies
        self.generation_of = generation_of
        self.nodes: list[Node] = []
        self.gateway_epochs: list[EpochState] = []
        self.catalog = catalog
        for _ in range(n):
            self.add_node(recovery=recovery)
        self.set_epoch(1, self.nodes)

    def add_node(self, recovery: bool = False) -> Node:
        port = next(self._ports)
        m = Member(node_id=f"n{len(self.nodes)}", addr="127.0.0.1", port=port, admin_port=0,
                   nbd_port=0)
        store = ObjectStore(self.tmp_path / m.node_id, 4 * MiB, reserve_bytes=0)
        epochs = EpochState()
        replica = Replica(store, epochs, is_fenced=lambda: False, epoch_wait_s=1.0,
                          generation_of=self.generation_of)
        gateway = Gateway(m.node_id, replica, self.net.for_node(m.node_id), epochs,
                          io_timeout_s=self.io_timeout_s, peer_timeout_s=1.0,
                          min_copies=lambda: self.min_copies)
        self.net.replicas[(m.addr, port)] = replica
        node = Node(m, store, replica, gateway, epochs)
        if recovery:
            node.recovery = Recovery(m.node_id, replica, gateway.call_member, epochs,
                                     self.catalog, parallel=2, io_timeout_s=self.io_timeout_s)
            replica.recovery = node.recovery
        self.nodes.append(node)
        return node

    def gateway_only(self, fenced=lambda: False) -> Gateway:
        """A gateway-only node (``sheep --gateway``): no replica, in no epoch, every
        request to a peer; it follows the epochs delivered to every node."""
        epochs = EpochState()
        if self.nodes and self.nodes[0].epochs.view is not None:
            epochs.update(self.nodes[0].epochs.view)
        gw = Gateway(f"g{len(self.gateway_epochs)}", None, self.net.for_node("g"), epochs,
                     guard=WriteGuard(fenced), io_timeout_s=self.io_timeout_s,
                     peer_timeout_s=1.0, min_copies=lambda: self.min_copies)
        self.gateway_epochs.append(epochs)
        return gw

    def set_epoch(self, epoch: int, members: list[Node], on: list[Node] | None = None) -> None:
        """Epoch ``epoch`` with ``members``, delivered to ``on`` (default: every node and
        every gateway-only node)."""
        view = EpochView(epoch, tuple(sorted((n.member for n in members),
                                             key=lambda m: m.node_id)),
                         Ring([n.member for n in members]))
        for node in on if on is not None else self.nodes:
            node.epochs.update(view)
        if on is None:
            for epochs in self.gateway_epochs:
                epochs.update(view)

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def placed(self, oid: int, copies: int) -> list[Node]:
        view = self.nodes[0].epochs.view
        return [self.node(m.node_id) for m in view.ring.replicas(oid, copies)]

    def copies_of(self, oid: int) -> dict[str, bytes]:
        """node id -> whole bytes of every copy of ``oid`` (verified reads)."""
        out = {}
        for n in self.nodes:
            if n.store.exists(oid):
                out[n.node_id] = n.store.read_whole(oid)[1]
        return out


def spawn_and_wait(fn, *args):
    g = gevent.spawn(fn, *args)
    g.join()
    if g.exception is not None:
        raise g.exception
    return g.value
