"""sheep.peer.wire: frames fed whole, byte by byte, back to back, truncated, and fuzzed."""
from __future__ import annotations

import array

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ProtocolError
from sheep.peer import wire
from sheep.peer.wire import (
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    PREFIX,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_prefix_and_header,
    parse_header,
    parse_prefix,
)

HEADER = {"id": 7, "op": "write", "epoch": 3, "oid": 1 << 63 | 0x7c2b25 << 32, "create": True}
PAYLOAD = bytes(range(256)) * 5


def frames(decoder: FrameDecoder) -> list[Frame]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def raw_frame(header_bytes: bytes, payload: bytes = b"", magic: int = MAGIC) -> bytes:
    return PREFIX.pack(magic, len(header_bytes), len(payload)) + header_bytes + payload


# ------------------------------------------------------------ well-formed input

def test_whole_buffer():
    d = FrameDecoder()
    d.feed(encode_frame(HEADER, PAYLOAD))
    [frame] = frames(d)
    assert frame.header == HEADER
    assert bytes(frame.payload) == PAYLOAD
    assert d.buffered == 0


def test_one_byte_at_a_time():
    buf = encode_frame(HEADER, PAYLOAD)
    d = FrameDecoder()
    got = []
    for i in range(len(buf)):
        d.feed(buf[i:i + 1])
        got += frames(d)
        if i < len(buf) - 1:
            assert got == []
    assert [(f.header, bytes(f.payload)) for f in got] == [(HEADER, PAYLOAD)]
    assert d.buffered == 0


def test_frames_back_to_back_and_trailing_partial_frame_kept():
    msgs = [({"id": i, "op": "read", "epoch": 1}, bytes([i]) * i) for i in range(5)]
    buf = b"".join(encode_frame(h, p) for h, p in msgs)
    tail = encode_frame({"id": 99, "op": "flush"}, b"xyz")
    d = FrameDecoder()
    d.feed(buf + tail[:-2])
    got = frames(d)
    assert [(f.header, bytes(f.payload)) for f in got] == msgs
    # the partial frame stays buffered until its last bytes arrive
    assert d.next_frame() is None
    d.feed(tail[-2:])
    [last] = frames(d)
    assert last.header == {"id": 99, "op": "flush"} and bytes(last.payload) == b"xyz"
    assert d.buffered == 0


@pytest.mark.parametrize("split", [1, PREFIX.size - 1, PREFIX.size, PREFIX.size + 1])
def test_split_around_the_prefix(split):
    buf = encode_frame(HEADER, PAYLOAD)
    d = FrameDecoder()
    d.feed(buf[:split])
    assert d.next_frame() is None
    d.feed(buf[split:])
    [frame] = frames(d)
    assert frame.header == HEADER and bytes(frame.payload) == PAYLOAD


def test_empty_payload():
    d = FrameDecoder()
    d.feed(encode_frame({"id": 1, "code": 0}))
    [frame] = frames(d)
    assert frame.header == {"id": 1, "code": 0} and bytes(frame.payload) == b""


def test_payload_bytes_preserved_exactly():
    payload = bytes(range(256)) * 64 + b"\0" * 100 + b"\xff"
    d = FrameDecoder()
    d.feed(encode_frame({"id": 1}, payload))
    [frame] = frames(d)
    assert bytes(frame.payload) == payload


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview,
                                  lambda b: memoryview(bytearray(b))[2:-3]])
def test_encode_accepts_buffers(make):
    payload = make(PAYLOAD)
    d = FrameDecoder()
    d.feed(encode_frame(HEADER, payload))
    [frame] = frames(d)
    assert bytes(frame.payload) == bytes(payload)


def test_encode_memoryview_of_wide_items_counts_bytes():
    # len() of such a view counts items, not bytes; the frame must carry bytes.
    words = array.array("I", range(100))
    d = FrameDecoder()
    d.feed(encode_frame({"id": 1}, memoryview(words)))
    [frame] = frames(d)
    assert bytes(frame.payload) == words.tobytes()
    assert d.buffered == 0


def test_prefix_and_header_then_raw_payload():
    prefix = encode_prefix_and_header(HEADER, len(PAYLOAD))
    d = FrameDecoder()
    d.feed(prefix)
    d.feed(memoryview(PAYLOAD))
    [frame] = frames(d)
    assert frame.header == HEADER and bytes(frame.payload) == PAYLOAD


def test_header_types_round_trip():
    header = {"id": 2**32 + 5, "error": "no object", "code": 2, "list": [1, "a", b"\x00"],
              "neg": -1, "f": 1.5, "none": None}
    d = FrameDecoder()
    d.feed(encode_frame(header))
    assert frames(d)[0].header == header


# ------------------------------------------------------------ malformed input

def test_bad_magic():
    d = FrameDecoder()
    d.feed(raw_frame(msgpack.packb({"id": 1}), magic=0x1234))
    with pytest.raises(ProtocolError, match="magic"):
        d.next_frame()


def test_zero_header_length():
    with pytest.raises(ProtocolError):
        parse_prefix(PREFIX.pack(MAGIC, 0, 0))


def test_oversized_header_length():
    with pytest.raises(ProtocolError, match="header length"):
        parse_prefix(PREFIX.pack(MAGIC, MAX_HEADER_BYTES + 1, 0))


def test_oversized_payload_length():
    d = FrameDecoder()
    d.feed(PREFIX.pack(MAGIC, 1, MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ProtocolError, match="payload length"):
        d.next_frame()


def test_encoder_refuses_oversized():
    with pytest.raises(ProtocolError):
        encode_prefix_and_header({"id": 1}, MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(ProtocolError):
        encode_prefix_and_header({"blob": b"x" * MAX_HEADER_BYTES})


@pytest.mark.parametrize("value", [[1, 2], 5, "op", b"raw", None])
def test_header_not_a_map(value):
    d = FrameDecoder()
    d.feed(raw_frame(msgpack.packb(value)))
    with pytest.raises(ProtocolError, match="not a map"):
        d.next_frame()


@pytest.mark.parametrize("garbage", [
    b"\xc1",                                  # never-used msgpack byte
    b"\x81",                                  # map of one, truncated
    msgpack.packb({"id": 1}) + b"\x00",       # extra data inside header_len
    b"\x81\x91\x01\x02",                      # map with an unhashable key
    b"\xdf\xff\xff\xff\xff",                  # huge map length, no data
])
def test_garbage_msgpack(garbage):
    d = FrameDecoder()
    d.feed(raw_frame(garbage))
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_parse_header_direct():
    assert parse_header(msgpack.packb({1: "a"})) == {1: "a"}
    with pytest.raises(ProtocolError):
        parse_header(b"")


# ------------------------------------------------------------ fuzz

@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=256), st.lists(st.integers(1, 64), max_size=8), st.booleans())
def test_fuzz_random_bytes_raise_only_protocol_error(data, cuts, magic_first):
    # Half the inputs start with the right magic so the fuzz gets past it.
    if magic_first:
        data = MAGIC.to_bytes(2, "big") + data
    d = FrameDecoder()
    pos = 0
    try:
        for n in cuts + [len(data)]:
            d.feed(data[pos:pos + n])
            pos += n
            frames(d)
    except ProtocolError:
        pass


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=64), st.binary(max_size=64), st.integers(0, 4), st.integers(0, 3))
def test_fuzz_valid_prefix_random_header(header_bytes, payload, header_slack, payload_slack):
    # A correct magic with random header bytes reaches the msgpack decoder.
    buf = PREFIX.pack(MAGIC, len(header_bytes) + header_slack, len(payload)) + header_bytes + payload
    d = FrameDecoder()
    d.feed(buf)
    try:
        for frame in frames(d):
            assert isinstance(frame.header, dict)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                                          max_size=4),
                          st.binary(max_size=300)), min_size=1, max_size=5),
       st.integers(1, 50))
def test_roundtrip_in_random_pieces(msgs, step):
    msgs = [(h, p) for h, p in msgs if all(-2**63 <= v < 2**64 for v in h.values()
                                           if isinstance(v, int))]
    buf = b"".join(encode_frame(h, p) for h, p in msgs)
    d = FrameDecoder()
    got = []
    for i in range(0, len(buf), step):
        d.feed(buf[i:i + step])
        got += frames(d)
    assert [(f.header, bytes(f.payload)) for f in got] == msgs
    assert d.buffered == 0


def test_module_constants():
    assert wire.MAGIC == 0x5348 and PREFIX.size == 10
