"""Property tests: random and mutated input never makes the NBD core raise anything
but NbdProtocolError, and chunking never changes what is parsed."""
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbd_frontend import protocol as p
from nbd_frontend.handshake import (CLOSED, TRANSMISSION, Aborted, ExportRequest, ListRequest,
                                    MetaContextRequest, Ready, ServerHandshake)
from nbd_frontend.protocol import NEED_DATA, NbdProtocolError, Request, RequestParser

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def opt(option: int, data: bytes = b"") -> bytes:
    return b"IHAVEOPT" + struct.pack("!II", option, len(data)) + data


def go_data(name: bytes, *infos: int) -> bytes:
    return (struct.pack("!I", len(name)) + name + struct.pack("!H", len(infos))
            + b"".join(struct.pack("!H", i) for i in infos))


def meta_data(name: bytes, *queries: bytes) -> bytes:
    out = struct.pack("!I", len(name)) + name + struct.pack("!I", len(queries))
    return out + b"".join(struct.pack("!I", len(q)) + q for q in queries)


VALID_OPTIONS = st.sampled_from([
    opt(p.OPT_STRUCTURED_REPLY), opt(p.OPT_LIST), opt(p.OPT_INFO, go_data(b"disk", 1, 2, 3)),
    opt(p.OPT_LIST_META_CONTEXT, meta_data(b"disk")),
    opt(p.OPT_SET_META_CONTEXT, meta_data(b"disk", b"base:allocation")),
    opt(p.OPT_GO, go_data(b"disk", 3)), opt(p.OPT_EXPORT_NAME, b"disk"), opt(p.OPT_ABORT),
    opt(99, b"whatever"), opt(p.OPT_STARTTLS),
    opt(p.OPT_LIST_META_CONTEXT, meta_data(b"disk@s", b"x-sheepdog:")),
    opt(p.OPT_SET_META_CONTEXT, meta_data(b"disk@s", b"x-sheepdog:diff:a", b"base:allocation")),
])


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def drive_handshake(chunks, decisions, extra: bool = False) -> ServerHandshake:
    """Feed chunks, answering events with the given decisions; only NbdProtocolError may escape."""
    hs = ServerHandshake(extra_contexts=extra)
    hs.data_to_send()
    choice = iter(decisions)
    try:
        for chunk in chunks:
            if hs.state == CLOSED:
                break
            hs.receive_data(chunk)
            while (ev := hs.next_event()) is not NEED_DATA:
                if isinstance(ev, ListRequest):
                    hs.reply_list(["a", "b\u00e9"])
                elif isinstance(ev, MetaContextRequest):
                    hs.reply_meta_contexts(["x-sheepdog:diff:a", "x-sheepdog:diff:\u00e9"])
                elif isinstance(ev, ExportRequest):
                    if next(choice, True):
                        hs.accept_export(1 << 20, False)
                    else:
                        hs.refuse_export(p.REP_ERR_UNKNOWN, "nope")
                else:
                    assert isinstance(ev, (Aborted, Ready))
                hs.data_to_send()
            if hs.state == TRANSMISSION:
                hs.trailing_data()
    except NbdProtocolError:
        pass
    return hs


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8), st.lists(st.booleans()))
def test_handshake_random_bytes(data, cuts, decisions):
    drive_handshake(chunked(struct.pack("!I", 3) + data, cuts), decisions)


@FUZZ
@given(st.lists(VALID_OPTIONS, max_size=8), st.binary(max_size=60),
       st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255), st.sampled_from("fid")), max_size=6),
       st.lists(st.integers(0, 2000), max_size=6), st.lists(st.booleans()), st.booleans())
def test_handshake_mutated_valid_sequences(options, tail, mutations, cuts, decisions, extra):
    data = bytearray(struct.pack("!I", 3) + b"".join(options) + tail)
    for pos, value, kind in mutations:
        pos %= len(data) + 1
        if kind == "f" and pos < len(data):
            data[pos] ^= value or 1
        elif kind == "i":
            data[pos:pos] = bytes([value])
        elif kind == "d":
            del data[pos:pos + 1 + value % 8]
    drive_handshake(chunked(bytes(data), cuts), decisions, extra)


@FUZZ
@given(st.lists(VALID_OPTIONS, max_size=8), st.lists(st.integers(0, 2000), max_size=10))
def test_handshake_chunking_does_not_matter(options, cuts):
    stream = struct.pack("!I", 3) + b"".join(options)

    def run(chunks):
        hs = ServerHandshake()
        out, seen = hs.data_to_send(), []
        try:
            for chunk in chunks:
                if hs.state == CLOSED:
                    break
                hs.receive_data(chunk)
                while (ev := hs.next_event()) is not NEED_DATA:
                    seen.append(ev)
                    if isinstance(ev, ListRequest):
                        hs.reply_list(["x"])
                    elif isinstance(ev, ExportRequest):
                        hs.accept_export(4096, True)
                out += hs.data_to_send()
        except NbdProtocolError as exc:
            seen.append(str(exc))
        return out, seen, hs.state

    assert run([stream]) == run(chunked(stream, cuts))


REQUESTS = st.builds(
    lambda flags, typ, handle, offset, length, fill: (
        Request(flags, typ, handle, offset, length).pack() + (fill * length if typ == 1 else b"")),
    st.integers(0, 0x1f), st.sampled_from([0, 1, 2, 3, 4, 6, 7, 9]), st.integers(0, 2**64 - 1),
    st.integers(0, 2**20), st.integers(0, 3000), st.sampled_from([b"a", b"\0"]))


def parse_chunks(chunks, use_recv_into: bool) -> list:
    parser, out = RequestParser(), []
    for chunk in chunks:
        chunk = memoryview(chunk)
        while chunk:
            view = parser.payload_buffer() if use_recv_into else None
            if view is not None:
                n = min(len(view), len(chunk))
                view[:n] = chunk[:n]
                parser.payload_received(n)
            else:
                n = len(chunk)
                parser.receive_data(chunk)
            chunk = chunk[n:]
            while (ev := parser.next_event()) is not NEED_DATA:
                assert isinstance(ev, Request)
                assert (ev.payload is None) == (ev.type != p.CMD_WRITE)
                assert ev.payload is None or len(ev.payload) == ev.length
                out.append(ev)
    return out


@FUZZ
@given(st.lists(REQUESTS, max_size=6), st.lists(st.integers(0, 20000), max_size=12), st.booleans())
def test_request_stream_chunking_and_recv_into_agree(reqs, cuts, recv_into):
    stream = b"".join(reqs)
    whole = parse_chunks([stream], False)
    assert len(whole) == len(reqs)
    assert parse_chunks(chunked(stream, cuts), recv_into) == whole


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6), st.booleans())
def test_request_parser_random_bytes(data, cuts, recv_into):
    try:
        parse_chunks(chunked(b"\x25\x60\x95\x13" + data, cuts), recv_into)
    except NbdProtocolError:
        pass


@FUZZ
@given(st.lists(REQUESTS, min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 255)), max_size=4),
       st.lists(st.integers(0, 5000), max_size=6), st.booleans())
def test_request_parser_mutated_streams(reqs, flips, cuts, recv_into):
    data = bytearray(b"".join(reqs))
    for pos, value in flips:
        data[pos % len(data)] ^= value
    try:
        parse_chunks(chunked(bytes(data), cuts), recv_into)
    except NbdProtocolError:
        pass


@FUZZ
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 2**62), st.booleans(), st.booleans(), st.booleans())
def test_check_request_total(flags, typ, offset, length, size, ro, structured, meta):
    tx = p.Transmission(size, ro, structured, frozenset({1}) if meta else frozenset())
    err, msg = p.check_request(Request(flags, typ, 1, offset, length), tx)
    assert err in (0, p.EINVAL, p.EPERM, p.ENOSPC, p.ENOTSUP)
    assert bool(err) == bool(msg)
    if err == 0 and typ in (0, 1, 4, 6, 7):
        assert 0 < length and offset + length <= size


@FUZZ
@given(st.lists(st.tuples(st.integers(-5, 10**6), st.integers(0, 2**32 - 1)), max_size=20),
       st.integers(1, 2**32 - 1), st.booleans())
def test_normalize_extents_invariants(extents, length, req_one):
    out = p.normalize_extents(extents, length, req_one)
    assert out and all(n > 0 and f & ~3 == 0 for n, f in out)
    assert sum(n for n, _ in out) <= length
    assert all(a[1] != b[1] for a, b in zip(out, out[1:]))
    assert len(p.block_status_reply(1, 1, out)) == 20 + 4 + 8 * len(out)
