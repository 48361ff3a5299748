"""`collie node weight NODE W` and `collie vdi alter-copy NAME -c N`: balance and redundancy.

``vdi alter-copy`` sets the copies of a VDI and its snapshots (``POST /vdis/NAME/copies``);
the sheep starts an epoch whose recovery makes or retires the replicas, and collie shows
that recovery's progress on stderr until it is complete everywhere (``--no-wait``: return
at once; the new copies exist when ``collie node recovery`` shows that epoch complete).


NODE is a node id or the Id column of ``collie node list``.  The sheep collie talks to
lists the members (``GET /nodes``); the change goes to the named node's own admin port
(``POST /node/weight``), which rewrites its member znode; the leader makes a new epoch and
recovery moves objects to or from that node only (``collie node recovery -w`` follows it).
"""
from __future__ import annotations

import argparse
import sys

from collie import render
from collie.client import AdminClient, CollieError, Exit, quoted
from collie.progress import watch_recovery
from collie.render_watch import recovery_done

VNODES_PER_WEIGHT = 128


def register(node_commands, add, typed) -> None:
    """Add ``node weight`` to the ``node`` group (``add`` is build_parser's leaf helper)."""
    p = add(node_commands, "weight", cmd_node_weight,
            "change a node's weight at run time (a new epoch; objects move to or from it)")
    p.add_argument("node", help="node id (or its Id in 'collie node list')")
    p.add_argument("weight", type=typed(_weight), help="new weight, at least 1 (128 virtual nodes each)")


def register_vdi(vdi_commands, add, typed) -> None:
    """Add ``vdi alter-copy`` to the ``vdi`` group."""
    p = add(vdi_commands, "alter-copy", cmd_vdi_alter_copy,
            "change the copies of a VDI and its snapshots (recovery makes or retires replicas)")
    p.add_argument("name")
    p.add_argument("-c", "--copies", type=typed(_copies), required=True, help="new number of copies")
    p.add_argument("--no-wait", action="store_true",
                   help="return once the change is made, without waiting for its recovery")
    p.add_argument("--interval", type=typed(float), default=0.5, help=argparse.SUPPRESS)


def _copies(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError(f"invalid number of copies {text!r}") from None
    if not 1 <= n <= 31:
        raise ValueError(f"invalid number of copies {n}: it must be between 1 and 31")
    return n


def cmd_vdi_alter_copy(client, args) -> int:
    answer = client.post(f"/vdis/{quoted(args.name)}/copies", {"copies": args.copies})
    epoch = int(answer.get("epoch") or 0)
    if answer.get("changed") and not args.no_wait:
        def fetch() -> dict:
            got = client.get("/recovery")
            if int(got.get("epoch") or 0) < epoch:     # this sheep has not seen it yet
                got = {**got, "state": "waiting"}
            return got
        final = watch_recovery(fetch, args.interval, sys.stderr, as_json=False)
        if not recovery_done(final):
            raise CollieError("recovery did not complete", Exit.FAILURE)
    if getattr(args, "json", False):
        print(render.render_json(answer))
    elif not answer.get("changed"):
        print(f"VDI {answer['name']} already has {answer['copies']} copies")
    else:
        state = "started" if args.no_wait else "done"
        print(f"VDI {answer['name']}: copies {answer['old_copies']} -> {answer['copies']} "
              f"({answer['changed']} VDI entries), recovery at epoch {epoch} {state}")
    return Exit.OK


def _weight(text: str) -> int:
    try:
        w = int(text, 10)
    except ValueError:
        raise ValueError(f"invalid weight {text!r}") from None
    if w == 0:
        raise ValueError("weight 0 means gateway-only (no data): restart the sheep with --gateway")
    if w < 0:
        raise ValueError(f"invalid weight {w}: it must be at least 1")
    return w


def find_node(nodes: list[dict], name: str) -> dict:
    """The member named by node id, else by its index in ``node list``; CollieError (5) if none."""
    for n in nodes:
        if n.get("node_id") == name:
            return n
    if name.isdigit() and int(name) < len(nodes):
        return nodes[int(name)]
    raise CollieError(f"no node {name!r} in the cluster (see 'collie node list')", Exit.NOT_FOUND)


def cmd_node_weight(client, args, client_factory=AdminClient) -> int:
    nodes = client.get("/nodes").get("nodes") or []
    node = find_node(nodes, args.node)
    if int(node.get("weight", 1)) == 0:
        raise CollieError(f"node {node['node_id']} is a gateway (no store): its weight cannot "
                          "change at run time", Exit.FAILURE)
    token = getattr(args, "token", None)
    target = client
    if (node.get("addr"), node.get("admin_port")) != (getattr(client, "addr", None),
                                                      getattr(client, "port", None)):
        target = client_factory(node["addr"], int(node["admin_port"]),
                                token=getattr(token, "value", None),
                                token_source=getattr(token, "source", ""))
    try:
        answer = target.post("/node/weight", {"weight": args.weight})
    finally:
        if target is not client:
            target.close()
    if getattr(args, "json", False):
        print(render.render_json(answer))
    else:
        print(f"node {answer['node_id']}: weight {answer['old_weight']} -> {answer['weight']} "
              f"({VNODES_PER_WEIGHT * answer['weight']} virtual nodes); a new epoch follows")
    return Exit.OK
