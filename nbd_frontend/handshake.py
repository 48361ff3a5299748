"""NBD fixed-newstyle handshake, server side, sans-IO (h11 style).

Theory of operation
-------------------
``ServerHandshake`` owns no socket.  The shell sends ``data_to_send()`` (the
greeting first), feeds what the client sends to ``receive_data()`` and calls
``next_event()`` until ``NEED_DATA``.  Options that need nothing from the outside
(STRUCTURED_REPLY, LIST/SET_META_CONTEXT, unknown options, malformed option data,
a refused STARTTLS) are answered inside the machine: their replies just appear in
``data_to_send()``.
Options that need the export provider surface as events, and the machine waits
in ``DECIDE`` until the shell answers with exactly one call:

=======================  =======================================================
event                    shell answers with
=======================  =======================================================
``ListRequest``          ``reply_list(names)``
``ExportRequest`` (INFO) ``accept_export(size, readonly)`` / ``refuse_export(code, msg)``
``ExportRequest`` (GO,   same; acceptance enters transmission (``Ready`` event);
EXPORT_NAME)             refusing EXPORT_NAME closes (the protocol has no error reply)
``Aborted``              nothing: send the pending ACK and close
``StartTls``             send the pending ACK, run the TLS handshake on the same
                         socket, then ``tls_started()``; a failed TLS handshake closes
``Ready``                switch to ``RequestParser``; ``trailing_data()`` belongs to it
``MetaContextRequest``   ``reply_meta_contexts(names)``: every context besides
                         ``base:allocation`` the export offers (only with
                         ``extra_contexts``; see below)
=======================  =======================================================

Meta contexts
-------------
``base:allocation`` is answered inside the machine.  With ``extra_contexts`` (the
provider offers more, e.g. ``x-sheepdog:diff:TAG`` on snapshot exports) a LIST with no
queries, or a LIST or SET with a query outside the ``base:`` namespace, surfaces a
``MetaContextRequest``: the shell names what the export offers and the machine matches
the queries against it (`match_contexts`: a SET selects exact names; a LIST also takes a
query ending in ``:`` as a prefix).  Selected contexts get ids: 1 for base:allocation,
2, 3, ... for the others in the order offered; LIST replies carry id 0 (the spec
reserves it there).  ``Ready.contexts`` lists ``(id, name)`` for the transmission.

Invariants
----------
* At most one option is in progress; the next one is not parsed until the
  current one has its final reply (clients must not pipeline options anyway).
* State changes happen only through ``_TRANSITIONS``; anything not in the table
  raises ``NbdProtocolError``.  It is the only exception this module raises.
* ``TRANSMISSION`` and ``CLOSED`` are terminal.
* Option data is buffered only up to ``MAX_OPTION_DATA``; longer data is skipped
  without buffering and the option gets an error reply.
* At most ``max_options`` options per handshake (counted at each option header);
  the next one closes the connection (``NbdProtocolError``).

TLS (``ServerHandshake(tls=True)``: qemu semantics, TLS is required)
---------------------------------------------------------------------
Until STARTTLS succeeds every option but STARTTLS and ABORT is answered with
``NBD_REP_ERR_TLS_REQD`` and EXPORT_NAME (which has no error reply) closes.
STARTTLS is ACKed and the machine waits in ``TLS_WAIT``; bytes the client sent
after the STARTTLS option, before seeing the ACK, are a protocol violation (they
would be plaintext taken for TLS): the connection closes.  Nothing is consumed
past the STARTTLS option, so the TLS handshake reads its ClientHello straight
from the socket.  After ``tls_started()`` negotiation goes on inside TLS; since
nothing could be negotiated before, nothing has to be forgotten.  A second
STARTTLS gets ``NBD_REP_ERR_INVALID``.  Without ``tls``, STARTTLS gets
``NBD_REP_ERR_POLICY`` "TLS not configured" (what qemu-nbd answers).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from nbd_frontend import protocol as p
from nbd_frontend.protocol import NEED_DATA, NbdProtocolError

GREETING = struct.Struct("!QQH")            # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct("!I")
OPTION_HEADER = struct.Struct("!QII")       # IHAVEOPT, option, data length
OPTION_REPLY = struct.Struct("!QIII")       # magic, option, reply type, data length
EXPORT_NAME_REPLY = struct.Struct("!QH")    # size, transmission flags (+124 zeroes)
INFO_EXPORT = struct.Struct("!HQH")         # type, size, transmission flags
INFO_BLOCK_SIZE = struct.Struct("!HIII")    # type, minimum, preferred, maximum
U16 = struct.Struct("!H")
U32 = p.U32

MAX_OPTION_DATA = 16 * 1024
MAX_STRING = 4096
MAX_OPTIONS = 64
SERVER_HANDSHAKE_FLAGS = p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES

# states
CLIENT_FLAGS_WAIT = "CLIENT_FLAGS"
OPTIONS = "OPTIONS"
DISCARD = "DISCARD"
DECIDE = "DECIDE"
TLS_WAIT = "TLS_WAIT"
TRANSMISSION = "TRANSMISSION"
CLOSED = "CLOSED"

# (state, input) -> next state.  Inputs: what the client sent or the shell answered.
_TRANSITIONS = {
    (CLIENT_FLAGS_WAIT, "client_flags"): OPTIONS,
    (OPTIONS, "answered_inline"): OPTIONS,
    (OPTIONS, "oversized_option"): DISCARD,
    (DISCARD, "discarded"): OPTIONS,
    (OPTIONS, "needs_shell"): DECIDE,
    (OPTIONS, "abort"): CLOSED,
    (DECIDE, "answered"): OPTIONS,
    (DECIDE, "go"): TRANSMISSION,
    (DECIDE, "export_name_refused"): CLOSED,
    (OPTIONS, "starttls"): TLS_WAIT,
    (TLS_WAIT, "tls_started"): OPTIONS,
}

# what a client may send before STARTTLS when TLS is required
_BEFORE_TLS = (p.OPT_STARTTLS, p.OPT_ABORT)


@dataclass(frozen=True)
class ListRequest:
    """NBD_OPT_LIST: answer with ``reply_list(names)``."""


@dataclass(frozen=True)
class ExportRequest:
    """NBD_OPT_INFO, NBD_OPT_GO or NBD_OPT_EXPORT_NAME for ``name``."""
    option: int
    name: str
    info_requests: tuple[int, ...] = ()


@dataclass(frozen=True)
class MetaContextRequest:
    """LIST/SET_META_CONTEXT needing the provider: answer ``reply_meta_contexts(names)``
    with every extra context export ``export`` offers."""
    option: int
    export: str
    queries: tuple[str, ...]


@dataclass(frozen=True)
class Aborted:
    """NBD_OPT_ABORT: the ACK is queued; close after sending it."""


@dataclass(frozen=True)
class StartTls:
    """NBD_OPT_STARTTLS accepted: send the ACK, wrap the socket, call ``tls_started()``."""


@dataclass(frozen=True)
class Ready:
    """Negotiation finished; transmission starts with these parameters."""
    name: str
    size: int
    readonly: bool
    structured: bool
    meta_contexts: frozenset
    flags: int
    contexts: tuple = ()            # (id, name) of the selected meta contexts, by id

    def transmission(self) -> p.Transmission:
        return p.Transmission(self.size, self.readonly, self.structured, self.meta_contexts)


def match_contexts(queries, available, listing: bool) -> list[str]:
    """The names of ``available`` (extra contexts, in their order) that ``queries`` ask
    for: exact names; for a LIST also every name a query ending in ``:`` prefixes, and
    everything when there are no queries.  No duplicates."""
    if listing and not queries:
        return list(dict.fromkeys(available))
    wanted = []
    for name in dict.fromkeys(available):
        for q in queries:
            if q == name or (listing and q.endswith(":") and name.startswith(q)):
                wanted.append(name)
                break
    return wanted


def option_reply(option: int, rtype: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(p.OPTION_REPLY_MAGIC, option, rtype, len(data)) + data


class _BadOption(Exception):
    """Internal: malformed option data, answered with NBD_REP_ERR_INVALID."""


def _string(data: bytes, what: str) -> str:
    if len(data) > MAX_STRING:
        raise _BadOption(f"{what} too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadOption(f"{what} is not UTF-8") from None
    if "\0" in text:
        raise _BadOption(f"{what} contains NUL")
    return text


class _Reader:
    """Bounds-checked cursor over one option's data."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _BadOption("option data too short")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, st: struct.Struct):
        return st.unpack(self.take(st.size))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _BadOption("trailing bytes in option data")


class ServerHandshake:
    """Server side of fixed-newstyle negotiation (see module docstring).

    ``tls``: TLS is required (STARTTLS first); ``max_options``: options allowed in
    this handshake."""

    def __init__(self, tls: bool = False, max_options: int = MAX_OPTIONS,
                 extra_contexts: bool = False) -> None:
        self.state = CLIENT_FLAGS_WAIT
        self.tls = tls
        self.extra_contexts = extra_contexts  # ask the shell about non-base contexts
        self.tls_pending = tls              # TLS required and not yet started
        self.max_options = max_options
        self._options = 0
        self._in = bytearray()
        self._out = bytearray(GREETING.pack(p.NBDMAGIC, p.IHAVEOPT, SERVER_HANDSHAKE_FLAGS))
        self.client_flags = 0
        self.structured = False
        self._meta_export: str | None = None     # export named in the last SET_META_CONTEXT
        self._meta_ids: frozenset = frozenset()
        self._meta_names: tuple = ()             # (id, name) selected by that SET
        self._discard_left = 0
        self._discard_option = 0
        self._current: ExportRequest | ListRequest | MetaContextRequest | None = None
        self._ready: Ready | None = None
        self._ready_reported = False

    # -- plumbing ----------------------------------------------------------------
    def _go(self, transition: str) -> None:
        nxt = _TRANSITIONS.get((self.state, transition))
        if nxt is None:
            raise NbdProtocolError(f"{transition} not allowed in handshake state {self.state}")
        self.state = nxt

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def trailing_data(self) -> bytes:
        """Bytes received after the option that ended the handshake (they belong to
        transmission); data fed in TRANSMISSION is kept here too."""
        data, self._in = bytes(self._in), bytearray()
        return data

    def receive_data(self, data) -> None:
        if self.state == CLOSED:
            raise NbdProtocolError("data after the handshake was closed")
        if self.state == TLS_WAIT:
            self.state = CLOSED
            raise NbdProtocolError("plaintext data where the TLS handshake belongs")
        if self.state == DISCARD:
            skip = min(len(data), self._discard_left)
            self._discard_left -= skip
            data = memoryview(data)[skip:]
        self._in += data

    # -- events ------------------------------------------------------------------
    def next_event(self):
        """Next event, or NEED_DATA.  Raises NbdProtocolError on a broken stream."""
        while True:
            if self.state == TRANSMISSION:
                if self._ready_reported:
                    return NEED_DATA
                self._ready_reported = True
                return self._ready
            if self.state in (DECIDE, CLOSED, TLS_WAIT):
                return NEED_DATA
            if self.state == CLIENT_FLAGS_WAIT:
                if len(self._in) < CLIENT_FLAGS.size:
                    return NEED_DATA
                (flags,) = CLIENT_FLAGS.unpack_from(self._in)
                del self._in[:CLIENT_FLAGS.size]
                if flags & ~p.KNOWN_CLIENT_FLAGS:
                    self.state = CLOSED
                    raise NbdProtocolError(f"unknown client flags 0x{flags:x}")
                self.client_flags = flags
                self._go("client_flags")
                continue
            if self.state == DISCARD:
                if self._discard_left:
                    return NEED_DATA
                self._go("discarded")
                if self._refused_before_tls(self._discard_option):
                    rtype = p.REP_ERR_TLS_REQD
                elif self._discard_option not in _HANDLERS:
                    rtype = p.REP_ERR_UNSUP
                else:
                    rtype = p.REP_ERR_TOO_BIG
                self._out += option_reply(self._discard_option, rtype, b"option data too long")
                continue
            event = self._next_option()
            if event is not None:
                return event

    def _next_option(self):
        """Parse one option in OPTIONS; returns an event, NEED_DATA, or None to loop."""
        if len(self._in) < OPTION_HEADER.size:
            return NEED_DATA
        magic, option, length = OPTION_HEADER.unpack_from(self._in)
        if magic != p.IHAVEOPT:
            self.state = CLOSED
            raise NbdProtocolError(f"bad option magic 0x{magic:016x}")
        if self._options >= self.max_options:
            self.state = CLOSED
            raise NbdProtocolError(f"more than {self.max_options} options in the handshake")
        if option == p.OPT_EXPORT_NAME and self.tls_pending:
            self.state = CLOSED
            raise NbdProtocolError("EXPORT_NAME before STARTTLS (TLS is required)")
        if length > MAX_OPTION_DATA:
            if option == p.OPT_EXPORT_NAME:
                self.state = CLOSED
                raise NbdProtocolError("EXPORT_NAME data too long")
            self._options += 1
            del self._in[:OPTION_HEADER.size]
            skip = min(len(self._in), length)
            del self._in[:skip]
            self._discard_left = length - skip
            self._discard_option = option
            self._go("oversized_option")
            return None
        if len(self._in) < OPTION_HEADER.size + length:
            return NEED_DATA
        data = bytes(self._in[OPTION_HEADER.size:OPTION_HEADER.size + length])
        del self._in[:OPTION_HEADER.size + length]
        self._options += 1
        if self._refused_before_tls(option):
            self._out += option_reply(option, p.REP_ERR_TLS_REQD,
                                      b"TLS is required: send STARTTLS first")
            self._go("answered_inline")
            return None
        handler = _HANDLERS.get(option)
        if handler is None:
            self._out += option_reply(option, p.REP_ERR_UNSUP, b"option not supported")
            self._go("answered_inline")
            return None
        try:
            return handler(self, option, data)
        except _BadOption as exc:
            if option == p.OPT_EXPORT_NAME:
                self.state = CLOSED
                raise NbdProtocolError(str(exc)) from None
            self._out += option_reply(option, p.REP_ERR_INVALID, str(exc).encode())
            self._go("answered_inline")
            return None

    def _refused_before_tls(self, option: int) -> bool:
        return self.tls_pending and option not in _BEFORE_TLS

    # -- option handlers (client input) ---------------------------------------------
    def _opt_export_name(self, option: int, data: bytes):
        self._current = ExportRequest(option, _string(data, "export name"))
        self._go("needs_shell")
        return self._current

    def _opt_abort(self, option: int, data: bytes):
        self._out += option_reply(option, p.REP_ACK)
        self._go("abort")
        return Aborted()

    def _opt_starttls(self, option: int, data: bytes):
        if data:
            raise _BadOption("STARTTLS takes no data")
        if not self.tls:
            self._out += option_reply(option, p.REP_ERR_POLICY, b"TLS not configured")
        elif not self.tls_pending:
            self._out += option_reply(option, p.REP_ERR_INVALID, b"TLS already enabled")
        else:
            if self._in:
                self.state = CLOSED
                raise NbdProtocolError("data sent after STARTTLS before its reply")
            self._out += option_reply(option, p.REP_ACK)
            self._go("starttls")
            return StartTls()
        self._go("answered_inline")
        return None

    def _opt_list(self, option: int, data: bytes):
        if data:
            raise _BadOption("LIST takes no data")
        self._current = ListRequest()
        self._go("needs_shell")
        return self._current

    def _opt_info_go(self, option: int, data: bytes):
        r = _Reader(data)
        (name_len,) = r.unpack(U32)
        name = _string(r.take(name_len), "export name")
        (count,) = r.unpack(U16)
        requests = tuple(r.unpack(U16)[0] for _ in range(count))
        r.end()
        self._current = ExportRequest(option, name, requests)
        self._go("needs_shell")
        return self._current

    def _opt_structured_reply(self, option: int, data: bytes):
        if data:
            raise _BadOption("STRUCTURED_REPLY takes no data")
        self.structured = True
        self._out += option_reply(option, p.REP_ACK)
        self._go("answered_inline")
        return None

    def _opt_meta_context(self, option: int, data: bytes):
        r = _Reader(data)
        (name_len,) = r.unpack(U32)
        export = _string(r.take(name_len), "export name")
        (count,) = r.unpack(U32)
        queries = []
        for _ in range(count):
            (qlen,) = r.unpack(U32)
            queries.append(_string(r.take(qlen), "query"))
        r.end()
        setting = option == p.OPT_SET_META_CONTEXT
        if setting and not self.structured:
            raise _BadOption("SET_META_CONTEXT needs structured replies first")
        if self.extra_contexts and ((not setting and not queries) or any(
                not q.startswith("base:") for q in queries)):
            self._current = MetaContextRequest(option, export, tuple(queries))
            self._go("needs_shell")
            return self._current
        self._answer_meta(option, export, queries, ())
        self._go("answered_inline")
        return None

    def _answer_meta(self, option: int, export: str, queries, available) -> None:
        """The META_CONTEXT replies and the ACK; a SET also records its selection."""
        setting = option == p.OPT_SET_META_CONTEXT
        if setting:
            base = any(q == p.META_BASE_ALLOCATION for q in queries)
        else:
            base = not queries or any(q in (p.META_BASE_ALLOCATION, "base:") for q in queries)
        selected = [(p.BASE_ALLOCATION_ID, p.META_BASE_ALLOCATION)] if base else []
        extra = match_contexts(queries, available, listing=not setting)
        selected += [(p.BASE_ALLOCATION_ID + 1 + i, name) for i, name in enumerate(extra)]
        for ctx_id, name in selected:
            ctx = U32.pack(ctx_id if setting else 0) + name.encode()
            self._out += option_reply(option, p.REP_META_CONTEXT, ctx)
        if setting:
            self._meta_export = export
            self._meta_names = tuple(selected)
            self._meta_ids = frozenset(ctx_id for ctx_id, _ in selected)
        self._out += option_reply(option, p.REP_ACK)

    # -- shell answers -----------------------------------------------------------
    def tls_started(self) -> None:
        """The TLS handshake after a StartTls succeeded: options go on inside TLS."""
        self._go("tls_started")
        self.tls_pending = False

    def reply_meta_contexts(self, names) -> None:
        """Answer a MetaContextRequest with every extra context its export offers."""
        req = self._current
        if not isinstance(req, MetaContextRequest):
            raise NbdProtocolError("no meta context request in progress")
        self._current = None
        names = [n for n in names if isinstance(n, str) and len(n.encode()) <= MAX_STRING]
        self._answer_meta(req.option, req.export, req.queries, names)
        self._go("answered")

    def reply_list(self, names) -> None:
        """Answer a ListRequest with the provider's export names."""
        if not isinstance(self._current, ListRequest):
            raise NbdProtocolError("no LIST in progress")
        for name in names:
            raw = name.encode("utf-8")
            self._out += option_reply(p.OPT_LIST, p.REP_SERVER, U32.pack(len(raw)) + raw)
        self._out += option_reply(p.OPT_LIST, p.REP_ACK)
        self._current = None
        self._go("answered")

    def accept_export(self, size: int, readonly: bool, description: str | None = None) -> None:
        """The ExportRequest's export exists (INFO) or is open (GO, EXPORT_NAME)."""
        req = self._current
        if not isinstance(req, ExportRequest):
            raise NbdProtocolError("no export request in progress")
        self._current = None
        flags = p.transmission_flags(readonly, self.structured)
        if req.option == p.OPT_EXPORT_NAME:
            self._out += EXPORT_NAME_REPLY.pack(size, flags)
            if not self.client_flags & p.FLAG_C_NO_ZEROES:
                self._out += bytes(124)
        else:
            info = [INFO_EXPORT.pack(p.INFO_EXPORT, size, flags),
                    INFO_BLOCK_SIZE.pack(p.INFO_BLOCK_SIZE, p.MIN_BLOCK, p.PREFERRED_BLOCK,
                                         p.MAX_PAYLOAD)]
            if p.INFO_NAME in req.info_requests:
                info.append(U16.pack(p.INFO_NAME) + req.name.encode())
            if p.INFO_DESCRIPTION in req.info_requests and description:
                info.append(U16.pack(p.INFO_DESCRIPTION) + description.encode()[:MAX_STRING])
            for item in info:
                self._out += option_reply(req.option, p.REP_INFO, item)
            self._out += option_reply(req.option, p.REP_ACK)
        if req.option == p.OPT_INFO:
            self._go("answered")
            return
        chosen = self._meta_export == req.name and self.structured
        meta = self._meta_ids if chosen else frozenset()
        self._ready = Ready(req.name, size, readonly, self.structured, meta, flags,
                            self._meta_names if chosen else ())
        self._go("go")

    def refuse_export(self, code: int, message: str) -> None:
        """Refuse the ExportRequest with an NBD_REP_ERR_* code and a message for the user."""
        req = self._current
        if not isinstance(req, ExportRequest):
            raise NbdProtocolError("no export request in progress")
        self._current = None
        if req.option == p.OPT_EXPORT_NAME:
            self._go("export_name_refused")       # no error reply exists: hard disconnect
            return
        msg = message.encode("utf-8", "replace")[:MAX_STRING]
        self._out += option_reply(req.option, code, msg)
        self._go("answered")


_HANDLERS = {
    p.OPT_EXPORT_NAME: ServerHandshake._opt_export_name,
    p.OPT_ABORT: ServerHandshake._opt_abort,
    p.OPT_STARTTLS: ServerHandshake._opt_starttls,
    p.OPT_LIST: ServerHandshake._opt_list,
    p.OPT_INFO: ServerHandshake._opt_info_go,
    p.OPT_GO: ServerHandshake._opt_info_go,
    p.OPT_STRUCTURED_REPLY: ServerHandshake._opt_structured_reply,
    p.OPT_LIST_META_CONTEXT: ServerHandshake._opt_meta_context,
    p.OPT_SET_META_CONTEXT: ServerHandshake._opt_meta_context,
}
