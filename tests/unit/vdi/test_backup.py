"""The backup stream codec: round trips, chunking, and every truncation and bit flip refused."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdi import backup
from vdi.backup import Data, End, Header, StreamDecoder, StreamEncoder, StreamError, Zero

MiB = 1 << 20


def header(size=16 * MiB, base=True, **extra):
    to = {"state": "t" * 32, "tag": "s2", "size": size, "snap_id": 2}
    frm = {"state": "f" * 32, "tag": "s1", "size": size, "snap_id": 1} if base else None
    return {"format": backup.FORMAT, "name": "vm", "size": size, "to": to, "from": frm,
            **extra}


def incremental() -> bytes:
    return backup.encode(header(), [(0, b"a" * 4096), (4 * MiB, 8 * MiB),
                                    (12 * MiB, bytes(range(256)) * 16)])


def feed_all(raw: bytes, keep_data: bool = True, step: int | None = None) -> list:
    dec = StreamDecoder(keep_data=keep_data)
    events = []
    pieces = [raw] if step is None else [raw[i:i + step] for i in range(0, len(raw), step)]
    for piece in pieces:
        events += dec.feed(piece)
    dec.close()
    return events


def test_round_trip_of_an_incremental_stream():
    events = backup.decode(incremental())
    assert events[0] == Header(header())
    assert events[1:4] == [Data(0, 4096, b"a" * 4096), Zero(4 * MiB, 8 * MiB),
                           Data(12 * MiB, 4096, bytes(range(256)) * 16)]
    end = events[4]
    assert isinstance(end, End) and (end.records, end.data_bytes, end.zero_bytes) == (
        3, 8192, 8 * MiB)
    assert len(events) == 5


def test_the_layout_is_the_documented_one():
    raw = backup.encode(header(size=4096, base=False), [(0, b"x" * 4096)])
    magic, version, flags, hlen = backup.PREAMBLE.unpack_from(raw)
    assert (magic, version, flags) == (b"SDOGBKUP", 1, 0)
    body = raw[16 + hlen:]
    assert body[:17] == struct.pack("!BQQ", ord("D"), 0, 4096)
    assert body[17:17 + 4096] == b"x" * 4096
    assert body[17 + 4096:17 + 4096 + 17] == struct.pack("!BQQ", ord("E"), 1, 4096)
    import hashlib
    assert body[-32:] == hashlib.sha256(raw[:-32]).digest()
    assert len(body) == 17 + 4096 + 17 + 32


@pytest.mark.parametrize("step", [1, 7, 17, 4096, 1 << 20])
@pytest.mark.parametrize("keep_data", [True, False])
def test_any_chunking_gives_the_same_events(step, keep_data):
    raw = incremental()
    whole = feed_all(raw, keep_data)
    assert feed_all(raw, keep_data, step) == whole
    if not keep_data:
        assert all(e.data is None for e in whole if isinstance(e, Data))
        assert [e for e in whole if not isinstance(e, Data)] == [
            e for e in backup.decode(raw) if not isinstance(e, Data)]


def test_every_truncation_is_refused_at_close():
    raw = backup.encode(header(size=8192), [(0, b"q" * 100), (4096, 4096)])
    for cut in range(len(raw)):
        dec = StreamDecoder()
        events = dec.feed(raw[:cut])
        assert not any(isinstance(e, End) for e in events), cut
        with pytest.raises(StreamError, match="truncated"):
            dec.close()


def test_every_single_bit_flip_is_refused():
    raw = backup.encode(header(size=8192), [(0, b"q" * 100), (4096, 4096)])
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(StreamError):
            feed_all(bytes(flipped))


def test_corrupt_payload_is_found_only_by_the_checksum_and_names_it():
    raw = bytearray(incremental())
    raw[-60] ^= 0xFF                    # inside the last payload (end: 17 + 32 bytes)
    dec = StreamDecoder()
    with pytest.raises(StreamError, match="checksum does not match"):
        dec.feed(bytes(raw))


def test_trailing_bytes_are_refused():
    with pytest.raises(StreamError, match="after the end"):
        feed_all(incremental() + b"\0")


@pytest.mark.parametrize("raw,message", [
    (b"NOTABACKUP" + bytes(20), "bad magic"),
    (struct.pack("!8sHHI", b"SDOGBKUP", 2, 0, 2) + b"{}", "version 2"),
    (struct.pack("!8sHHI", b"SDOGBKUP", 1, 1, 2) + b"{}", "flags"),
    (struct.pack("!8sHHI", b"SDOGBKUP", 1, 0, 1 << 30), "header length"),
    (struct.pack("!8sHHI", b"SDOGBKUP", 1, 0, 3) + b"{x}", "not valid JSON"),
    (struct.pack("!8sHHI", b"SDOGBKUP", 1, 0, 2) + b"[]", "not a JSON object"),
])
def test_bad_preambles_and_headers(raw, message):
    with pytest.raises(StreamError, match=message):
        StreamDecoder().feed(raw)


def _with_records(hdr: dict, *records: bytes) -> bytes:
    raw = backup.encode_header(hdr)
    return backup.PREAMBLE.pack(backup.MAGIC, 1, 0, len(raw)) + raw + b"".join(records)


@pytest.mark.parametrize("records,message", [
    ([struct.pack("!BQQ", ord("Z"), 4096, 10), struct.pack("!BQQ", ord("Z"), 0, 10)],
     "precedes"),
    ([struct.pack("!BQQ", ord("Z"), 0, 8192), struct.pack("!BQQ", ord("Z"), 4096, 10)],
     "overlaps"),
    ([struct.pack("!BQQ", ord("Z"), 16 * MiB - 1, 2)], "past the end"),
    ([struct.pack("!BQQ", ord("Z"), 0, 0)], "length 0"),
    ([struct.pack("!BQQ", ord("D"), 0, 5 * MiB)], "at most"),
    ([struct.pack("!BQQ", ord("X"), 0, 1)], "unknown record kind"),
    ([struct.pack("!BQQ", ord("E"), 1, 0)], "end record counts"),
])
def test_records_out_of_order_or_range_are_refused(records, message):
    with pytest.raises(StreamError, match=message):
        StreamDecoder().feed(_with_records(header(), *records))


def test_a_full_stream_must_cover_everything():
    hdr = header(size=8192, base=False)
    with pytest.raises(StreamError, match="gap"):
        StreamDecoder().feed(_with_records(hdr, struct.pack("!BQQ", ord("Z"), 4096, 4096)))
    with pytest.raises(StreamError, match="stops at 4096"):
        StreamDecoder().feed(_with_records(hdr, struct.pack("!BQQ", ord("Z"), 0, 4096),
                                           struct.pack("!BQQ", ord("E"), 1, 0)))
    with pytest.raises(StreamError, match="stops at"):
        backup.encode(hdr, [(0, 4096)])


@pytest.mark.parametrize("change,message", [
    ({"format": "other"}, "format"),
    ({"name": ""}, "name"),
    ({"size": 0}, "size"),
    ({"size": 8 * MiB}, "to.size"),
    ({"to": None}, "'to' must be an object"),
    ({"from": {"state": "", "tag": "", "size": 1}}, "from.state"),
    ({"from": {"state": "x", "tag": "", "size": 32 * MiB}}, "volumes only grow"),
])
def test_bad_headers_are_refused(change, message):
    with pytest.raises(StreamError, match=message):
        backup.check_header({**header(), **change})


def test_the_encoder_refuses_what_the_decoder_would():
    enc = StreamEncoder(header())
    with pytest.raises(ValueError):
        enc.data(0, b"x")               # not started
    enc.start()
    enc.zero(4096, 4096)
    with pytest.raises(StreamError, match="precedes"):
        enc.zero(0, 10)


def test_a_dead_decoder_stays_dead():
    dec = StreamDecoder()
    with pytest.raises(StreamError):
        dec.feed(b"garbage-garbage-garbage")
    with pytest.raises(StreamError, match="already failed"):
        dec.feed(b"")


def test_stream_errors_are_invalid_requests():
    from common.errors import InvalidRequest
    assert issubclass(StreamError, InvalidRequest)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3 * 4096), st.booleans(), st.integers(0, 2)),
                min_size=0, max_size=8),
       st.integers(1, 9000))
def test_random_streams_round_trip_in_any_chunking(pieces, step):
    records, pos = [], 0
    for length, zero, gap in pieces:
        pos += gap * 512
        records.append((pos, length if zero else bytes([pos % 251]) * length))
        pos += length
    size = max(pos, 1)
    raw = backup.encode(header(size=size), records)
    events = feed_all(raw, step=step)
    got = [(e.offset, e.length if isinstance(e, Zero) else e.data)
           for e in events if isinstance(e, (Data, Zero))]
    assert got == records
