"""The composition root of one storage daemon: `Sheep` wires the parts together.

Store, coordinator, epochs, peers, replica, gateway, recovery, scrub, VDI service and
the peer/admin/NBD servers; the order of start and stop is the contract here (the
store and the peer server are up before the node registers).  The entry point that
runs it is `sheep.daemon.main`.
"""
from __future__ import annotations

import logging
import time

import gevent
from gevent import monkey
from gevent.event import Event

from common.errors import InvalidRequest, NotReady, StoreMismatch
from common.secrets import ClusterSecret, SecretError
from coordinator.acl import private_acl
from coordinator.admin_token import AdminToken
from coordinator.attachments import Attachments
from coordinator.catalog import Catalog
from coordinator.cluster import Coordinator
from coordinator.locks import VdiLocks
from coordinator.ring import Member
from nbd_frontend.server import NbdServer
from sheep.admin.app import AdminApp, AdminServer
from sheep.admin.auth import AdminPolicy, admin_names
from sheep.admin.metrics import StageMetrics
from sheep.admin.routes import build_router
from sheep.daemon.config import SheepConfig
from sheep.daemon.lifecycle import Lifecycle
from sheep.peer.client import PeerPool
from sheep.peer.server import PeerServer
from sheep.recovery.check import Checker
from sheep.recovery.executor import Recovery
from sheep.recovery.scrub import Scrubber
from sheep.recovery.history import HistoryLoader
from sheep.recovery.stale import StaleJanitor
from sheep.replication.epoch import EpochState, EpochView
from sheep.replication.gateway import Gateway
from sheep.replication.guard import WriteGuard
from sheep.replication.replica import Replica
from sheep.store import objfile
from sheep.store.objects import ObjectStore
from sheep.store.storedir import StoreDir
from sheep.volumes.handoff import HandoffPolicy
from sheep.volumes.backup import BackupService
from sheep.volumes.nbd_exports import VdiExportProvider
from sheep.volumes.service import VdiService
from sheep.volumes.snapshots import MAX_HOPS, SnapshotService
from vdi import objects

log = logging.getLogger("sheep")

MAX_BLOCK_SIZE_SHIFT = 26
SNAPSHOT_OP = "vdi_snapshot"           # a snapshot forwarded to the VDI's lock holder
SNAPSHOT_FORWARD_TIMEOUT_S = 120.0


class Sheep:
    """One storage daemon."""

    def __init__(self, config: SheepConfig) -> None:
        self.config = config
        # a gateway's directory (optional) only keeps its node id
        self.storedir = (StoreDir.open(config.dir, config.default_node_id)
                         if config.dir is not None else None)
        self.node_id = self.storedir.node_id if self.storedir else config.default_node_id
        self.stopped = Event()
        self.epochs = EpochState()
        self.stage_metrics = StageMetrics(self.node_id)
        self.secret = _load_secret(config.secret_path)
        self.peers = PeerPool(timing=self.stage_metrics.peer, key=self.secret.peer_key)
        self.exit_code = 0
        self._fmt: dict | None = None
        self.store: ObjectStore | None = None
        self.peer_server = PeerServer(self._handle_peer, config.bind_addr, config.port,
                                      key=self.secret.peer_key,
                                      max_connections=config.peer_max_connections)
        policy = AdminPolicy(lambda: self.admin_token.current, admin_names(config),
                             max_body=config.admin_max_body)
        self.admin_server = AdminServer(AdminApp(build_router(self), policy),
                                        config.listen_admin, config.admin_port,
                                        workers=config.admin_workers,
                                        head_timeout_s=config.admin_head_timeout_s)
        self.member = Member(node_id=self.node_id, addr=config.addr, port=config.port,
                             admin_port=config.admin_port, nbd_port=config.nbd_port,
                             zone=config.zone, weight=config.weight, started=time.time())
        self.lifecycle = Lifecycle(self.node_id, self.member.started,
                                   stop=lambda: gevent.spawn(self.stop))
        self.coordinator = Coordinator(config.zk_hosts, config.cluster, self.member,
                                       session_timeout_s=config.session_timeout_s,
                                       on_epoch=self._on_epoch, on_fence=self._on_fence,
                                       on_unfence=self._on_unfence,
                                       on_cluster=self.lifecycle.on_cluster,
                                       secret=self.secret, on_refused=self._zk_refused)
        self.catalog = Catalog(self.coordinator.client, config.cluster)
        self.locks = VdiLocks(self.coordinator.client, config.cluster)
        self.attachments = Attachments(self.coordinator.client, config.cluster)
        self.admin_token = AdminToken(self.coordinator.client, config.cluster,
                                      config.admin_token_path, acl=private_acl(self.secret))
        self.replica: Replica | None = None
        self.gateway: Gateway | None = None
        self.recovery: Recovery | None = None
        self.checker: Checker | None = None
        self.scrubber: Scrubber | None = None
        self.vdis: VdiService | None = None
        self.exports: VdiExportProvider | None = None
        self.snapshots: SnapshotService | None = None
        self.backups: BackupService | None = None
        self.nbd = None
        self._session_seen: int | None = None
        self.stage_metrics.watch(self)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        # Before this node registers: the store's identity is checked (a store of another
        # cluster must never become a member: no epoch, no recovery against it), and the
        # store and the peer server are up (the leader may put us in an epoch at once, and
        # every member must answer from then on).
        try:
            self.coordinator.start(admit=self._admit_and_open)
            self.admin_token.load()
        except BaseException:
            self._stop_parts()
            raise
        self.admin_server.start()
        self._session_seen = self.coordinator.session_generation
        self.nbd.start()
        gevent.spawn(self._discard_restore_leftovers, True)
        if self.epochs.view is not None and self.recovery is not None:
            self.recovery.kick()
        log.info("node=%s cluster=%s role=%s peer=%s:%d admin=%d nbd=%d started", self.node_id,
                 self.config.cluster, self.member.role, self.config.addr, self.config.port,
                 self.config.admin_port, self.config.nbd_port)

    def _discard_restore_leftovers(self, at_start: bool = False) -> None:
        """The hidden entries of restores that cannot finish: of sheep that are no members,
        and at start this sheep's own (`BackupService.discard_orphans`)."""
        try:
            if self.backups.discard_orphans(at_start=at_start):
                self.vdis.reclaimer.kick()
        except Exception as exc:        # not formatted, ZooKeeper away: the next epoch
            log.info("node=%s restore leftovers not discarded: %s", self.node_id, exc)

    def _admit(self, fmt: dict | None) -> None:
        """May this store join the cluster whose ``/cluster`` value is ``fmt``?  Raises
        StoreMismatch when it belongs to another one (before registering)."""
        _off_loop(self.storedir.check_object_format, objfile.FORMAT)
        if fmt:
            self._bind(fmt)
        elif self.storedir.cluster_name is not None:
            raise StoreMismatch(f"store {self.config.dir} belongs to cluster "
                                f"'{self.storedir.cluster_name}', but cluster "
                                f"'{self.config.cluster}' is not formatted")

    def _open_store(self) -> None:
        max_bytes = max(1 << MAX_BLOCK_SIZE_SHIFT, objects.inode_object_bytes(objects.MAX_INDEXES))
        os_lock = monkey.get_original("threading", "Lock")  # for the store's OS threads
        self.store = ObjectStore(self.config.dir, max_bytes, self.config.reserve_bytes,
                                 lock_factory=os_lock)
        self.store.fsync_timing = self.stage_metrics.fsync.labels()
        coord = self.coordinator
        self.replica = Replica(self.store, self.epochs, is_fenced=lambda: coord.fenced,
                               wait_unfenced=coord.wait_unfenced,
                               session_generation=lambda: coord.session_generation,
                               generation_of=self.locks.generation,
                               timing=self.stage_metrics.store)
        self.replica.on_store_failed = self._store_failed
        self.gateway = self._gateway(self.replica, self.replica.guard)
        self.replica.write_block = self.lifecycle.write_refusal
        self._open_frontends()
        janitor = StaleJanitor(self.store, self.coordinator, self.replica._io)
        self.recovery = Recovery(self.node_id, self.replica, self.gateway.call_member,
                                 self.epochs, self.vdis.liveness, janitor=janitor,
                                 state_store=self.storedir,
                                 history=HistoryLoader(self.node_id, self.coordinator),
                                 io_timeout_s=self.config.io_timeout_s)
        self.replica.recovery = self.recovery
        self.lifecycle.recovery = self.recovery
        self.lifecycle.apply_recovery()
        self.scrubber = Scrubber(self.store, self.replica._io, self.gateway, self.epochs,
                                 self.vdis, bytes_per_s=self.config.scrub_bytes_per_s,
                                 interval_s=self.config.scrub_interval_s)
        self.recovery.start()
        self.scrubber.start()

    def _open_gateway(self) -> None:
        """A gateway-only node: the same gateway, VDI service and NBD server as a storage
        node, with no store, replica, recovery or scrub (it is in no placement)."""
        coord = self.coordinator
        guard = WriteGuard(lambda: coord.fenced, wait_unfenced=coord.wait_unfenced,
                           session_generation=lambda: coord.session_generation)
        guard.write_block = self.lifecycle.write_refusal
        self.gateway = self._gateway(None, guard)
        self._open_frontends()

    def _gateway(self, local: Replica | None, guard: WriteGuard) -> Gateway:
        return Gateway(self.node_id, local, self.peers, self.epochs, guard=guard,
                       io_timeout_s=self.config.io_timeout_s,
                       peer_timeout_s=self.config.peer_timeout_s,
                       min_copies=self._min_copies, timing=self.stage_metrics.gateway)

    def _open_frontends(self) -> None:
        coord = self.coordinator
        self.vdis = VdiService(self.catalog, self.gateway, self.cluster_format,
                               locks=self.locks, attachments=self.attachments,
                               node_id=self.node_id, session=lambda: coord.session_generation)
        self.checker = Checker(self.node_id, self.gateway)
        self.exports = VdiExportProvider(
            self.vdis, self.locks, self.node_id, self.attachments,
            HandoffPolicy(self.config.handoff_idle_s, self.config.handoff_timeout_s))
        cfg = self.config
        self.nbd = NbdServer(self.exports, cfg.nbd_bind_addr, cfg.nbd_port,
                             timing=self.stage_metrics.nbd, tls_dir=cfg.nbd_tls_dir,
                             export_timing=self.stage_metrics.vdi,
                             max_connections=cfg.nbd_max_connections,
                             queue_bytes=cfg.nbd_queue_bytes,
                             handshake_timeout_s=cfg.nbd_handshake_timeout_s,
                             max_options=cfg.nbd_max_options,
                             send_timeout_s=cfg.io_timeout_s)
        self.exports.server = self.nbd
        self.snapshots = SnapshotService(self.vdis, self.locks, self.exports, coord.members,
                                         self.node_id, forward=self._forward_snapshot)
        self.backups = BackupService(self.vdis, self.node_id, members=coord.members)

    def _admit_and_open(self, fmt: dict | None) -> None:
        if self.config.gateway:
            self._fmt = fmt or None
            self._open_gateway()
        else:
            self._admit(fmt)
            self._open_store()
        self.peer_server.start()

    def _min_copies(self) -> int:
        return int((self._fmt or {}).get("min_copies") or 1)

    def _store_failed(self, why: str) -> None:
        """The store lost writes it had acknowledged (a failed fsync): leave the cluster,
        so the other replicas are the ones read and the leader re-replicates them."""
        log.critical("node=%s store failed (%s): leaving the cluster", self.node_id, why)
        self.exit_code = 1
        self.stop()

    def _zk_refused(self) -> None:
        """ZooKeeper's ACLs no longer admit this sheep's secret (the coordinator logged
        why): leave, exit non-zero."""
        self.exit_code = 1
        self.stop()

    def _bind(self, fmt: dict) -> None:
        """Tie the store directory to this cluster's format (refuse a foreign one)."""
        _off_loop(self.storedir.bind, self.config.cluster, fmt["created"])
        self._fmt = fmt

    def cluster_format(self) -> dict | None:
        if self._fmt is None:
            fmt = self.coordinator.cluster_format()
            if fmt and self.config.gateway:
                self._fmt = fmt             # no store to tie to it
            elif fmt:
                try:
                    self._bind(fmt)
                except StoreMismatch as exc:
                    log.error("node=%s %s; stopping", self.node_id, exc.message)
                    gevent.spawn(self.stop)
                    raise
        return self._fmt

    def stop(self) -> None:
        log.info("node=%s stopping", self.node_id)
        for part in (self.nbd, self.admin_server):
            if part is not None:
                part.stop()
        self._stop_parts()
        self.stopped.set()

    def _stop_parts(self) -> None:
        if self.recovery is not None:
            self.recovery.stop()
        if self.scrubber is not None:
            self.scrubber.stop()
        self.coordinator.stop()
        self.peer_server.stop()
        self.peers.close()
        if self.store is not None:
            if self.store.failed is None:
                self.store.flush()
            self.store.close()

    # -- callbacks -------------------------------------------------------------
    def _on_epoch(self, epoch: dict) -> None:
        fmt = self.cluster_format()
        if fmt is None:
            return
        view = EpochView.from_dict(epoch)
        old = self.epochs.view
        if self.store is not None:
            _off_loop(self.storedir.set, "epoch", view.epoch)   # an fsync
        if not self.epochs.update(view):
            return
        if old is not None:
            current = {(m.addr, m.port) for m in view.members}
            for m in old.members:
                if (m.addr, m.port) not in current:
                    self.peers.drop(m.addr, m.port, f"{m.node_id} left at epoch {view.epoch}")
        if self.recovery is not None:
            self.recovery.kick()
        if self.backups is not None:
            gevent.spawn(self._discard_restore_leftovers)

    def _on_fence(self) -> None:
        log.warning("node=%s fenced: ZooKeeper session suspended or lost; refusing writes",
                    self.node_id)
        if self.replica is not None:
            # generation broadcasts may be missed while the session is in doubt: look
            # them up again before the next mutation of each VDI
            self.replica.generations.clear()

    def _on_unfence(self) -> None:
        log.warning("node=%s unfenced: registered again", self.node_id)
        session = self.coordinator.session_generation
        if session != self._session_seen:
            self._session_seen = session
            if self.exports is not None:
                self.exports.reattach()     # the old session's attachments are gone

    def _forward_snapshot(self, member, request: dict) -> dict:
        """Ask ``member`` (the VDI's lock holder) to take a snapshot, over the peer protocol."""
        reply = self.peers.call(member.addr, member.port, {"op": SNAPSHOT_OP, **request},
                                timeout_s=SNAPSHOT_FORWARD_TIMEOUT_S)
        return reply.header["result"]

    def _handle_peer(self, header: dict, payload):
        if header.get("op") == SNAPSHOT_OP:
            if self.snapshots is None:
                raise NotReady(f"node {self.node_id} is not serving VDIs yet")
            hops = header.get("hops")
            if not isinstance(hops, int) or not 0 < hops <= MAX_HOPS:
                raise InvalidRequest("vdi_snapshot needs hops in 1..MAX_HOPS")
            return {"result": self.snapshots.snapshot(header.get("name"), header.get("tag"),
                                                      hops)}, b""
        if self.replica is None:
            if self.config.gateway:
                return self._gateway_peer_op(header)
            raise NotReady("node has no store yet")
        return self.replica.handle(header, payload)

    def _gateway_peer_op(self, header: dict):
        """What a gateway answers a peer: its state (``stat``, ``ping``); it holds no copy."""
        op = header.get("op")
        if op == "stat":
            return {"store": None, "epoch": self.epochs.epoch,
                    "fenced": bool(self.coordinator.fenced)}, b""
        if op == "ping":
            return {"epoch": self.epochs.epoch}, b""
        raise NotReady(f"node {self.node_id} is a gateway: it holds no objects (op {op!r})")


def _load_secret(path) -> ClusterSecret:
    try:
        secret, created = ClusterSecret.load_or_create(path)
    except SecretError as exc:
        raise NotReady(str(exc)) from None
    if created:
        log.warning("generated a new cluster secret in %s: copy this file to every sheep of "
                    "the cluster (docs/security.md)", path)
    elif path.stat().st_mode & 0o077:
        log.warning("the cluster secret %s is readable by others than its owner: "
                    "chmod 600 it", path)
    log.info("cluster secret %s (fingerprint %s)", path, secret.fingerprint)
    return secret


def _off_loop(fn, *args):
    """Run a blocking call (an fsync) in the thread pool, never on the event loop."""
    return gevent.get_hub().threadpool.apply(fn, args)
