"""The znode layout of one cluster and the JSON codec of its values (pure: no kazoo, no I/O).

Everything a cluster keeps in ZooKeeper lives under ``/sheepdog/<cluster>``:

=================================  ==========  =================================================
znode                              kind        value (JSON)
=================================  ==========  =================================================
``/cluster``                       persistent  format: copies, min_copies, block_size_shift,
                                               created, state
``/members/<node_id>``             ephemeral   ``Member.to_dict()``
``/epochs/<%010d>``                persistent  {"epoch", "members": [member dicts], "created"}
``/leader``                        election    kazoo Election children (``<uuid>__lock__<seq>``)
``/vdis/<vid as 6 hex digits>``    persistent  catalog entry (defined by the caller)
``/locks/<vid as 6 hex digits>``   ephemeral   {"vid", "node_id", "client", "since", "generation"}
``/generations/<vid 6 hex>``       persistent  {"generation", "clean", "holder", "since"}: the VDI's
                                               lock generation (fencing token) and whether
                                               its last holder let go cleanly
``/attachments/<vid 6 hex>/a<seq>`` ephemeral  {"vid", "node_id", "client", "since"}: one per NBD
                                               connection attached to the working VDI
``/handoffs/<vid 6 hex>/r<seq>``   ephemeral   {"vid", "node_id", "client", "since"}: a standby
                                               asking the lock's holder for the write right
``/recovery/<%010d>/<node_id>``    persistent  recovery-done marker of a node for an epoch
=================================  ==========  =================================================

Epoch numbers are zero padded to ten digits (as ZooKeeper's own sequence nodes are) so
``ls`` lists them in order; the recovery epoch directories follow the same rule.

Values are JSON with sorted keys and no padding: readable with ``zkCli.sh get`` and
byte-for-byte stable for the same value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidRequest

BASE = "/sheepdog"
VID_MAX = (1 << 24) - 1
EPOCH_DIGITS = 10


def encode(value: Any) -> bytes:
    """JSON-encode a znode value: sorted keys, compact separators, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(data: bytes | None) -> Any:
    """Decode a znode value written by ``encode``; empty or None data decodes to None.

    Raises InvalidRequest on data that is not JSON (a znode someone wrote by hand).
    """
    if not data:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidRequest(f"znode value is not JSON: {data[:64]!r}") from e


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") \
            or any(ord(c) < 0x20 for c in name):
        raise InvalidRequest(f"invalid {kind} {name!r}: must be a non-empty znode name without '/'")
    return name


def vid_name(vid: int) -> str:
    """The znode name of a VDI id: six lowercase hex digits (``7c2b25``)."""
    if not isinstance(vid, int) or isinstance(vid, bool) or not 0 < vid <= VID_MAX:
        raise InvalidRequest(f"invalid vid {vid!r}: must be 1..{VID_MAX:#x}")
    return f"{vid:06x}"


def parse_vid(name: str) -> int:
    """Inverse of ``vid_name``; InvalidRequest for anything else."""
    try:
        vid = int(name, 16)
    except (TypeError, ValueError):
        raise InvalidRequest(f"not a vid znode name: {name!r}") from None
    if len(name) != 6 or vid_name(vid) != name.lower():
        raise InvalidRequest(f"not a vid znode name: {name!r}")
    return vid


def epoch_name(epoch: int) -> str:
    """The znode name of an epoch number (``0000000001``); epochs start at 1."""
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 < epoch < 10 ** EPOCH_DIGITS:
        raise InvalidRequest(f"invalid epoch {epoch!r}")
    return f"{epoch:0{EPOCH_DIGITS}d}"


def parse_epoch(name: str) -> int:
    """Inverse of ``epoch_name``; InvalidRequest for anything else."""
    if not isinstance(name, str) or len(name) != EPOCH_DIGITS or not name.isdigit() or int(name) == 0:
        raise InvalidRequest(f"not an epoch znode name: {name!r}")
    return int(name)


def epoch_numbers(children: list[str]) -> list[int]:
    """The epoch numbers among ``/epochs`` children, ascending; foreign names are ignored."""
    out = []
    for name in children:
        try:
            out.append(parse_epoch(name))
        except InvalidRequest:
            continue
    return sorted(out)


@dataclass(frozen=True)
class Layout:
    """The absolute znode paths of one cluster (``/sheepdog/<cluster>/...``)."""

    cluster: str

    def __post_init__(self):
        _check_name("cluster name", self.cluster)

    @property
    def root(self) -> str:
        return f"{BASE}/{self.cluster}"

    @property
    def cluster_path(self) -> str:
        return f"{self.root}/cluster"

    @property
    def members(self) -> str:
        return f"{self.root}/members"

    def member(self, node_id: str) -> str:
        return f"{self.members}/{_check_name('node id', node_id)}"

    @property
    def epochs(self) -> str:
        return f"{self.root}/epochs"

    def epoch(self, epoch: int) -> str:
        return f"{self.epochs}/{epoch_name(epoch)}"

    @property
    def leader(self) -> str:
        return f"{self.root}/leader"

    @property
    def vdis(self) -> str:
        return f"{self.root}/vdis"

    def vdi(self, vid: int) -> str:
        return f"{self.vdis}/{vid_name(vid)}"

    @property
    def locks(self) -> str:
        return f"{self.root}/locks"

    def lock(self, vid: int) -> str:
        return f"{self.locks}/{vid_name(vid)}"

    @property
    def generations(self) -> str:
        return f"{self.root}/generations"

    def generation(self, vid: int) -> str:
        return f"{self.generations}/{vid_name(vid)}"

    @property
    def attachments(self) -> str:
        return f"{self.root}/attachments"

    def attachments_of(self, vid: int) -> str:
        return f"{self.attachments}/{vid_name(vid)}"

    @property
    def handoffs(self) -> str:
        return f"{self.root}/handoffs"

    def handoffs_of(self, vid: int) -> str:
        return f"{self.handoffs}/{vid_name(vid)}"

    @property
    def recovery(self) -> str:
        return f"{self.root}/recovery"

    def recovery_epoch(self, epoch: int) -> str:
        return f"{self.recovery}/{epoch_name(epoch)}"

    def recovery_marker(self, epoch: int, node_id: str) -> str:
        return f"{self.recovery_epoch(epoch)}/{_check_name('node id', node_id)}"

    def base_paths(self) -> tuple[str, ...]:
        """The persistent directories ``Coordinator.start`` makes sure exist."""
        return (self.root, self.members, self.epochs, self.leader, self.vdis, self.locks,
                self.generations, self.attachments, self.handoffs, self.recovery)
