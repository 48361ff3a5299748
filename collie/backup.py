"""``collie vdi backup`` and ``collie vdi restore``: backup streams (`vdi.backup`) on stdout
and stdin.

backup
    ``GET /vdis/NAME/snapshots/TO/diff?from=FROM`` gives the changed ranges and the
    stream's header; the data of each range is read in 4 MiB-aligned chunks from the
    snapshot data route (snapshots never change, so reading them piece by piece is
    consistent) and written as records, then the end record and checksum.

restore
    The whole stream is checked before the sheep sees any of its data: its header goes
    to ``POST /vdis/NAME/restore/check`` (a base that does not match is refused at once),
    then every byte is decoded and the checksum compared, reading a regular file twice
    (once to check, once to send) and copying a pipe to a temporary file (in ``$TMPDIR``)
    while checking it.  Only an intact stream is sent (``PUT /vdis/NAME/restore``), where
    the sheep decodes and checks it again before it commits anything.  ``--no-spool``
    sends a pipe as it comes: then the sheep's check is the only one (it still commits
    nothing from a bad stream, but writes, then discards, what came before the fault).
"""
from __future__ import annotations

import sys
import tempfile

from collie import render
from collie.client import CollieError, Exit, quoted, vdi_path
from collie.progress import Progress
from collie.sizes import format_size, input_remaining
import vdi.backup as stream

CHUNK_BYTES = 4 << 20           # data read per request (records are at most this)
READ_BYTES = 1 << 20            # stdin and spool reads


def add_commands(vdi, add) -> None:
    """The two commands, under ``collie vdi`` (``add`` is cli.build_parser's helper)."""
    p = add(vdi, "backup", cmd_vdi_backup,
            "write a snapshot's changes since an older one (or all its data) to stdout")
    p.add_argument("-F", "--from", dest="from_tag", default=None,
                   help="the older snapshot (tag or id); without it, a full backup")
    p.add_argument("-s", "--snapshot", dest="tag", required=True,
                   help="the snapshot to back up (tag or id)")
    p.add_argument("name")
    p = add(vdi, "restore", cmd_vdi_restore,
            "apply a backup stream from stdin onto a VDI, then snapshot it as TAG")
    p.add_argument("-s", "--snapshot", dest="tag", required=True,
                   help="tag of the snapshot the restore makes")
    p.add_argument("-f", "--force", action="store_true",
                   help="let a full restore discard data written since the VDI's last snapshot")
    p.add_argument("--no-spool", action="store_true",
                   help="send a piped stream as it comes, unchecked (the sheep still checks "
                        "it before committing)")
    p.add_argument("name")


def _unsupported(what: str, err: CollieError) -> CollieError:
    if err.route_missing:
        return CollieError(f"'{what}' is not supported by this sheep (HTTP {err.status})",
                           Exit.FAILURE, status=err.status, code=err.code)
    return err


def _is_tty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


# ---- backup ---------------------------------------------------------------------------------

def cmd_vdi_backup(client, args) -> int:
    """Write the backup stream of snapshot ``-s`` (since ``-F``) to stdout."""
    if _is_tty(sys.stdout):
        raise CollieError("refusing to write a backup stream to a terminal: redirect stdout "
                          "to a file or a pipe", Exit.USAGE)
    snap = vdi_path(args.name, "snapshots", quoted(args.tag))
    params = {"from": args.from_tag} if args.from_tag else {}
    try:
        answer = client.get(snap + "/diff", **params)
    except CollieError as err:
        raise _unsupported("vdi backup", err) from err
    out = sys.stdout.buffer
    # every read names the snapshot the header describes: a tag deleted and made again
    # during the backup is refused rather than mixed into the stream
    vid = answer["header"]["to"].get("vid")
    pinned = {"vid": vid} if vid is not None else {}
    encoder = stream.StreamEncoder(answer["header"])
    progress = Progress.for_transfer(int(answer.get("data_bytes") or 0), sys.stderr,
                                     enabled=not args.json)
    try:
        out.write(encoder.start())
        for offset, length, kind in answer["extents"]:
            if kind == "zero":
                out.write(encoder.zero(offset, length))
                continue
            pos, end = offset, offset + length
            while pos < end:
                want = min(CHUNK_BYTES - pos % CHUNK_BYTES, end - pos)
                data = client.get_bytes(snap + "/data", offset=pos, length=want, **pinned)
                if len(data) != want:
                    raise CollieError(f"short read from snapshot '{args.tag}' of vdi "
                                      f"'{args.name}' at offset {pos}: {len(data)} of {want} "
                                      "bytes")
                out.write(encoder.data(pos, data))
                out.write(data)
                pos += want
                progress.update(want)
        out.write(encoder.finish())
        out.flush()
    finally:
        progress.close()
    return Exit.OK


# ---- restore --------------------------------------------------------------------------------

def _corrupt(err: stream.StreamError) -> CollieError:
    return CollieError(f"{err.message}; nothing was restored", Exit.FAILURE)


def _read_header(src, decoder) -> tuple[dict, bytes]:
    """Read until the header is decoded; (header, the bytes read)."""
    seen = bytearray()
    while True:
        chunk = src.read(READ_BYTES)
        if not chunk:
            decoder.close()
        seen += chunk
        events = decoder.feed(chunk)
        if events:
            return events[0].header, bytes(seen)


def _check_rest(src, decoder, spool=None, total: int | None = None,
                enabled: bool = True) -> None:
    """Decode the rest of ``src`` (copying it to ``spool``) until the verified end."""
    progress = Progress.for_transfer(total, sys.stderr, enabled=enabled)
    try:
        while True:
            chunk = src.read(READ_BYTES)
            if not chunk:
                decoder.close()
                return
            decoder.feed(chunk)
            if spool is not None:
                spool.write(chunk)
            progress.update(len(chunk))
    finally:
        progress.close()


def _chunks(prefix: bytes, src, progress):
    """The body of the restore request: ``prefix`` then the rest of ``src``."""
    if prefix:
        progress.update(len(prefix))
        yield prefix
    while True:
        chunk = src.read(READ_BYTES)
        if not chunk:
            return
        progress.update(len(chunk))
        yield chunk


def cmd_vdi_restore(client, args) -> int:
    """Check the stream on stdin whole, then have the sheep apply it onto ``name``."""
    src = sys.stdin.buffer
    if _is_tty(sys.stdin):
        raise CollieError("refusing to read a backup stream from a terminal: redirect stdin "
                          "from a file or a pipe", Exit.USAGE)
    bars = not args.json
    size = input_remaining(src)
    start = src.tell() if size is not None else 0
    decoder = stream.StreamDecoder(keep_data=False)
    spool = None
    try:
        header, prefix = _read_header(src, decoder)
        try:
            client.post(vdi_path(args.name, "restore", "check"),
                        {"tag": args.tag, "header": header, "force": bool(args.force)})
        except CollieError as err:
            raise _unsupported("vdi restore", err) from err
        if size is not None:                    # a file: check it, then send it from the start
            _check_rest(src, decoder, total=size, enabled=bars)
            src.seek(start)
            body, prefix, total = src, b"", size
        elif not args.no_spool:                 # a pipe: keep a checked copy, send that
            spool = tempfile.TemporaryFile(prefix="collie-restore-")
            spool.write(prefix)
            _check_rest(src, decoder, spool=spool, enabled=bars)
            total = spool.tell()
            spool.seek(0)
            body, prefix = spool, b""
        else:
            body, total = src, None
    except stream.StreamError as err:
        if spool is not None:
            spool.close()
        raise _corrupt(err) from None
    progress = Progress.for_transfer(total, sys.stderr, enabled=bars)
    try:
        answer = client.put_stream(vdi_path(args.name, "restore"), _chunks(prefix, body, progress),
                                   tag=args.tag, **({"force": 1} if args.force else {}))
    finally:
        progress.close()
        if spool is not None:
            spool.close()
    text = (f"vdi '{args.name}' restored as snapshot '{args.tag}' "
            f"({format_size(int(answer.get('data_bytes') or 0))} written, "
            f"{format_size(int(answer.get('zero_bytes') or 0))} zeroed)")
    print(render.render_json(answer) if getattr(args, "json", False) else text)
    return Exit.OK
