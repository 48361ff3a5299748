"""The backup stream: what ``collie vdi backup`` writes and ``collie vdi restore`` reads.

Pure: bytes in, events out (and the other way round); no I/O.  The format is described
for users in ``docs/backup.md``; this is the reference::

    preamble  16 bytes   magic "SDOGBKUP" | version u16 (1) | flags u16 (0) | header length u32
    header    JSON       UTF-8, one object (``check_header``), at most 64 KiB
    records   17 bytes   kind u8 | offset u64 | length u64, then for DATA ``length`` bytes
              ...        DATA 'D': these bytes at ``offset``  (1 <= length <= 4 MiB)
                         ZERO 'Z': ``length`` bytes of zeros at ``offset`` (no payload)
    end       17 bytes   kind 'E' | number of records u64 | bytes of DATA payload u64
    checksum  32 bytes   SHA-256 of every byte before it
    (nothing may follow)

Integers are big-endian.  Records lie inside ``[0, header["size"])``, in increasing
offset order, without overlapping; a *full* stream (``header["from"]`` is null) covers
the whole range with no gap, so it defines every byte of the result whatever the
target held before.  An *incremental* stream lists only the ranges that differ from
its base (``header["from"]``).

``StreamDecoder`` checks all of this as bytes arrive and raises ``StreamError`` at the
first thing wrong; the checksum is only known at the end, so a consumer must not make
anything it wrote visible before the ``End`` event (a truncated stream never gets
there: ``close()`` raises).  ``StreamEncoder`` produces a stream the decoder accepts
(it refuses records out of order).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from common.errors import InvalidRequest

MAGIC = b"SDOGBKUP"
VERSION = 1
FORMAT = "sheepdog-py backup"
PREAMBLE = struct.Struct("!8sHHI")          # magic, version, flags, header length
RECORD = struct.Struct("!BQQ")              # kind, offset (END: records), length (END: bytes)
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 64 << 10
MAX_DATA_BYTES = 4 << 20                    # payload of one DATA record
DATA, ZERO, END = ord("D"), ord("Z"), ord("E")
_KIND_NAMES = {DATA: "data", ZERO: "zero", END: "end"}


class StreamError(InvalidRequest):
    """The bytes are not a valid backup stream (corrupt, truncated, or not one at all)."""


# -- events ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    header: dict


@dataclass(frozen=True)
class Data:
    """``length`` bytes at ``offset``; ``data`` is None when the decoder keeps no data."""
    offset: int
    length: int
    data: bytes | None


@dataclass(frozen=True)
class Zero:
    offset: int
    length: int


@dataclass(frozen=True)
class End:
    records: int
    data_bytes: int
    zero_bytes: int
    digest: str


# -- the header -------------------------------------------------------------------------------

def _state(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise StreamError(f"backup header: '{what}' must be an object")
    for key in ("state", "tag"):
        if not isinstance(value.get(key), str):
            raise StreamError(f"backup header: '{what}.{key}' must be a string")
    if not value["state"]:
        raise StreamError(f"backup header: '{what}.state' is empty")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise StreamError(f"backup header: '{what}.size' must be a positive integer")
    return value


def check_header(header) -> dict:
    """``header`` if it is one this version reads, else StreamError.

    Required: ``format`` (FORMAT), ``name`` (the source VDI), ``size`` (bytes of the
    result), ``to`` and ``from`` (null for a full stream), each ``{"state", "tag",
    "size", ...}``: ``state`` names the content (`vdi.diff.snapshot_state`), the rest is
    for people.  Other fields are information (``snap_id``, ``vid``, ``created``,
    ``object_size``...) and are kept as they are."""
    if not isinstance(header, dict):
        raise StreamError("backup header is not a JSON object")
    if header.get("format") != FORMAT:
        raise StreamError(f"backup header: format is {header.get('format')!r}, "
                          f"expected {FORMAT!r}")
    if not isinstance(header.get("name"), str) or not header["name"]:
        raise StreamError("backup header: 'name' must be a non-empty string")
    size = header.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise StreamError("backup header: 'size' must be a positive integer")
    to = _state(header.get("to"), "to")
    if to["size"] != size:
        raise StreamError("backup header: 'to.size' differs from 'size'")
    if header.get("from") is not None:
        base = _state(header["from"], "from")
        if base["size"] > size:
            raise StreamError("backup header: the base is larger than the result "
                              "(volumes only grow)")
    return header


def is_full(header: dict) -> bool:
    return header.get("from") is None


def encode_header(header: dict) -> bytes:
    raw = json.dumps(check_header(header), sort_keys=True, separators=(",", ":")).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise StreamError(f"backup header of {len(raw)} bytes is over {MAX_HEADER_BYTES}")
    return raw


# -- record order, shared by both directions --------------------------------------------------

class _Order:
    """Records increase, do not overlap, stay inside the size; a full stream has no gaps."""

    def __init__(self, size: int, full: bool) -> None:
        self.size, self.full = size, full
        self.end = 0                # end of the last record
        self.records = 0
        self.data_bytes = 0
        self.zero_bytes = 0

    def add(self, kind: int, offset: int, length: int) -> None:
        name = _KIND_NAMES.get(kind, "?")
        if length <= 0:
            raise StreamError(f"{name} record at offset {offset} has length {length}")
        if kind == DATA and length > MAX_DATA_BYTES:
            raise StreamError(f"data record at offset {offset} is {length} bytes "
                              f"(at most {MAX_DATA_BYTES})")
        if offset < self.end:
            raise StreamError(f"{name} record at offset {offset} overlaps or precedes the "
                              f"previous one (which ends at {self.end})")
        if self.full and offset != self.end:
            raise StreamError(f"full stream has a gap [{self.end}, {offset})")
        if offset + length > self.size:
            raise StreamError(f"{name} record [{offset}, {offset + length}) is past the end "
                              f"({self.size} bytes)")
        self.end = offset + length
        self.records += 1
        if kind == DATA:
            self.data_bytes += length
        else:
            self.zero_bytes += length

    def finish(self, records: int, data_bytes: int) -> None:
        if self.full and self.end != self.size:
            raise StreamError(f"full stream stops at {self.end} of {self.size} bytes")
        if (records, data_bytes) != (self.records, self.data_bytes):
            raise StreamError(f"end record counts {records} records and {data_bytes} bytes, "
                              f"the stream had {self.records} and {self.data_bytes}")


# -- encoding ---------------------------------------------------------------------------------

class StreamEncoder:
    """Builds a stream piece by piece: ``start()``, then ``data``/``zero`` in offset order,
    then ``finish()``; each returns the bytes to write next (``data`` returns the record
    head: write the payload right after it)."""

    def __init__(self, header: dict) -> None:
        self.header = check_header(header)
        self._hash = hashlib.sha256()
        self._order = _Order(header["size"], is_full(header))
        self._started = self._finished = False

    def _out(self, raw: bytes) -> bytes:
        self._hash.update(raw)
        return raw

    def start(self) -> bytes:
        if self._started:
            raise ValueError("stream already started")
        self._started = True
        raw = encode_header(self.header)
        return self._out(PREAMBLE.pack(MAGIC, VERSION, 0, len(raw)) + raw)

    def data(self, offset: int, payload) -> bytes:
        """The head of a DATA record; the caller writes ``payload`` after it."""
        view = memoryview(payload).cast("B")
        self._check_open()
        self._order.add(DATA, offset, len(view))
        head = self._out(RECORD.pack(DATA, offset, len(view)))
        self._hash.update(view)
        return head

    def zero(self, offset: int, length: int) -> bytes:
        self._check_open()
        self._order.add(ZERO, offset, length)
        return self._out(RECORD.pack(ZERO, offset, length))

    def finish(self) -> bytes:
        self._check_open()
        order = self._order
        order.finish(order.records, order.data_bytes)
        self._finished = True
        end = self._out(RECORD.pack(END, order.records, order.data_bytes))
        return end + self._hash.digest()

    def _check_open(self) -> None:
        if not self._started or self._finished:
            raise ValueError("stream not started, or already finished")

    @property
    def data_bytes(self) -> int:
        return self._order.data_bytes


def encode(header: dict, records) -> bytes:
    """A whole stream in memory: ``records`` are ``(offset, bytes)`` for data and
    ``(offset, length)`` (an int) for zeros (tests and small tools)."""
    enc = StreamEncoder(header)
    out = bytearray(enc.start())
    for offset, what in records:
        if isinstance(what, int):
            out += enc.zero(offset, what)
        else:
            out += enc.data(offset, what)
            out += what
    out += enc.finish()
    return bytes(out)


# -- decoding ---------------------------------------------------------------------------------

_PREAMBLE, _HEADER, _RECORD, _PAYLOAD, _DIGEST, _DONE = range(6)


class StreamDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the events the bytes completed
    (`Header`, `Data`, `Zero`, `End`); ``close()`` at the end of input.  Every error is a
    `StreamError` naming the byte position; after one the decoder is dead.

    ``keep_data=False`` verifies without keeping payloads (``Data.data`` is None and
    nothing larger than a record head is buffered)."""

    def __init__(self, keep_data: bool = True) -> None:
        self.keep_data = keep_data
        self.header: dict | None = None
        self.consumed = 0           # bytes of the stream parsed so far
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._state = _PREAMBLE
        self._need = PREAMBLE.size
        self._order: _Order | None = None
        self._record: tuple[int, int] | None = None    # (offset, length) of the payload
        self._left = 0                                 # payload bytes still to come
        self._end: tuple[int, int] | None = None
        self._dead = False

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data) -> list:
        if self._dead:
            raise StreamError("decoder already failed")
        events: list = []
        view = memoryview(data).cast("B")
        try:
            while len(view):
                if self._state == _DONE:
                    raise StreamError(f"{len(view)} bytes after the end of the stream "
                                      f"(at byte {self.consumed})")
                if self._state == _PAYLOAD and not self.keep_data:
                    take = min(self._left, len(view))
                    self._hash.update(view[:take])
                    self._left -= take
                    self.consumed += take
                    view = view[take:]
                    if self._left == 0:
                        offset, length = self._record
                        events.append(Data(offset, length, None))
                        self._expect_record()
                    continue
                take = min(self._need - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) == self._need:
                    piece, self._buf = bytes(self._buf), bytearray()
                    event = self._complete(piece)
                    if event is not None:
                        events.append(event)
        except StreamError:
            self._dead = True
            raise
        return events

    def close(self) -> None:
        """End of input: StreamError unless the stream ended exactly here."""
        if self._dead:
            raise StreamError("decoder already failed")
        if self._state != _DONE:
            self._dead = True
            raise StreamError(f"backup stream truncated after {self.consumed + len(self._buf)} "
                              f"bytes ({self._where()})")

    def _where(self) -> str:
        if self._state in (_PREAMBLE, _HEADER):
            return "in its header"
        if self._state == _PAYLOAD:
            return f"inside the data record at offset {self._record[0]}"
        if self._state == _DIGEST:
            return "in its checksum"
        return f"after {self._order.records if self._order else 0} records, before its end"

    def _expect_record(self) -> None:
        self._state, self._need = _RECORD, RECORD.size

    def _complete(self, piece: bytes):
        """One whole piece (preamble, header, record head, payload, digest) arrived."""
        at = self.consumed
        if self._state != _DIGEST:
            self._hash.update(piece)
        self.consumed += len(piece)
        if self._state == _PREAMBLE:
            magic, version, flags, hlen = PREAMBLE.unpack(piece)
            if magic != MAGIC:
                raise StreamError("not a sheepdog-py backup stream (bad magic)")
            if version != VERSION:
                raise StreamError(f"backup stream version {version} is not supported "
                                  f"(this collie reads version {VERSION})")
            if flags:
                raise StreamError(f"backup stream has unknown flags 0x{flags:x}")
            if not 0 < hlen <= MAX_HEADER_BYTES:
                raise StreamError(f"backup stream header length {hlen} is out of range")
            self._state, self._need = _HEADER, hlen
            return None
        if self._state == _HEADER:
            try:
                header = json.loads(piece.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise StreamError("backup stream header is not valid JSON") from None
            self.header = check_header(header)
            self._order = _Order(header["size"], is_full(header))
            self._expect_record()
            return Header(header)
        if self._state == _RECORD:
            kind, a, b = RECORD.unpack(piece)
            if kind == END:
                self._order.finish(a, b)
                self._end = (a, b)
                self._state, self._need = _DIGEST, DIGEST_BYTES
                return None
            if kind not in (DATA, ZERO):
                raise StreamError(f"unknown record kind 0x{kind:02x} at byte {at}")
            self._order.add(kind, a, b)
            if kind == ZERO:
                return Zero(a, b)
            self._record, self._left = (a, b), b
            self._state, self._need = _PAYLOAD, b
            return None
        if self._state == _PAYLOAD:
            offset, length = self._record
            self._expect_record()
            return Data(offset, length, piece)
        # _DIGEST
        expected = self._hash.digest()
        if piece != expected:
            raise StreamError("backup stream is corrupt: its checksum does not match "
                              "its content")
        self._state, self._need = _DONE, 0
        order = self._order
        return End(order.records, order.data_bytes, order.zero_bytes, expected.hex())


def decode(raw: bytes) -> list:
    """Every event of a whole stream in memory (tests and small tools)."""
    dec = StreamDecoder()
    events = dec.feed(raw)
    dec.close()
    return events
