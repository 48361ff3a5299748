"""`sheepdog-local`: run a whole cluster on this machine, and stop it again.

    sheepdog-local up   [--dir DIR] [--nodes N] [--copies C] [--vdi NAME] [--vdi-size SIZE]
    sheepdog-local down [--dir DIR]
    sheepdog-local status [--dir DIR]

`up` starts a private ZooKeeper (the system's install) and N sheep on loopback
(node i: admin port 7000+i, peer port 7100+i, NBD port 10809+i by default), formats the
cluster, creates a demo VDI and prints how to reach it.  The cluster's secret and admin
token are in DIR/keys; `up` also copies the token to collie's per-user token file
(~/.config/collie/token) so that a plain `collie vdi list` works.  `down` stops exactly
the processes `up` recorded in DIR/cluster.json, and removes collie's token file if it
still holds this cluster's token.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

from collie.tokens import user_token_file, write_token
from sheepdog_local.local_cluster import STATE_FILE, LocalCluster, stop_recorded
from sheepdog_local.zookeeper import pid_alive

DEFAULT_DIR = Path(".local-cluster")
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in UNITS else ""
    try:
        value = int(float(t[:-1] if unit else t) * UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sheepdog-local", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start ZooKeeper + N sheep, format, create a demo VDI")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--copies", type=int, default=None, help="default: min(3, nodes)")
    up.add_argument("--cluster", default="local")
    up.add_argument("--vdi", default="demo", help="demo VDI name ('' for none)")
    up.add_argument("--vdi-size", type=parse_size, default=parse_size("1G"))
    up.add_argument("--zk-port", type=int, default=2181)
    up.add_argument("--admin-base", type=int, default=7000, help="admin port of node 0")
    up.add_argument("--peer-base", type=int, default=7100, help="peer port of node 0")
    up.add_argument("--nbd-base", type=int, default=10809, help="NBD port of node 0")
    for name in ("down", "status"):
        sp = sub.add_parser(name, help=f"{name} the cluster started from --dir")
        sp.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    return p


def cmd_up(args) -> int:
    if (args.dir / STATE_FILE).exists():
        print(f"sheepdog-local: a cluster is already recorded in {args.dir}; "
              f"run 'sheepdog-local down --dir {args.dir}' first", file=sys.stderr)
        return 1
    if args.nodes < 1:
        print("sheepdog-local: --nodes must be at least 1", file=sys.stderr)
        return 64
    ports = [(args.peer_base + i, args.admin_base + i, args.nbd_base + i)
             for i in range(args.nodes)]
    cluster = LocalCluster(args.dir, args.nodes, cluster=args.cluster, zk_port=args.zk_port,
                           ports=ports)
    try:
        cluster.start()
        first = cluster.sheep[0]
        copies = args.copies or min(3, args.nodes)
        _post(first, "/cluster/format", {"copies": copies})
        if args.vdi:
            _post(first, "/vdis", {"name": args.vdi, "size": args.vdi_size})
        user_token = user_token_file()
        write_token(user_token, first.token)
    except (RuntimeError, OSError, requests.RequestException) as exc:
        print(f"sheepdog-local: {exc}", file=sys.stderr)
        print(cluster.logs(), file=sys.stderr)
        cluster.stop()
        return 1
    print(f"cluster '{args.cluster}' running: ZooKeeper {cluster.zk.hosts}, {args.nodes} sheep, "
          f"copies {copies}")
    for s in cluster.sheep:
        print(f"  sheep{s.index}: node {s.node_id}  admin {s.admin_port}  nbd {s.nbd_port}  "
              f"log {s.log_path}")
    print(f"collie:  collie -p {first.admin_port} vdi list   (admin token: {user_token}, "
          f"a copy of {first.token_file})")
    print(f"zkCli:   /usr/share/zookeeper/bin/zkCli.sh -server {cluster.zk.hosts} "
          f"ls /sheepdog/{args.cluster}")
    if args.vdi:
        nbd = cluster.sheep[0].nbd_port
        print(f"qemu:    qemu-system-x86_64 -m 1G -drive file=nbd://127.0.0.1:{nbd}/{args.vdi},"
              f"format=raw")
        print(f"         qemu-io -f raw nbd://127.0.0.1:{nbd}/{args.vdi} -c 'read 0 1M'")
    print(f"stop:    sheepdog-local down --dir {args.dir}")
    return 0


def _post(node, path: str, body: dict) -> None:
    url = node.admin_url + path
    r = requests.post(url, json=body, headers=node.auth, timeout=30)
    if r.status_code >= 400:
        raise RuntimeError(f"POST {url}: {r.json().get('error', r.text)}")


def cmd_down(args) -> int:
    if not (args.dir / STATE_FILE).exists():
        print(f"sheepdog-local: no cluster recorded in {args.dir}", file=sys.stderr)
        return 1
    pids = stop_recorded(args.dir)
    print(f"stopped {len(pids)} processes")
    user_token = user_token_file()
    try:
        ours = (args.dir / "keys" / "admin.token").read_text()
        if user_token.read_text() == ours:      # still this cluster's: it is of no further use
            user_token.unlink()
    except OSError:
        pass
    return 0


def cmd_status(args) -> int:
    path = args.dir / STATE_FILE
    if not path.exists():
        print(f"no cluster recorded in {args.dir}")
        return 1
    state = json.loads(path.read_text())
    zk = state["zk"]
    print(f"zookeeper port {zk['port']} pid {zk['pid']} "
          f"{'running' if zk['pid'] and pid_alive(zk['pid']) else 'stopped'}")
    for s in state["sheep"]:
        alive = s["pid"] and pid_alive(s["pid"])
        print(f"sheep{s['index']} admin {s['admin_port']} nbd {s['nbd_port']} pid {s['pid']} "
              f"{'running' if alive else 'stopped'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
