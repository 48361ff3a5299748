"""collie: the command line for a sheepdog-py cluster (a thin client of one sheep's HTTP admin API).

``collie [-a ADDR] [-p ADMIN_PORT] [--debug] <group> <command> [--json] ...``

Each command is a plain function ``cmd_<group>_<command>(client, args) -> int``
taking an ``AdminClient`` (or any object with the same ``get/post/delete/
get_bytes/put_bytes`` methods) and the parsed arguments; it prints its result
and returns 0, or raises ``CollieError``.  Only ``main`` turns errors into the one
stderr line and the exit code (docs/collie.md has the table); nothing here exits.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from collie import backup, cmd_balance, cmd_qos, render
from collie.client import AdminClient, CollieError, Exit, quoted, vdi_path
from collie.progress import Progress, watch_recovery
from collie.sizes import format_size, input_remaining, parse_size
from collie.tokens import TokenError, find_token, write_token

CHUNK_BYTES = 4 << 20
DEFAULT_ADDR = "127.0.0.1"
DEFAULT_ADMIN_PORT = 7000
WATCH_READ_TIMEOUT_S = 30      # a sheep that hangs mid-watch ends it within this (exit 2)


class UsageError(Exception):
    """A command line that cannot be run (exit 64)."""


class _ParserExit(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """ArgumentParser that raises instead of exiting: usage errors become one line and exit 64."""

    def error(self, message):
        raise UsageError(f"{' '.join(message.split())} (see '{self.prog} --help')")

    def exit(self, status=0, message=None):
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


def _typed(parse):
    """An argparse ``type`` from a parser raising ValueError with a user-facing message."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = parse.__name__
    return convert


def _bounded_int(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        limits = f"{low}-{high}" if high < 1 << 62 else f">= {low}"
        raise ValueError(f"invalid {what} '{text}': expected an integer {limits}")
    return value


def _count(text: str) -> int:
    return _bounded_int(text, 1, 1 << 62, "count")


def _port(text: str) -> int:
    return _bounded_int(text, 1, 65535, "port")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 1e6:
        raise ValueError(f"invalid interval '{text}': expected seconds > 0")
    return value


size_arg = _typed(parse_size)
offset_arg = _typed(lambda text: parse_size(text, allow_zero=True))
count_arg = _typed(_count)
port_arg = _typed(_port)


# ---- output helpers -------------------------------------------------------------------------------

def _emit(args, answer, text: str | None) -> int:
    """Print the API answer as JSON with --json, else ``text`` (if any)."""
    if getattr(args, "json", False):
        print(render.render_json(answer))
    elif text:
        print(text)
    return Exit.OK


@contextmanager
def _route(what: str, route_only: bool = False):
    """Turn "the sheep has no such route" into a clear failure (exit 1) instead of "not found".

    ``route_only``: the path names no resource, so any 404 means the route is missing.
    """
    try:
        yield
    except CollieError as err:
        if err.route_missing or (route_only and err.status == 404):
            raise CollieError(f"'{what}' is not supported by this sheep (HTTP {err.status})",
                              Exit.FAILURE, status=err.status, code=err.code) from err
        raise


# ---- cluster --------------------------------------------------------------------------------------

def cmd_cluster_format(client, args) -> int:
    answer = client.post("/cluster/format", {"copies": args.copies, "block_size_shift": args.block_size_shift})
    return _emit(args, answer, render.render_format(answer))


def cmd_cluster_info(client, args) -> int:
    answer = client.get("/cluster")
    return _emit(args, answer, render.render_cluster_info(answer))


def cmd_cluster_shutdown(client, args) -> int:
    with _route("cluster shutdown", route_only=True):
        answer = client.post("/cluster/shutdown", {})
    return _emit(args, answer, "cluster shutdown requested")


def cmd_cluster_rotate_token(client, args) -> int:
    """A new admin token for the whole cluster; written back to the file collie read the
    old one from (every sheep rewrites its own copy), else printed."""
    with _route("cluster rotate-token", route_only=True):
        answer = client.post("/cluster/token", {"token": args.new_token} if args.new_token else {})
    token, source = answer.get("token", ""), args.token.file
    if source is not None:
        try:
            write_token(source, token)
        except OSError as err:
            raise CollieError(f"token rotated, but {source} cannot be written ({err.strerror}): "
                              f"the new token is {token}") from None
        return _emit(args, {"file": str(source)}, f"admin token rotated; new token in {source}")
    return _emit(args, answer, token)


def cmd_cluster_recover(client, args) -> int:
    with _route("cluster recover", route_only=True):
        answer = client.post("/cluster/recover", {"action": args.action})
    text = {"enable": "recovery enabled", "disable": "recovery disabled (clients are still served)",
            "force": "cluster recovering with the nodes present"}[args.action]
    return _emit(args, answer, text)


def cmd_cluster_check(client, args) -> int:
    with _route("cluster check", route_only=True):
        answer = client.post("/cluster/check", {"repair": not args.report_only})
    _emit(args, answer, render.render_check_report("cluster", answer))
    return _check_exit(answer)


def _check_exit(answer: dict) -> int:
    """1 when problems remain (reported only, failed repairs, no majority, lost objects)."""
    if "unrepaired" in answer:
        remaining = int(answer.get("unrepaired") or 0)
    else:   # an older sheep
        remaining = int(answer.get("problems") or 0) - int(answer.get("repaired") or 0)
    return Exit.FAILURE if remaining > 0 or answer.get("lost") else Exit.OK


# ---- node -----------------------------------------------------------------------------------------

def cmd_node_list(client, args) -> int:
    answer = client.get("/nodes")
    return _emit(args, answer, render.render_node_list(answer.get("nodes") or []))


def cmd_node_info(client, args) -> int:
    answer = client.get("/nodes")
    return _emit(args, answer, render.render_node_info(answer.get("nodes") or []))


def cmd_node_recovery(client, args) -> int:
    if getattr(args, "action", None) == "set-throttle":
        return _set_throttle(client, args)
    with _route("node recovery", route_only=True):
        if getattr(args, "watch", False):
            return _watch_recovery(client, args)
        answer = client.get("/recovery")
    return _emit(args, answer, render.render_recovery(answer))


def _watch_recovery(client, args) -> int:
    """Refresh ``GET /recovery`` every ``--interval`` s until every node is complete for the
    current epoch (exit 0); a sheep that stops answering ends the watch at once (exit 2)."""
    if hasattr(client, "timeout_s"):
        client.timeout_s = min(client.timeout_s, WATCH_READ_TIMEOUT_S)

    def fetch() -> dict:
        try:
            return client.get("/recovery")
        except CollieError as err:
            if err.exit_code != Exit.UNREACHABLE or err.status is not None:
                raise
            raise CollieError(f"watch stopped: {err.message}", Exit.UNREACHABLE) from err

    watch_recovery(fetch, args.interval, sys.stdout, as_json=getattr(args, "json", False))
    return Exit.OK


def _set_throttle(client, args) -> int:
    body = {}
    if args.objects is not None:
        body["objects_per_s"] = args.objects
    if args.bytes is not None:
        body["bytes_per_s"] = args.bytes
    if not body:
        raise UsageError("set-throttle needs --objects N and/or --bytes SIZE (0: unlimited)")
    with _route("node recovery set-throttle", route_only=True):
        answer = client.post("/recovery/throttle", body)
    return _emit(args, answer, render.render_throttle(answer.get("throttle") or {}))


# ---- vdi ------------------------------------------------------------------------------------------

def cmd_vdi_create(client, args) -> int:
    body = {"name": args.name, "size": args.size}
    if args.copies is not None:
        body["copies"] = args.copies
    entry = client.post("/vdis", body)
    size = format_size(int(entry.get("size", args.size)))
    return _emit(args, entry, f"vdi '{args.name}' created: size {size}, copies {entry.get('copies', '-')}")


def cmd_vdi_list(client, args) -> int:
    answer = client.get("/vdis")
    if not getattr(args, "long", False):
        return _emit(args, answer, render.render_vdi_list(answer.get("vdis") or []))
    with _route("vdi list -l", route_only=True):
        locks = client.get("/locks")
    vdis = render.with_attachments(answer.get("vdis") or [], locks)
    return _emit(args, {**answer, "vdis": vdis}, render.render_vdi_list_long(vdis))


def cmd_vdi_delete(client, args) -> int:
    tag = getattr(args, "tag", None)
    if tag is None:
        answer = client.delete(vdi_path(args.name))
        return _emit(args, answer, f"vdi '{args.name}' deleted")
    with _route("vdi delete -s"):
        answer = client.delete(vdi_path(args.name, "snapshots", quoted(tag)))
    return _emit(args, answer, f"vdi '{args.name}' snapshot '{tag}' deleted")


def cmd_vdi_resize(client, args) -> int:
    entry = client.post(vdi_path(args.name, "resize"), {"size": args.size})
    size = format_size(int(entry.get("size", args.size)))
    return _emit(args, entry, f"vdi '{args.name}' resized to {size}")


def cmd_vdi_read(client, args) -> int:
    """Copy [OFFSET, OFFSET+LENGTH) of the VDI (default: to its end) to stdout, 4 MiB-aligned chunks."""
    offset, length = args.offset or 0, args.length
    size = int(client.get(vdi_path(args.name))["size"])
    if length is None:
        if offset > size:
            raise CollieError(f"offset {offset} is beyond the end of vdi '{args.name}' ({size} bytes)")
        length = size - offset
    elif offset + length > size:   # refuse before streaming anything
        raise CollieError(f"read of {length} bytes at {offset} is past the end of vdi "
                          f"'{args.name}' ({size} bytes)")
    out = sys.stdout.buffer
    progress = Progress.for_transfer(length, sys.stderr, enabled=not args.json)
    pos, end = offset, offset + length
    try:
        while pos < end:
            want = min(CHUNK_BYTES - pos % CHUNK_BYTES, end - pos)
            data = client.get_bytes(vdi_path(args.name, "data"), offset=pos, length=want)
            if len(data) != want:
                raise CollieError(f"short read from vdi '{args.name}' at offset {pos}: "
                                  f"{len(data)} of {want} bytes")
            out.write(data)
            pos += want
            progress.update(want)
        out.flush()
    finally:
        progress.close()
    return Exit.OK


def _read_full(stream, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at end of input (pipes return short reads)."""
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def cmd_vdi_write(client, args) -> int:
    """Write stdin at OFFSET in 4 MiB-aligned chunks: until EOF, or exactly LENGTH bytes (short input fails)."""
    stream = sys.stdin.buffer
    offset, length = args.offset or 0, args.length
    total = length if length is not None else input_remaining(stream)
    progress = Progress.for_transfer(total, sys.stderr, enabled=not args.json)
    pos, written = offset, 0
    try:
        while length is None or written < length:
            want = CHUNK_BYTES - pos % CHUNK_BYTES
            if length is not None:
                want = min(want, length - written)
            data = _read_full(stream, want)
            if data:
                answer = client.put_bytes(vdi_path(args.name, "data"), data, offset=pos)
                if answer.get("written", len(data)) != len(data):
                    raise CollieError(f"short write to vdi '{args.name}' at offset {pos}: "
                                      f"{answer.get('written')} of {len(data)} bytes")
                pos += len(data)
                written += len(data)
                progress.update(len(data))
            if len(data) < want:
                if length is not None:
                    raise CollieError(f"stdin ended after {written} of {length} bytes")
                break
    finally:
        progress.close()
    return _emit(args, {"written": written}, None)


def cmd_vdi_snapshot(client, args) -> int:
    with _route("vdi snapshot"):
        answer = client.post(vdi_path(args.name, "snapshot"), {"tag": args.tag})
    return _emit(args, answer, f"vdi '{args.name}' snapshot '{args.tag}' created")


def cmd_vdi_clone(client, args) -> int:
    # without -s the sheep refuses ("only snapshots can be cloned"), with its own message
    with _route("vdi clone"):
        answer = client.post(vdi_path(args.src, "clone"), {"tag": args.tag, "name": args.dst})
    return _emit(args, answer, f"vdi '{args.dst}' cloned from '{args.src}' snapshot '{args.tag}'")


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    sys.stderr.write(f"{question} [yes/no]: ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_vdi_rollback(client, args) -> int:
    if not args.force and not _confirm("This discards every change made since the snapshot was taken. Continue?"):
        raise CollieError("rollback not confirmed (answer 'yes' on a terminal, or pass -f)")
    with _route("vdi rollback"):
        answer = client.post(vdi_path(args.name, "rollback"), {"tag": args.tag})
    return _emit(args, answer, f"vdi '{args.name}' rolled back to snapshot '{args.tag}'")


def cmd_vdi_tree(client, args) -> int:
    answer = client.get("/vdis")
    return _emit(args, answer, render.render_vdi_tree(answer.get("vdis") or []))


def cmd_vdi_check(client, args) -> int:
    report_only = getattr(args, "report_only", False)
    with _route("vdi check"):
        answer = client.post(vdi_path(args.name, "check"), {"repair": not report_only})
    _emit(args, answer, render.render_check(args.name, answer))
    return _check_exit(answer)


def cmd_vdi_lock_list(client, args) -> int:
    with _route("vdi lock list", route_only=True):
        answer = client.get("/locks")
    return _emit(args, answer, render.render_locks(answer))


def cmd_vdi_lock_unlock(client, args) -> int:
    with _route("vdi lock unlock"):
        answer = client.delete("/locks/" + quoted(args.name))
    return _emit(args, answer, f"vdi '{args.name}' unlocked")


# ---- parser ---------------------------------------------------------------------------------------

def build_parser() -> Parser:
    """The whole command tree; each leaf sets ``func`` to its ``cmd_*`` function."""
    parser = Parser(prog="collie", description="Manage a sheepdog-py cluster through a sheep's admin API.")
    parser.add_argument("-a", "--address", dest="addr", default=None,
                        help=f"sheep address (env SHEEP_ADDR, default {DEFAULT_ADDR})")
    parser.add_argument("-p", "--port", dest="port", type=port_arg, default=None,
                        help=f"sheep admin port (env SHEEP_ADMIN_PORT, default {DEFAULT_ADMIN_PORT})")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding the admin token (else env SHEEP_ADMIN_TOKEN, "
                             "SHEEP_ADMIN_TOKEN_FILE, ~/.config/collie/token)")
    parser.add_argument("--debug", action="store_true", help="log HTTP requests; tracebacks on errors")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")

    # Leaves accept the same options after the command, Sheepdog style; SUPPRESS keeps the top-level value.
    leaf = Parser(add_help=False)
    leaf.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print the API's JSON answer")
    leaf.add_argument("-a", "--address", dest="addr", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    leaf.add_argument("-p", "--port", dest="port", type=port_arg, default=argparse.SUPPRESS,
                      help=argparse.SUPPRESS)
    leaf.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    leaf.add_argument("--token-file", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    groups = parser.add_subparsers(dest="group", metavar="{cluster,node,vdi}", required=True)

    def commands(group_parser, dest="command"):
        return group_parser.add_subparsers(dest=dest, metavar="COMMAND", required=True)

    def add(sub, name, func, help_text):
        p = sub.add_parser(name, parents=[leaf], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    cluster = commands(groups.add_parser("cluster", help="cluster-wide operations"))
    p = add(cluster, "format", cmd_cluster_format, "format the cluster (once)")
    p.add_argument("-c", "--copies", type=count_arg, default=3, help="replicas per object (default 3)")
    p.add_argument("-b", "--block-size-shift", type=count_arg, default=22,
                   help="object size as a power of two (default 22: 4 MiB)")
    add(cluster, "info", cmd_cluster_info, "show cluster status and epoch history")
    add(cluster, "shutdown", cmd_cluster_shutdown, "stop every sheep cleanly")
    p = add(cluster, "rotate-token", cmd_cluster_rotate_token,
            "replace the admin token of every sheep (the old one stops working)")
    p.add_argument("--token", dest="new_token", default=None,
                   help="the new token (default: a random one)")
    p = add(cluster, "recover", cmd_cluster_recover,
            "enable/disable automatic recovery, or force a waiting cluster to go on without missing nodes")
    p.add_argument("action", choices=("enable", "disable", "force"))
    p = add(cluster, "check", cmd_cluster_check, "check and repair the replicas of every VDI")
    p.add_argument("-e", "--report-only", action="store_true", help="only report, repair nothing")

    node = commands(groups.add_parser("node", help="node operations"))
    add(node, "list", cmd_node_list, "list the nodes of the current epoch")
    add(node, "info", cmd_node_info, "show per-node space usage")
    p = add(node, "recovery", cmd_node_recovery,
            "show recovery progress, or 'set-throttle' to limit recovery (objects and/or bytes per second)")
    p.add_argument("action", nargs="?", choices=("set-throttle",), help="set the cluster-wide throttle")
    p.add_argument("--objects", type=_typed(lambda t: _bounded_int(t, 0, 1 << 40, "objects per second")),
                   default=None, help="objects per second (0: unlimited)")
    p.add_argument("--bytes", type=offset_arg, default=None, help="bytes per second, e.g. 50M (0: unlimited)")
    p.add_argument("-w", "--watch", action="store_true",
                   help="refresh until recovery is complete (--json: one JSON document per line)")
    p.add_argument("--interval", type=_typed(_seconds), default=1.0,
                   help="seconds between refreshes with --watch (default 1)")
    cmd_balance.register(node, add, _typed)

    vdi = commands(groups.add_parser("vdi", help="virtual disk image operations"))
    p = add(vdi, "create", cmd_vdi_create, "create a VDI")
    p.add_argument("name")
    p.add_argument("size", type=size_arg, help="size, e.g. 10G")
    p.add_argument("-c", "--copies", type=count_arg, default=None, help="replicas (default: the cluster's)")
    add(vdi, "list", cmd_vdi_list, "list VDIs and snapshots").add_argument(
        "-l", "--long", action="store_true", help="also show where each VDI is attached, and by whom")
    p = add(vdi, "delete", cmd_vdi_delete, "delete a VDI, or one of its snapshots with -s")
    p.add_argument("-s", "--snapshot", dest="tag", default=None, help="snapshot tag or id")
    p.add_argument("name")
    p = add(vdi, "resize", cmd_vdi_resize, "grow a VDI")
    p.add_argument("name")
    p.add_argument("size", type=size_arg, help="new size, e.g. 20G")
    for name, func, text in (("read", cmd_vdi_read, "copy VDI data to stdout"),
                             ("write", cmd_vdi_write, "write stdin into a VDI")):
        p = add(vdi, name, func, text)
        p.add_argument("name")
        p.add_argument("offset", nargs="?", type=offset_arg, default=0, help="byte offset (size suffixes ok)")
        p.add_argument("length", nargs="?", type=size_arg, default=None, help="byte count (size suffixes ok)")
    p = add(vdi, "snapshot", cmd_vdi_snapshot, "take a snapshot")
    p.add_argument("-s", "--snapshot", dest="tag", required=True, help="snapshot tag")
    p.add_argument("name")
    p = add(vdi, "clone", cmd_vdi_clone, "clone a snapshot into a new VDI")
    p.add_argument("-s", "--snapshot", dest="tag", default=None,
                   help="source snapshot tag or id (only snapshots can be cloned)")
    p.add_argument("src")
    p.add_argument("dst")
    p = add(vdi, "rollback", cmd_vdi_rollback, "roll a VDI back to a snapshot")
    p.add_argument("-s", "--snapshot", dest="tag", required=True, help="snapshot tag")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("name")
    backup.add_commands(vdi, add)
    add(vdi, "tree", cmd_vdi_tree, "show VDIs, snapshots and clones as trees")
    p = add(vdi, "check", cmd_vdi_check, "check and repair a VDI's replicas")
    p.add_argument("name")
    p.add_argument("-e", "--report-only", action="store_true", help="only report, repair nothing")
    cmd_qos.register(vdi, add)
    cmd_balance.register_vdi(vdi, add, _typed)
    lock = commands(vdi.add_parser("lock", help="VDI locks"), dest="lock_command")
    add(lock, "list", cmd_vdi_lock_list, "list locked VDIs")
    add(lock, "unlock", cmd_vdi_lock_unlock, "force-release a VDI's lock").add_argument("name")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` and fill address/port from the environment; raises UsageError or _ParserExit."""
    args = build_parser().parse_args(argv)
    if args.addr is None:
        args.addr = os.environ.get("SHEEP_ADDR") or DEFAULT_ADDR
    if args.port is None:
        env = os.environ.get("SHEEP_ADMIN_PORT")
        try:
            args.port = _port(env) if env else DEFAULT_ADMIN_PORT
        except ValueError as err:
            raise UsageError(f"SHEEP_ADMIN_PORT: {err}") from None
    return args


def _fail(message: str) -> None:
    print(f"collie: {' '.join(message.split())}", file=sys.stderr)


def main(argv=None, client_factory=AdminClient) -> int:
    """Run one collie command line; return its exit code (the console script passes it to sys.exit)."""
    try:
        args = parse_args(argv)
    except _ParserExit as done:
        return done.status
    except UsageError as err:
        _fail(str(err))
        return Exit.USAGE
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        try:
            token = find_token(args.token_file)
        except TokenError as err:
            raise CollieError(str(err), Exit.UNREACHABLE) from None
        args.token = token
        client = client_factory(args.addr, args.port, token=token.value,
                                token_source=token.source)
        try:
            return int(args.func(client, args))
        finally:
            client.close()
    except CollieError as err:
        if args.debug:
            traceback.print_exc()
        _fail(err.message)
        return err.exit_code
    except UsageError as err:          # a combination of arguments a command refuses
        _fail(str(err))
        return Exit.USAGE
    except BrokenPipeError:
        try:  # keep the interpreter's final flush from complaining about the closed pipe again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        _fail("output closed (broken pipe)")
        return Exit.FAILURE
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as err:  # the one catch-all: a bug, reported in one line
        if args.debug:
            traceback.print_exc()
        _fail(f"internal error: {type(err).__name__}: {err} (run with --debug for details)")
        return Exit.FAILURE
