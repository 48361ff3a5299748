"""The sheep daemon's configuration: typed, frozen, parsed once in the entry point."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common.errors import SheepError
from nbd_frontend import tls as nbd_tls

DEFAULT_KEYS_DIR = Path("/etc/sheepdog")


@dataclass(frozen=True)
class SheepConfig:
    dir: Path | None               # None: a gateway without a directory (identity addr:port)
    zk_hosts: str
    cluster: str = "default"
    addr: str = "127.0.0.1"
    listen: str = ""               # bind address; "" = addr
    port: int = 7100
    admin_port: int = 7000
    nbd_port: int = 10809
    zone: str = ""
    weight: int = 1
    gateway: bool = False          # no store: serves NBD and the admin API, forwards all I/O
    session_timeout_s: float = 10.0
    io_timeout_s: float = 60.0
    peer_timeout_s: float = 30.0
    reserve_bytes: int = 64 << 20
    scrub_bytes_per_s: int = 4 << 20
    scrub_interval_s: float = 600.0
    handoff_idle_s: float = 0.5
    handoff_timeout_s: float = 30.0
    log_level: str = "INFO"
    # -- security (docs/security.md) --
    listen_admin: str = "127.0.0.1"   # the admin API's bind address (loopback by default)
    listen_nbd: str = ""              # NBD bind address; "" = bind_addr
    secret_file: Path | None = None   # the cluster secret; None = DEFAULT_KEYS_DIR/<cluster>/
    admin_token_file: Path | None = None   # where this sheep writes the admin token
    admin_hosts: tuple[str, ...] = ()  # Host header names the admin API accepts besides its own
    admin_max_body: int = 64 << 20    # bytes of one admin request body
    admin_workers: int = 64           # admin requests handled at once
    admin_head_timeout_s: float = 10.0  # to send a request's line and headers (and idle)
    nbd_tls_dir: Path | None = None   # ca-cert.pem, server-cert.pem, server-key.pem: TLS required
    nbd_max_connections: int = 256    # per NBD listener
    nbd_queue_bytes: int = 64 << 20   # per NBD connection: replies queued + payloads buffered
    nbd_handshake_timeout_s: float = 10.0   # the whole NBD handshake, TLS included
    nbd_max_options: int = 64         # NBD options in one handshake
    peer_max_connections: int = 1024  # inbound peer connections

    @property
    def bind_addr(self) -> str:
        return self.listen or self.addr

    @property
    def nbd_bind_addr(self) -> str:
        return self.listen_nbd or self.bind_addr

    @property
    def keys_dir(self) -> Path:
        return DEFAULT_KEYS_DIR / self.cluster

    @property
    def secret_path(self) -> Path:
        return self.secret_file or self.keys_dir / "cluster.secret"

    @property
    def admin_token_path(self) -> Path:
        return self.admin_token_file or self.secret_path.parent / "admin.token"

    @property
    def default_node_id(self) -> str:
        return f"{self.addr}:{self.port}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sheep", description="sheepdog-py storage daemon")
    p.add_argument("--dir", type=Path,
                   help="store directory (with --gateway: optional, keeps the node id)")
    p.add_argument("--zk", required=True, help="ZooKeeper hosts, e.g. 127.0.0.1:2181")
    p.add_argument("--cluster", default="default", help="cluster name (ZooKeeper chroot)")
    p.add_argument("--addr", default="127.0.0.1", help="address other sheep reach this one at")
    p.add_argument("--listen", default="", help="bind address (default: --addr)")
    p.add_argument("--port", type=int, default=7100, help="peer protocol port")
    p.add_argument("--admin-port", type=int, default=7000,
                   help="HTTP admin API port (collie's -p)")
    p.add_argument("--nbd-port", type=int, default=10809, help="NBD port")
    p.add_argument("--zone", default="", help="failure zone (default: the node itself)")
    p.add_argument("--weight", type=int, default=None,
                   help="relative capacity weight (default 1)")
    p.add_argument("--gateway", "-g", action="store_true",
                   help="gateway only: no store and no vnodes; serves NBD and the admin "
                        "API and forwards every request (a hypervisor's local sheep)")
    p.add_argument("--session-timeout", type=float, default=10.0,
                   help="ZooKeeper session timeout in seconds")
    p.add_argument("--io-timeout", type=float, default=60.0,
                   help="how long a client I/O waits for a usable replica set (s)")
    p.add_argument("--reserve", type=int, default=64 << 20,
                   help="free bytes the store never writes into")
    p.add_argument("--scrub-rate", type=int, default=4 << 20,
                   help="bytes per second the background scrub verifies (0: off)")
    p.add_argument("--scrub-interval", type=float, default=600.0,
                   help="seconds of rest between two scrub passes")
    p.add_argument("--handoff-idle", type=float, default=0.5,
                   help="seconds a VDI's writer must be idle with every write flushed before "
                        "it hands the write right to another attachment that asks")
    p.add_argument("--handoff-timeout", type=float, default=30.0,
                   help="seconds a write waits for the write right held by another "
                        "attachment before it fails (EIO)")
    p.add_argument("--log-level", default="INFO")
    s = p.add_argument_group("security (docs/security.md)")
    s.add_argument("--listen-admin", default="127.0.0.1",
                   help="admin API bind address (default 127.0.0.1: loopback only)")
    s.add_argument("--listen-nbd", default="", help="NBD bind address (default: --listen)")
    s.add_argument("--secret-file", type=Path, default=None,
                   help="the cluster secret shared by every sheep (created if missing; "
                        f"default {DEFAULT_KEYS_DIR}/CLUSTER/cluster.secret)")
    s.add_argument("--admin-token-file", type=Path, default=None,
                   help="where this sheep keeps a copy of the admin token for operators "
                        "(default: admin.token next to the secret file)")
    s.add_argument("--admin-host", action="append", default=[],
                   help="another Host header name the admin API answers to (repeatable)")
    s.add_argument("--admin-max-body", type=int, default=64 << 20,
                   help="largest admin request body in bytes")
    s.add_argument("--admin-workers", type=int, default=64,
                   help="admin requests handled at once (more wait)")
    s.add_argument("--admin-timeout", type=float, default=10.0,
                   help="seconds a client has to send an admin request's line and headers "
                        "(also how long an idle admin connection stays open)")
    s.add_argument("--nbd-tls-dir", type=Path, default=None,
                   help="x509 files ca-cert.pem, server-cert.pem, server-key.pem: NBD clients "
                        "must use TLS with a client certificate signed by that CA")
    s.add_argument("--nbd-max-connections", type=int, default=256,
                   help="NBD connections at once (more are closed at accept)")
    s.add_argument("--nbd-queue-bytes", type=int, default=64 << 20,
                   help="per NBD connection: bytes of replies queued and write payloads "
                        "buffered before the connection stops being read")
    s.add_argument("--nbd-handshake-timeout", type=float, default=10.0,
                   help="seconds an NBD client has to finish its handshake")
    s.add_argument("--nbd-max-options", type=int, default=64,
                   help="NBD options one handshake may send")
    s.add_argument("--peer-max-connections", type=int, default=1024,
                   help="inbound peer connections at once")
    return p


def parse_args(argv: list[str] | None = None) -> SheepConfig:
    p = build_parser()
    a = p.parse_args(argv)
    for name in ("port", "admin_port", "nbd_port"):
        value = getattr(a, name)
        if not 0 <= value <= 65535:
            p.error(f"--{name.replace('_', '-')} must be a port number (0..65535)")
    if a.gateway and a.weight is not None:
        p.error("--gateway and --weight exclude each other (a gateway holds no data)")
    if a.dir is None and not a.gateway:
        p.error("--dir is required (except with --gateway)")
    weight = 0 if a.gateway else (1 if a.weight is None else a.weight)
    if not a.gateway and weight < 1:
        p.error("--weight must be at least 1")
    if a.scrub_rate < 0:
        p.error("--scrub-rate must be >= 0 (0: off)")
    if a.handoff_idle < 0 or a.handoff_timeout <= 0:
        p.error("--handoff-idle must be >= 0 and --handoff-timeout > 0 (seconds)")
    for name in ("admin_max_body", "admin_workers", "nbd_max_connections", "nbd_queue_bytes",
                 "nbd_max_options", "peer_max_connections"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.nbd_queue_bytes < 33 << 20:
        p.error("--nbd-queue-bytes must hold at least one 32 MiB request (33554432 + 1 MiB)")
    if a.admin_timeout <= 0:
        p.error("--admin-timeout must be > 0 (seconds)")
    if a.nbd_handshake_timeout <= 0:
        p.error("--nbd-handshake-timeout must be > 0 (seconds)")
    if a.nbd_tls_dir is not None:
        try:
            nbd_tls.server_context(a.nbd_tls_dir)    # refuse to start on unusable files
        except SheepError as exc:
            p.error(f"--nbd-tls-dir: {exc.message}")
    return SheepConfig(dir=a.dir, zk_hosts=a.zk, cluster=a.cluster, addr=a.addr,
                       listen=a.listen, port=a.port, admin_port=a.admin_port,
                       nbd_port=a.nbd_port, zone=a.zone, weight=weight, gateway=a.gateway,
                       session_timeout_s=a.session_timeout, io_timeout_s=a.io_timeout,
                       reserve_bytes=a.reserve, scrub_bytes_per_s=a.scrub_rate,
                       scrub_interval_s=a.scrub_interval,
                       handoff_idle_s=a.handoff_idle, handoff_timeout_s=a.handoff_timeout,
                       log_level=a.log_level.upper(),
                       listen_admin=a.listen_admin, listen_nbd=a.listen_nbd,
                       secret_file=a.secret_file, admin_token_file=a.admin_token_file,
                       admin_hosts=tuple(a.admin_host), admin_max_body=a.admin_max_body,
                       admin_workers=a.admin_workers, nbd_tls_dir=a.nbd_tls_dir,
                       admin_head_timeout_s=a.admin_timeout,
                       nbd_max_connections=a.nbd_max_connections,
                       nbd_queue_bytes=a.nbd_queue_bytes,
                       nbd_handshake_timeout_s=a.nbd_handshake_timeout,
                       nbd_max_options=a.nbd_max_options,
                       peer_max_connections=a.peer_max_connections)
