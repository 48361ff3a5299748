"""`collie node weight NODE W`: change one node's weight at run time.

NODE is a node id or the Id column of ``collie node list``.  The sheep collie talks to
lists the members (``GET /nodes``); the change goes to the named node's own admin port
(``POST /node/weight``), which rewrites its member znode; the leader makes a new epoch and
recovery moves objects to or from that node only (``collie node recovery -w`` follows it).
"""
from __future__ import annotations

from collie import render
from collie.client import AdminClient, CollieError, Exit

VNODES_PER_WEIGHT = 128


def register(node_commands, add, typed) -> None:
    """Add ``node weight`` to the ``node`` group (``add`` is build_parser's leaf helper)."""
    p = add(node_commands, "weight", cmd_node_weight,
            "change a node's weight at run time (a new epoch; objects move to or from it)")
    p.add_argument("node", help="node id (or its Id in 'collie node list')")
    p.add_argument("weight", type=typed(_weight), help="new weight, at least 1 (128 virtual nodes each)")


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
