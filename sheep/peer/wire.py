"""Peer wire protocol between sheep: sans-IO codec.

A frame is a fixed prefix, a msgpack header and a raw payload::

    +-------+------------+-------------+------------------+------------------+
    | magic | header_len | payload_len | header (msgpack) | payload (raw)    |
    |  u16  |    u32     |     u32     | header_len bytes | payload_len bytes|
    +-------+------------+-------------+------------------+------------------+

The header is a small dict.  Requests carry ``id`` (chosen by the sender, unique
among its requests in flight on that connection), ``op`` and ``epoch``, plus the
op's arguments (``oid``, ``offset``, ``length``, ``create`` ...).  Replies carry
the same ``id``, ``code`` (0 for success, else a ``common.errors`` wire code with
``error``) and the result fields.  Payload bytes (object data) never go through
msgpack: the sender writes them after the header with ``sendall`` of the
caller's buffer, the receiver ``recv_into`` a preallocated buffer.

Many requests are in flight on one connection; replies come back in any order
and are matched by ``id``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from common.errors import ProtocolError

MAGIC = 0x5348  # "SH"
PREFIX = struct.Struct("!HII")
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 64 << 20


@dataclass(frozen=True)
class Frame:
    header: dict
    payload: bytes | bytearray | memoryview = b""


def encode_prefix_and_header(header: dict, payload_len: int = 0) -> bytes:
    """The bytes to send before a payload of ``payload_len`` bytes."""
    if payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD_BYTES}")
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(packed)} bytes exceeds {MAX_HEADER_BYTES}")
    return PREFIX.pack(MAGIC, len(packed), payload_len) + packed


def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    """A whole frame as one bytes object (tests and small messages)."""
    payload = bytes(payload)  # len() of a memoryview counts items, not bytes
    return encode_prefix_and_header(header, len(payload)) + payload


def parse_prefix(buf) -> tuple[int, int]:
    """Validate a PREFIX.size buffer; return (header_len, payload_len)."""
    magic, header_len, payload_len = PREFIX.unpack(buf)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic 0x{magic:04x}")
    if header_len == 0 or header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"bad header length {header_len}")
    if payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload length {payload_len} exceeds {MAX_PAYLOAD_BYTES}")
    return header_len, payload_len


def parse_header(buf) -> dict:
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    return header


class FrameDecoder:
    """Incremental decoder: ``feed()`` bytes, then ``next_frame()`` until None.

    Used where bytes arrive in arbitrary pieces (tests, fuzzing); the socket shell
    in ``sheep.peer.client`` reads exact sizes with ``recv_into`` instead.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None

    def feed(self, data) -> None:
        self._buf += data

    def next_frame(self) -> Frame | None:
        if self._need is None:
            if len(self._buf) < PREFIX.size:
                return None
            self._need = parse_prefix(self._buf[:PREFIX.size])
            del self._buf[:PREFIX.size]
        header_len, payload_len = self._need
        if len(self._buf) < header_len + payload_len:
            return None
        header = parse_header(bytes(self._buf[:header_len]))
        payload = bytes(self._buf[header_len:header_len + payload_len])
        del self._buf[:header_len + payload_len]
        self._need = None
        return Frame(header, payload)

    @property
    def buffered(self) -> int:
        return len(self._buf)
