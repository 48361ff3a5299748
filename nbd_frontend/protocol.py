"""NBD transmission phase, sans-IO: constants, wire structs, request parser, reply encoders.

Theory of operation
-------------------
The gevent shell (``nbd_frontend.server``) only moves bytes.  Everything that
knows the NBD wire format lives here and in ``nbd_frontend.handshake``:

* ``RequestParser`` turns the client's byte stream into ``Request`` events.  A
  WRITE request is emitted only once its payload is complete; while a payload is
  pending, ``payload_buffer()`` hands out the writable tail of the request's own
  preallocated ``bytearray`` so the shell can ``recv_into`` it directly (bytes fed
  through ``receive_data`` are copied into the same buffer, so both paths agree).
* ``check_request`` decides, from the negotiated state alone, whether a parsed
  request may run or which errno it gets (unknown command or flag, range, size).
* The ``*_reply`` functions build reply headers.  Bulk data (read payloads) is
  never concatenated: encoders return a small header and the caller sends the
  payload as a separate buffer.

Framing errors that leave the stream unparseable (bad request magic, a WRITE
whose payload exceeds ``MAX_PAYLOAD``) raise ``NbdProtocolError``: the shell
closes that one connection.  Nothing else ever escapes the parser.

Constants follow the NetworkBlockDevice ``doc/proto.md`` (compact headers only;
extended headers are not negotiated).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from common.errors import ProtocolError


class NbdProtocolError(ProtocolError):
    """the peer broke the NBD framing; the connection must be closed"""


# -- handshake magics and flags ------------------------------------------------
NBDMAGIC = 0x4E42444D41474943          # b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # b"IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0            # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0          # client flags
FLAG_C_NO_ZEROES = 1 << 1
KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_PEEK_EXPORT = 4
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# option reply types
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
_REP_ERR = 1 << 31
REP_ERR_UNSUP = _REP_ERR | 1
REP_ERR_POLICY = _REP_ERR | 2
REP_ERR_INVALID = _REP_ERR | 3
REP_ERR_PLATFORM = _REP_ERR | 4
REP_ERR_TLS_REQD = _REP_ERR | 5
REP_ERR_UNKNOWN = _REP_ERR | 6
REP_ERR_SHUTDOWN = _REP_ERR | 7
REP_ERR_BLOCK_SIZE_REQD = _REP_ERR | 8
REP_ERR_TOO_BIG = _REP_ERR | 9

# NBD_REP_INFO types
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11

# -- transmission ----------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) | 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2

# base:allocation status bits
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

META_BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1                  # base:allocation's id; other contexts get 2, 3, ...

# NBD error values (the protocol fixes these numbers, not the host's errno.h)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108
ERRNO_NAMES = {EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
               EOVERFLOW: "EOVERFLOW", ENOTSUP: "ENOTSUP", ESHUTDOWN: "ESHUTDOWN"}

# block sizes advertised in NBD_INFO_BLOCK_SIZE
MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_PAYLOAD = 32 * 1024 * 1024

# -- precompiled structs -----------------------------------------------------------
REQUEST = struct.Struct("!IHHQQI")              # magic, flags, type, handle, offset, length
SIMPLE_REPLY = struct.Struct("!IIQ")            # magic, error, handle
STRUCTURED_HEADER = struct.Struct("!IHHQI")     # magic, flags, type, handle, length
U64 = struct.Struct("!Q")
ERROR_CHUNK = struct.Struct("!IH")              # error, message length
BLOCK_DESCRIPTOR = struct.Struct("!II")         # length, status flags
U32 = struct.Struct("!I")
_TYPE_LENGTH = struct.Struct("!6xH16xI")        # a request header's type and length

assert REQUEST.size == 28 and SIMPLE_REPLY.size == 16 and STRUCTURED_HEADER.size == 20

_MAX_ERROR_MESSAGE = 4096


@dataclass(frozen=True, slots=True)
class Request:
    """One complete request; ``payload`` is the WRITE data (a bytearray), else None."""
    flags: int
    type: int
    handle: int
    offset: int
    length: int
    payload: bytearray | None = None

    @classmethod
    def unpack(cls, buf, offset: int = 0) -> "Request":
        magic, flags, typ, handle, off, length = REQUEST.unpack_from(buf, offset)
        if magic != REQUEST_MAGIC:
            raise NbdProtocolError(f"bad request magic 0x{magic:08x}")
        return cls(flags, typ, handle, off, length)

    def pack(self) -> bytes:
        """The request header as a client sends it (tests and tools)."""
        return REQUEST.pack(REQUEST_MAGIC, self.flags, self.type, self.handle, self.offset, self.length)


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class RequestParser:
    """Incremental transmission-phase parser (server side).

    Contract: feed bytes with ``receive_data`` (or, while ``payload_buffer()`` is
    not None, ``recv_into`` that buffer and report the count with
    ``payload_received``); call ``next_event()`` until it returns ``NEED_DATA``.
    Each call returns one ``Request`` in arrival order.  Raises only
    ``NbdProtocolError``, after which the parser is dead and the stream must be
    dropped.
    """

    __slots__ = ("_buf", "_pending", "_filled", "_dead")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: Request | None = None      # WRITE waiting for its payload
        self._filled = 0
        self._dead = False

    def receive_data(self, data) -> None:
        if self._dead:
            raise NbdProtocolError("parser already failed")
        if self._pending is not None:
            data = memoryview(data)
            take = min(len(data), len(self._pending.payload) - self._filled)
            self._pending.payload[self._filled:self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
        self._buf += data

    def payload_buffer(self) -> memoryview | None:
        """Writable view of the missing part of the pending WRITE payload, else None."""
        if self._pending is None or self._filled == len(self._pending.payload):
            return None
        return memoryview(self._pending.payload)[self._filled:]

    def payload_received(self, n: int) -> None:
        """``n`` bytes were written into the start of the last ``payload_buffer()``."""
        if self._pending is None or n < 0 or self._filled + n > len(self._pending.payload):
            raise NbdProtocolError("payload_received out of step")
        self._filled += n

    def peek(self) -> tuple[int, int] | None:
        """``(type, length)`` of the request ``next_event()`` will parse next, before it
        allocates anything (a WRITE's payload); None while a WRITE payload is pending
        or no whole header is buffered.  The magic is not checked here."""
        if self._pending is not None or len(self._buf) < REQUEST.size:
            return None
        return _TYPE_LENGTH.unpack_from(self._buf)

    def next_event(self):
        if self._dead:
            raise NbdProtocolError("parser already failed")
        if self._pending is not None:
            if self._filled < len(self._pending.payload):
                return NEED_DATA
            req, self._pending = self._pending, None
            return req
        if len(self._buf) < REQUEST.size:
            return NEED_DATA
        try:
            req = Request.unpack(self._buf)
        except NbdProtocolError:
            self._dead = True
            raise
        del self._buf[:REQUEST.size]
        if req.type != CMD_WRITE:
            return req
        if req.length > MAX_PAYLOAD:
            self._dead = True
            raise NbdProtocolError(f"write payload of {req.length} bytes exceeds {MAX_PAYLOAD}")
        payload = bytearray(req.length)
        take = min(len(self._buf), req.length)
        payload[:take] = self._buf[:take]
        del self._buf[:take]
        self._pending = Request(req.flags, req.type, req.handle, req.offset, req.length, payload)
        self._filled = take
        return self.next_event()


@dataclass(frozen=True, slots=True)
class Transmission:
    """What the handshake negotiated, as the request checker needs it."""
    size: int
    readonly: bool
    structured: bool
    meta_contexts: frozenset = frozenset()    # context ids selected for BLOCK_STATUS


# Which command flags each command accepts (anything else is EINVAL).
_ALLOWED_FLAGS = {
    CMD_READ: CMD_FLAG_DF,
    CMD_WRITE: CMD_FLAG_FUA,
    CMD_DISC: 0,
    CMD_FLUSH: 0,
    CMD_TRIM: CMD_FLAG_FUA,
    CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
    CMD_BLOCK_STATUS: CMD_FLAG_REQ_ONE,
}
_MODIFYING = frozenset({CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES})
_RANGED = frozenset({CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS})


def transmission_flags(readonly: bool, structured: bool) -> int:
    """The 16-bit transmission flags for an export (never CAN_MULTI_CONN: one writer)."""
    flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA
    if structured:
        flags |= FLAG_SEND_DF
    if readonly:
        return flags | FLAG_READ_ONLY
    return flags | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO


def check_request(req: Request, tx: Transmission) -> tuple[int, str]:
    """(0, "") when ``req`` may run, else (NBD errno, message).  Pure; never raises."""
    allowed = _ALLOWED_FLAGS.get(req.type)
    if allowed is None:
        return EINVAL, f"unknown command {req.type}"
    if req.type == CMD_READ and not tx.structured:
        allowed = 0
    if req.flags & ~allowed:
        return EINVAL, f"flags 0x{req.flags:x} not valid for command {req.type}"
    if req.type in _MODIFYING and tx.readonly:
        return EPERM, "export is read-only"
    if req.type == CMD_BLOCK_STATUS and not tx.meta_contexts:
        return EINVAL, "no metadata context negotiated"
    if req.type in _RANGED:
        if req.length == 0:
            return EINVAL, "zero length request"
        if req.type == CMD_READ and req.length > MAX_PAYLOAD:
            return EINVAL, f"read of {req.length} bytes exceeds {MAX_PAYLOAD}"
        if req.offset + req.length > tx.size:
            if req.type in _MODIFYING:
                return ENOSPC, "request beyond the end of the export"
            return EINVAL, "request beyond the end of the export"
    if (req.type == CMD_WRITE_ZEROES and req.flags & CMD_FLAG_FAST_ZERO
            and req.flags & CMD_FLAG_NO_HOLE):
        # Zeroing without punching holes means writing zeros: never fast here.
        return ENOTSUP, "fast zero needs holes"
    return 0, ""


# -- reply encoders ----------------------------------------------------------------

def simple_reply(handle: int, error: int = 0) -> bytes:
    """16-byte simple reply header (a successful READ's data follows as its own buffer)."""
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)


def structured_header(handle: int, rtype: int, length: int, flags: int = REPLY_FLAG_DONE) -> bytes:
    return STRUCTURED_HEADER.pack(STRUCTURED_REPLY_MAGIC, flags, rtype, handle, length)


def read_reply_header(handle: int, offset: int, length: int, structured: bool) -> bytes:
    """Header for a successful READ of ``length`` bytes; the data is sent right after it."""
    if not structured:
        return simple_reply(handle)
    return structured_header(handle, REPLY_TYPE_OFFSET_DATA, U64.size + length) + U64.pack(offset)


def error_reply(handle: int, error: int, structured: bool, message: str = "") -> bytes:
    """A failed request's whole reply: a simple reply, or one ERROR chunk with DONE."""
    if not structured:
        return simple_reply(handle, error)
    msg = message.encode("utf-8", "replace")[:_MAX_ERROR_MESSAGE]
    return (structured_header(handle, REPLY_TYPE_ERROR, ERROR_CHUNK.size + len(msg))
            + ERROR_CHUNK.pack(error, len(msg)) + msg)


def normalize_extents(extents, length: int, req_one: bool = False,
                      mask: int = STATE_HOLE | STATE_ZERO) -> list[tuple[int, int]]:
    """Clip an export's ``(length, flags)`` list to the request and merge equal neighbours.

    The result is non-empty, every length > 0, the sum <= ``length`` (the spec
    allows a short answer) and flags limited to ``mask`` (base:allocation: HOLE|ZERO).
    """
    out: list[list[int]] = []
    left = length
    for ext_len, ext_flags in extents:
        if left <= 0:
            break
        ext_len = min(int(ext_len), left)
        if ext_len <= 0:
            continue
        ext_flags = int(ext_flags) & mask
        if out and out[-1][1] == ext_flags:
            out[-1][0] += ext_len
        else:
            out.append([ext_len, ext_flags])
        left -= ext_len
    if not out:
        out = [[length, 0]]
    if req_one:
        out = out[:1]
    return [(a, b) for a, b in out]


def block_status_reply(handle: int, context_id: int, extents: list[tuple[int, int]],
                       done: bool = True) -> bytes:
    """One BLOCK_STATUS chunk for already normalized extents (with DONE unless ``done`` is
    False: a request with several contexts gets one chunk each, DONE on the last)."""
    body = bytearray(U32.pack(context_id))
    for ext_len, ext_flags in extents:
        body += BLOCK_DESCRIPTOR.pack(ext_len, ext_flags)
    return structured_header(handle, REPLY_TYPE_BLOCK_STATUS, len(body),
                             REPLY_FLAG_DONE if done else 0) + bytes(body)
