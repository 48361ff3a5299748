"""The ZooKeeper adapter of one sheep: membership, leader election, epochs, fencing.

Theory of operation
-------------------
Membership.  ``start()`` registers the ephemeral ``/members/<node_id>`` whose value is the
node's ``Member.to_dict()``.  The znode lives exactly as long as the ZooKeeper session, so
a crashed or partitioned node leaves the member set about one session timeout later.
Member values change during a session only through ``set_weight`` (``collie node weight``);
the leader watches every member's value, so a new weight makes a new epoch like a join.

Election.  Every node contends in a kazoo ``Election`` on ``/leader`` with its node id as
identifier; the first contender in sequence order leads.  Only the leader writes epochs.
Losing the session ends the leadership (the contender znode died with it); the node
re-contends once it is registered again.

Epochs.  An epoch is an immutable, numbered member list (``/epochs/<%010d>``).  Whenever the
cluster is formatted (and its state is not "shutdown") and the live member set (node ids
*and* their values) differs from the newest epoch's list, the leader creates epoch n+1.
Gateway-only members (weight 0) register and contend like the others but are left out of
every epoch: they place nothing, so their joins and leaves change nothing the epoch orders.  ``create`` is the compare-and-swap:
if two leaders ever overlap (an old leader still believing in a dead session) only one
create of a given number succeeds; the loser re-reads and re-evaluates.  The leader works
from watches on ``/members`` (children) and ``/cluster`` (data); a watch callback only sets
an event, and one greenlet does the reading and writing, so bursts of changes coalesce into
one pass.  Batching (as Sheepdog's leader does): once the members differ from an existing
epoch, the leader waits until ``/members`` has been quiet for ``BATCH_S`` (never longer than
``BATCH_MAX_S``), so twenty nodes started together, or four whose sessions expire together,
make one epoch and one recovery pass rather than one each.

Every node (leader or not) follows ``/epochs`` from one greenlet and calls
``on_epoch(epoch)`` for every epoch it learns of, ascending, exactly once each: at start
the newest existing epoch, then each later one (history is in ``epochs()``).

Fencing.  A node that may have lost its session must stop serving writes at once: the
connection listener sets ``fenced`` and spawns ``on_fence()`` on SUSPENDED or LOST.
CONNECTED after SUSPENDED (same session: the ephemeral znodes are intact) unfences.
After LOST, kazoo reconnects with a new session; the member znode is re-created (waiting
for a stale one to expire if needed), the node re-joins the election, and only then is it
unfenced.  ``on_unfence()`` runs on every unfence.  Callbacks run in new greenlets, never in
kazoo's connection or watch greenlets.

Cluster state and restarts.  ``/cluster``'s ``state`` is ``running``, ``shutdown`` or
``waiting``.  ``shutdown()`` sets ``shutdown`` with ``shutdown_at``: every node that started
before that time stops itself (``on_cluster`` tells the daemon), and the leader records no
epochs, so the last epoch survives the shutdown.  When nodes start again (``started`` later
than ``shutdown_at``) the leader waits until every member of the last epoch is back, then sets
``running`` again *without* a new epoch (``resumed`` remembers the new ``started`` values, so
the restarted members compare equal to that epoch); while some are missing the state is
``waiting`` with ``waiting_for``, and ``force_recover()`` takes the present nodes as the next
epoch.  Every node follows ``/cluster`` with a data watch (``cluster_value``) so that it can
refuse writes unless the state is ``running``.

Recovery markers.  ``mark_recovered(epoch)`` creates ``/recovery/<epoch>/<node_id>`` when this
node finished recovering that epoch; ``recovered(epoch)`` lists who did.

ACLs.  With a ``secret`` the client authenticates as the cluster's digest identity and
every znode it creates gets ``acl.member_acl`` (the cluster writes, anyone reads); a start
on a tree this identity may not write fails with NotReady (``acl.REFUSED``), and a NoAuth
in a background loop fences the node and calls ``on_refused()`` once (coordinator.rekey).

Concurrency model: kazoo's ``SequentialGeventHandler`` (no monkey patching needed) and a few
greenlets per Coordinator (epoch follower, election runner, re-joiner).  Not thread safe.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import gevent
from gevent.event import Event
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoAuthError, NodeExistsError, NoNodeError
from kazoo.handlers.gevent import SequentialGeventHandler

from common.errors import AlreadyExists, InvalidRequest, SheepError, Unavailable
from coordinator import acl
from coordinator.catalog import zk_unavailable
from coordinator.cluster_state import ClusterStateMixin
from coordinator.leader import LeaderMixin, same_members  # noqa: F401 - same_members re-exported
from coordinator.layout import Layout, decode, encode, epoch_numbers
from coordinator.rekey import ensure_tree
from coordinator.ring import Member

log = logging.getLogger(__name__)



class Coordinator(LeaderMixin, ClusterStateMixin):
    """One node's view of, and duties in, the cluster ``cluster`` on ZooKeeper ``hosts``.

    ``fenced`` is True before ``start()``, while the session is in doubt, and after ``stop()``.
    """

    RETRY_PAUSE_S = 0.2     # pause after an unexpected error in a background loop
    BATCH_S = 0.5           # membership quiet this long before the leader makes an epoch
    BATCH_MAX_S = 5.0       # ... but never waits longer than this after the first change

    def __init__(self, hosts: str, cluster: str, member: Member, *, session_timeout_s: float = 10.0,
                 on_epoch=None, on_fence=None, on_unfence=None, on_cluster=None, handler=None,
                 secret=None, on_refused=None):
        self.layout = Layout(cluster)
        self.secret = secret            # common.secrets.ClusterSecret: ZooKeeper digest ACLs
        self.cluster = cluster
        self.member = member
        self.session_timeout_s = session_timeout_s
        self._on_epoch = on_epoch
        self._on_fence = on_fence
        self._on_unfence = on_unfence
        self._on_cluster = on_cluster
        self._on_refused = on_refused   # ZooKeeper refused a write (NoAuth): default stop()
        self._refused = False
        self.cluster_value: dict | None = None   # /cluster as last seen by the data watch
        self.client = KazooClient(hosts=hosts, handler=handler or SequentialGeventHandler(),
                                  timeout=session_timeout_s, auth_data=acl.auth_data(secret),
                                  default_acl=acl.default_acl(secret))
        self._fenced = True
        self._started = False
        self._stopping = False
        self._lost = False              # session lost, not yet re-registered
        self._generation = 0            # bumped on every LOST: ends a leadership
        self.fence_events = 0           # times _fence fenced (not the start or stop state)
        self._unfenced = Event()        # set while not fenced
        self._registered = Event()      # member znode exists in the current session
        self._epoch_wake = Event()
        self._leader_wake = Event()
        self._state_changed = Event()
        self._first_pass = Event()
        self._epoch_seen = Event()      # replaced after each delivery (wait_for_epoch)
        self._delivered: int | None = None
        self._latest: dict | None = None
        self._is_leader = False
        self._settled = False           # the leader waited for quiet: make the epoch now
        self._election = None
        self._greenlets: list[gevent.Greenlet] = []
        self._rejoiner: gevent.Greenlet | None = None

    # -- properties -----------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.member.node_id

    @property
    def fenced(self) -> bool:
        return self._fenced

    @property
    def session_generation(self) -> int:
        """Bumped every time a session is lost: what was held under an older one is gone."""
        return self._generation

    def wait_unfenced(self, timeout_s: float) -> bool:
        """Until the session is confirmed (or a new one registered); False on timeout."""
        return self._unfenced.wait(timeout_s)

    @property
    def is_leader(self) -> bool:
        """True while this node's leader loop runs."""
        return self._is_leader

    @property
    def current_epoch(self) -> dict | None:
        """The newest epoch delivered to on_epoch (None before the first)."""
        return self._latest

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout_s: float = 30, admit=None) -> None:
        """Connect, register, contend for leadership and follow epochs; idempotent.

        ``admit(cluster_value)`` runs after connecting and *before* registering, with the
        ``/cluster`` value (None when unformatted); whatever it raises stops the start, so a
        node that must not join (a store formatted for another cluster) never becomes a
        member.  Returns once the member znode exists and the newest epoch (if any) was
        delivered.  Unavailable when ZooKeeper cannot be reached in time; AlreadyExists when
        another live session keeps ``/members/<node_id>`` for longer than ``timeout_s``.
        """
        if self._started:
            return
        self._started = True
        deadline = time.monotonic() + timeout_s
        self.client.add_listener(self._on_state)
        try:
            self.client.start(timeout=timeout_s)
        except self.client.handler.timeout_exception as e:
            self._shutdown_client()
            raise Unavailable(f"cannot reach ZooKeeper at {self.client.hosts} in {timeout_s}s") from e
        try:
            with zk_unavailable("start"):
                ensure_tree(self.client, self.layout, self.secret)
                if admit is not None:
                    admit(self.cluster_format())
                self._register(deadline)
        except BaseException:
            self._shutdown_client()
            raise
        self._registered.set()
        self._fenced = False
        log.info("coordinator started node=%s cluster=%s session=%#x", self.node_id, self.cluster,
                 self._session_id())
        try:
            self.client.DataWatch(self.layout.cluster_path, self._on_cluster_data)
        except KazooException as e:     # the leader and readers still work without it
            log.warning("cluster data watch node=%s: %r", self.node_id, e)
        self._greenlets = [gevent.spawn(self._epoch_loop), gevent.spawn(self._election_loop)]
        self._first_pass.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Leave the election, delete the member znode, close the session; idempotent."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._fenced = True
        self._wake_all()
        if self._election is not None:
            self._election.cancel()
        greenlets = [g for g in self._greenlets + [self._rejoiner] if g is not None]
        gevent.joinall(greenlets, timeout=5)
        gevent.killall([g for g in greenlets if not g.dead], timeout=2)
        if self.client.state == KazooState.CONNECTED:
            try:
                self.client.delete_async(self.layout.member(self.node_id)).get(timeout=2)
            except (Exception, gevent.Timeout) as e:    # gone, or no answer: closing the session does it
                log.debug("stop: member delete node=%s: %r", self.node_id, e)
        self._shutdown_client()
        log.info("coordinator stopped node=%s cluster=%s", self.node_id, self.cluster)

    def _refuse(self, where: str) -> None:
        """ZooKeeper refused a write (NoAuth): the cluster's ACLs no longer admit this
        sheep's secret (rotated without it).  One error line, fenced at once, and
        ``on_refused()`` (default ``stop()``) instead of a retry loop."""
        if self._refused or self._stopping:
            return
        self._refused = True
        log.error("%s; during %s node=%s: fenced, stopping", acl.REFUSED, where, self.node_id)
        self._fence()
        gevent.spawn(self._callback, "on_refused", self._on_refused or self.stop)

    def _shutdown_client(self) -> None:
        self._stopping = True
        self.client.remove_listener(self._on_state)
        try:
            self.client.stop()
        finally:
            self.client.close()

    def _on_cluster_data(self, data, stat, event=None) -> None:
        """kazoo data watch on /cluster: remember the value, tell the daemon (new greenlet)."""
        try:
            value = decode(data) if data else None
        except InvalidRequest:
            return
        self.cluster_value = value
        if self._on_cluster is not None and not self._stopping:
            gevent.spawn(self._callback, "on_cluster", lambda: self._on_cluster(value))

    # -- queries --------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The live members (registered znodes), sorted by node id."""
        with zk_unavailable("members"):
            return [Member.from_dict(d) for d in self._member_dicts()]

    def epochs(self) -> list[dict]:
        """The whole epoch history, ascending."""
        with zk_unavailable("epochs"):
            out = []
            for n in epoch_numbers(self.client.get_children(self.layout.epochs)):
                epoch = self._read_epoch(n)
                if epoch is not None:
                    out.append(epoch)
            return out

    def latest_epoch(self) -> dict | None:
        """The newest epoch in ZooKeeper (not necessarily delivered yet), or None."""
        with zk_unavailable("latest epoch"):
            for n in reversed(epoch_numbers(self.client.get_children(self.layout.epochs))):
                epoch = self._read_epoch(n)
                if epoch is not None:
                    return epoch
        return None

    def leader(self) -> str | None:
        """The node id of the current leader, or None when nobody contends."""
        with zk_unavailable("leader"):
            contenders = self.client.Election(self.layout.leader).contenders()
        return contenders[0] if contenders else None

    def wait_for_epoch(self, n: int, timeout_s: float = 10.0) -> dict:
        """Block until epoch ``n`` (or a later one) was delivered here and return the newest.

        TimeoutError after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while self._latest is None or self._latest["epoch"] < n:
            seen = self._epoch_seen
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not seen.wait(remaining):
                have = self._latest["epoch"] if self._latest else None
                raise TimeoutError(f"node {self.node_id}: epoch {n} not seen in {timeout_s}s "
                                   f"(have {have})")
        return self._latest

    # -- membership -----------------------------------------------------------------

    def _register(self, deadline: float) -> None:
        """Create our ephemeral member znode; wait out a stale one left by an old session."""
        path = self.layout.member(self.node_id)
        data = encode(self.member.to_dict())
        while True:
            try:
                self.client.create(path, data, ephemeral=True, makepath=True)
                log.info("registered member node=%s session=%#x", self.node_id, self._session_id())
                return
            except NodeExistsError:
                pass
            gone = Event()
            stat = self.client.exists(path, watch=lambda event: gone.set())
            if stat is None:
                continue
            if stat.ephemeralOwner == self._session_id():
                return                  # our own create went through before a connection loss
            remaining = deadline - time.monotonic()
            log.warning("member znode %s held by session %#x; waiting for it to expire",
                        path, stat.ephemeralOwner)
            if remaining <= 0 or not gone.wait(remaining):
                raise AlreadyExists(f"node id {self.node_id} is registered by another live session "
                                    f"{stat.ephemeralOwner:#x}", node_id=self.node_id)

    def set_weight(self, weight: int) -> Member:
        """Change this member's weight at run time: rewrite its member znode (the leader,
        watching member values, makes a new epoch).  The new value is kept for a re-registration
        after a lost session; a restart takes ``--weight`` again."""
        old = self.member
        self.member = dataclasses.replace(old, weight=int(weight))
        try:
            with zk_unavailable("set weight"):
                self.client.set(self.layout.member(self.node_id), encode(self.member.to_dict()))
        except SheepError:
            self.member = old
            raise
        log.warning("weight node=%s %d -> %d", self.node_id, old.weight, self.member.weight)
        return self.member

    def _session_id(self) -> int:
        client_id = self.client.client_id
        return client_id[0] if client_id else 0

    def _member_dicts(self, watch=None) -> list[dict]:
        """Every member's value (the reads in flight together: one round trip, not N)."""
        out = []
        names = sorted(self.client.get_children(self.layout.members, watch=watch))
        reads = [self.client.get_async(self.layout.member(n), watch=watch) for n in names]
        for read in reads:
            try:
                data, _ = read.get()
            except NoNodeError:
                continue
            value = decode(data)
            if isinstance(value, dict):
                out.append(value)
        return sorted(out, key=lambda d: d["node_id"])

    # -- epochs: follower -----------------------------------------------------------

    def _read_epoch(self, n: int) -> dict | None:
        try:
            data, _ = self.client.get(self.layout.epoch(n))
        except NoNodeError:
            return None
        return decode(data)

    def _epoch_loop(self) -> None:
        while not self._stopping:
            self._epoch_wake.clear()
            try:
                self._deliver_epochs()
                self._first_pass.set()
            except NoAuthError:
                self._refuse("epoch follower")
                break
            except (KazooException, SheepError) as e:
                log.info("epoch follower node=%s: %r; waiting for the connection", self.node_id, e)
                self._state_changed.clear()
                self._state_changed.wait(self.RETRY_PAUSE_S * 5)
                continue
            self._epoch_wake.wait()

    def _deliver_epochs(self) -> None:
        nums = epoch_numbers(self.client.get_children(self.layout.epochs, watch=self._on_epochs_watch))
        if self._delivered is None:     # first pass: only the newest is news
            self._delivered = nums[-1] - 1 if nums else 0
        for n in nums:
            if n <= self._delivered or self._stopping:
                continue
            epoch = self._read_epoch(n)
            if epoch is None:
                continue
            self._delivered = n
            self._latest = epoch
            log.info("epoch node=%s epoch=%d members=%s", self.node_id, n,
                     ",".join(m["node_id"] for m in epoch["members"]))
            if self._on_epoch is not None:
                try:
                    self._on_epoch(epoch)
                except Exception:
                    log.exception("on_epoch failed node=%s epoch=%d", self.node_id, n)
            seen, self._epoch_seen = self._epoch_seen, Event()
            seen.set()

    def _on_epochs_watch(self, event) -> None:
        self._epoch_wake.set()

    # -- connection state and fencing -------------------------------------------------

    def _wake_all(self) -> None:
        """Make every background loop look again (and, when stopping, leave)."""
        self._epoch_wake.set()
        self._leader_wake.set()
        self._state_changed.set()
        if self._stopping:
            self._registered.set()      # releases the election loop so it can see _stopping

    def _on_state(self, state) -> None:
        """kazoo connection listener: must return at once (runs in kazoo's connection greenlet)."""
        if self._stopping:
            return
        log.warning("zookeeper state node=%s state=%s", self.node_id, state)
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            if state == KazooState.LOST:
                self._lost = True
                self._generation += 1
                self._registered.clear()
            self._fence()
        elif state == KazooState.CONNECTED:
            if self._lost:
                if self._rejoiner is None or self._rejoiner.dead:
                    self._rejoiner = gevent.spawn(self._rejoin)
            elif self._registered.is_set():
                self._unfence("session kept")
        self._wake_all()

    def _fence(self) -> None:
        if self._fenced:
            return
        self._fenced = True
        self.fence_events += 1
        self._unfenced.clear()
        log.warning("FENCED node=%s: ZooKeeper session in doubt, no writes", self.node_id)
        if self._on_fence is not None:
            gevent.spawn(self._callback, "on_fence", self._on_fence)

    def _unfence(self, why: str) -> None:
        if not self._fenced or self._stopping or self._lost:
            return
        self._fenced = False
        self._unfenced.set()
        log.warning("UNFENCED node=%s (%s)", self.node_id, why)
        if self._on_unfence is not None:
            gevent.spawn(self._callback, "on_unfence", self._on_unfence)

    def _rejoin(self) -> None:
        """After a lost session: re-register, then let the election loop contend again."""
        while not self._stopping:
            try:
                self._register(time.monotonic() + 2 * self.session_timeout_s + 5)
                break
            except NoAuthError:
                self._refuse("re-registration")
                return
            except (KazooException, SheepError) as e:
                log.warning("rejoin node=%s failed: %r; retrying", self.node_id, e)
                self._state_changed.clear()
                self._state_changed.wait(self.RETRY_PAUSE_S * 5)
        if self._stopping:
            return
        self._lost = False
        self._registered.set()
        if self.client.state == KazooState.CONNECTED:
            self._unfence("re-registered with a new session")
        self._wake_all()

    def _callback(self, name: str, fn) -> None:
        try:
            fn()
        except Exception:
            log.exception("%s failed node=%s", name, self.node_id)

    def __repr__(self) -> str:
        return (f"Coordinator(node_id={self.node_id!r}, cluster={self.cluster!r}, "
                f"fenced={self._fenced}, leader={self._is_leader})")
