"""Byte-exact tests of the sans-IO NBD handshake, request parser and reply encoders."""
import struct

import pytest

from common import errors
from nbd_frontend import export
from nbd_frontend import protocol as p
from nbd_frontend.handshake import (
    CLOSED,
    MAX_OPTION_DATA,
    OPTIONS,
    TRANSMISSION,
    Aborted,
    ExportRequest,
    ListRequest,
    Ready,
    ServerHandshake,
)
from nbd_frontend.protocol import NEED_DATA, NbdProtocolError, Request, RequestParser

REPLY_MAGIC = struct.pack("!Q", p.OPTION_REPLY_MAGIC)


# -- client-side encoders (what a client sends) -----------------------------------------
def opt(option: int, data: bytes = b"") -> bytes:
    return b"IHAVEOPT" + struct.pack("!II", option, len(data)) + data


def go_data(name: str, *infos: int) -> bytes:
    raw = name.encode()
    return struct.pack("!I", len(raw)) + raw + struct.pack("!H", len(infos)) + b"".join(
        struct.pack("!H", i) for i in infos)


def meta_data(name: str, *queries: str) -> bytes:
    raw = name.encode()
    out = struct.pack("!I", len(raw)) + raw + struct.pack("!I", len(queries))
    for q in queries:
        out += struct.pack("!I", len(q)) + q.encode()
    return out


def rep(option: int, rtype: int, data: bytes = b"") -> bytes:
    return REPLY_MAGIC + struct.pack("!III", option, rtype, len(data)) + data


def events(hs: ServerHandshake) -> list:
    out = []
    while (ev := hs.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def started(client_flags: int = 3) -> ServerHandshake:
    hs = ServerHandshake()
    hs.data_to_send()
    hs.receive_data(struct.pack("!I", client_flags))
    assert events(hs) == []
    return hs


# -- handshake ------------------------------------------------------------------------------
def test_greeting_is_fixed_newstyle_with_no_zeroes():
    hs = ServerHandshake()
    assert hs.data_to_send() == b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"
    assert hs.data_to_send() == b""
    assert hs.next_event() is NEED_DATA


def test_client_flags_are_recorded_and_unknown_flags_close():
    hs = started(client_flags=1)
    assert hs.client_flags == 1 and hs.state == OPTIONS
    hs = ServerHandshake()
    hs.receive_data(struct.pack("!I", 4))
    with pytest.raises(NbdProtocolError):
        hs.next_event()


def test_structured_reply_then_set_meta_context_then_go():
    hs = started()
    hs.receive_data(opt(p.OPT_STRUCTURED_REPLY))
    assert events(hs) == []
    assert hs.data_to_send() == rep(8, p.REP_ACK)

    hs.receive_data(opt(p.OPT_SET_META_CONTEXT, meta_data("disk", "base:allocation", "qemu:x")))
    assert events(hs) == []
    assert hs.data_to_send() == (rep(10, p.REP_META_CONTEXT, b"\x00\x00\x00\x01base:allocation")
                                 + rep(10, p.REP_ACK))

    hs.receive_data(opt(p.OPT_GO, go_data("disk", p.INFO_NAME, p.INFO_BLOCK_SIZE, 77)))
    assert events(hs) == [ExportRequest(p.OPT_GO, "disk", (1, 3, 77))]
    hs.accept_export(1 << 20, False)
    flags = 1 | 4 | 8 | 32 | 64 | 128 | 2048
    assert hs.data_to_send() == (
        rep(7, p.REP_INFO, struct.pack("!HQH", 0, 1 << 20, flags))
        + rep(7, p.REP_INFO, struct.pack("!HIII", 3, 1, 4096, 32 << 20))
        + rep(7, p.REP_INFO, b"\x00\x01disk")
        + rep(7, p.REP_ACK))
    [ready] = events(hs)
    assert ready == Ready("disk", 1 << 20, False, True, frozenset({1}), flags,
                          ((1, "base:allocation"),))
    assert hs.state == TRANSMISSION
    assert hs.next_event() is NEED_DATA


def test_info_answers_and_handshake_goes_on_readonly_flags():
    hs = started()
    hs.receive_data(opt(p.OPT_INFO, go_data("ro")))
    assert events(hs) == [ExportRequest(p.OPT_INFO, "ro", ())]
    hs.accept_export(4096, True)
    assert hs.data_to_send() == (
        rep(6, p.REP_INFO, struct.pack("!HQH", 0, 4096, 1 | 2 | 4 | 8))
        + rep(6, p.REP_INFO, struct.pack("!HIII", 3, 1, 4096, 32 << 20))
        + rep(6, p.REP_ACK))
    assert hs.state == OPTIONS
    hs.receive_data(opt(p.OPT_GO, go_data("ro")))
    assert events(hs) == [ExportRequest(p.OPT_GO, "ro", ())]


def test_info_description_only_when_known():
    hs = started()
    hs.receive_data(opt(p.OPT_INFO, go_data("d", p.INFO_DESCRIPTION)))
    events(hs)
    hs.accept_export(512, False, description="a disk")
    assert rep(6, p.REP_INFO, b"\x00\x02a disk") in hs.data_to_send()


def test_list_replies_server_entries_then_ack():
    hs = started()
    hs.receive_data(opt(p.OPT_LIST))
    assert events(hs) == [ListRequest()]
    hs.reply_list(["a", "bc"])
    assert hs.data_to_send() == (rep(3, p.REP_SERVER, b"\x00\x00\x00\x01a")
                                 + rep(3, p.REP_SERVER, b"\x00\x00\x00\x02bc")
                                 + rep(3, p.REP_ACK))
    assert hs.state == OPTIONS


def test_list_with_data_is_invalid():
    hs = started()
    hs.receive_data(opt(p.OPT_LIST, b"x"))
    assert events(hs) == []
    assert hs.data_to_send() == rep(3, p.REP_ERR_INVALID, b"LIST takes no data")


def test_abort_acks_and_closes():
    hs = started()
    hs.receive_data(opt(p.OPT_ABORT))
    assert events(hs) == [Aborted()]
    assert hs.data_to_send() == rep(2, p.REP_ACK)
    assert hs.state == CLOSED
    with pytest.raises(NbdProtocolError):
        hs.receive_data(b"x")


@pytest.mark.parametrize("option", [p.OPT_PEEK_EXPORT, p.OPT_EXTENDED_HEADERS, 99])
def test_unknown_option_gets_unsup_and_handshake_goes_on(option):
    hs = started()
    hs.receive_data(opt(option, b"xyz") + opt(p.OPT_LIST))
    assert events(hs) == [ListRequest()]
    assert hs.data_to_send() == rep(option, p.REP_ERR_UNSUP, b"option not supported")


def test_oversized_option_is_skipped_without_buffering():
    hs = started()
    length = MAX_OPTION_DATA + 10
    hs.receive_data(b"IHAVEOPT" + struct.pack("!II", 99, length) + b"\0" * 100)
    assert events(hs) == []
    for _ in range(length // 1000):
        hs.receive_data(b"\0" * 1000)
        assert events(hs) == []
    hs.receive_data(b"\0" * (length % 1000 - 100) + opt(p.OPT_LIST))
    assert events(hs) == [ListRequest()]
    assert hs.data_to_send() == rep(99, p.REP_ERR_UNSUP, b"option data too long")


def test_export_name_reply_with_and_without_no_zeroes():
    for client_flags, zeroes in ((3, b""), (1, bytes(124))):
        hs = started(client_flags)
        hs.receive_data(opt(p.OPT_EXPORT_NAME, b"disk"))
        assert events(hs) == [ExportRequest(p.OPT_EXPORT_NAME, "disk")]
        hs.accept_export(1 << 30, False)
        assert hs.data_to_send() == struct.pack("!QH", 1 << 30, 1 | 4 | 8 | 32 | 64 | 2048) + zeroes
        [ready] = events(hs)
        assert ready.name == "disk" and not ready.structured and ready.meta_contexts == frozenset()


def test_refused_export_name_closes_without_reply():
    hs = started()
    hs.receive_data(opt(p.OPT_EXPORT_NAME, b"nope"))
    events(hs)
    hs.refuse_export(p.REP_ERR_UNKNOWN, "no such export")
    assert hs.data_to_send() == b"" and hs.state == CLOSED


def test_refused_go_sends_message_and_handshake_goes_on():
    hs = started()
    hs.receive_data(opt(p.OPT_GO, go_data("disk")))
    events(hs)
    hs.refuse_export(p.REP_ERR_POLICY, "locked by 10.0.0.1:5")
    assert hs.data_to_send() == rep(7, p.REP_ERR_POLICY, b"locked by 10.0.0.1:5")
    hs.receive_data(opt(p.OPT_GO, go_data("other")))
    assert events(hs) == [ExportRequest(p.OPT_GO, "other", ())]


def test_shell_answers_out_of_turn_are_protocol_errors():
    hs = started()
    with pytest.raises(NbdProtocolError):
        hs.reply_list([])
    with pytest.raises(NbdProtocolError):
        hs.accept_export(1, False)
    with pytest.raises(NbdProtocolError):
        hs.refuse_export(p.REP_ERR_UNKNOWN, "")


def test_bad_option_magic_closes():
    hs = started()
    hs.receive_data(b"IHAVEOPX" + struct.pack("!II", 7, 0))
    with pytest.raises(NbdProtocolError):
        hs.next_event()
    assert hs.state == CLOSED


@pytest.mark.parametrize("data", [b"", b"\0\0\0\x09disk", go_data("disk") + b"!",
                                  b"\0\0\0\x02\xff\xfe\0\0", go_data("a\0b")])
def test_malformed_go_data_is_invalid(data):
    hs = started()
    hs.receive_data(opt(p.OPT_GO, data))
    assert events(hs) == []
    reply = hs.data_to_send()
    assert reply.startswith(REPLY_MAGIC + struct.pack("!II", 7, p.REP_ERR_INVALID))
    assert hs.state == OPTIONS


def test_set_meta_context_needs_structured_replies():
    hs = started()
    hs.receive_data(opt(p.OPT_SET_META_CONTEXT, meta_data("disk", "base:allocation")))
    events(hs)
    assert hs.data_to_send().startswith(REPLY_MAGIC + struct.pack("!II", 10, p.REP_ERR_INVALID))


@pytest.mark.parametrize("queries,listed", [((), True), (("base:",), True),
                                            (("base:allocation",), True), (("qemu:dirty",), False)])
def test_list_meta_context(queries, listed):
    hs = started()
    hs.receive_data(opt(p.OPT_LIST_META_CONTEXT, meta_data("disk", *queries)))
    events(hs)
    ctx = rep(9, p.REP_META_CONTEXT, b"\x00\x00\x00\x00base:allocation")  # LIST: id 0
    assert hs.data_to_send() == (ctx if listed else b"") + rep(9, p.REP_ACK)


def test_meta_context_for_another_export_is_not_used():
    hs = started()
    hs.receive_data(opt(p.OPT_STRUCTURED_REPLY)
                    + opt(p.OPT_SET_META_CONTEXT, meta_data("a", "base:allocation"))
                    + opt(p.OPT_GO, go_data("b")))
    events(hs)
    hs.accept_export(512, False)
    [ready] = events(hs)
    assert ready.structured and ready.meta_contexts == frozenset()


def _full_handshake_stream() -> bytes:
    return (struct.pack("!I", 3) + opt(99, b"junk") + opt(p.OPT_STRUCTURED_REPLY)
            + opt(p.OPT_LIST_META_CONTEXT, meta_data("disk"))
            + opt(p.OPT_SET_META_CONTEXT, meta_data("disk", "base:allocation"))
            + opt(p.OPT_GO, go_data("disk", p.INFO_BLOCK_SIZE))
            + Request(0, p.CMD_READ, 7, 0, 512).pack())


def _drive(chunks) -> tuple[bytes, list, bytes]:
    hs = ServerHandshake()
    out = hs.data_to_send()
    seen = []
    for chunk in chunks:
        hs.receive_data(chunk)
        while (ev := hs.next_event()) is not NEED_DATA:
            seen.append(ev)
            if isinstance(ev, ExportRequest):
                hs.accept_export(1 << 20, False)
        out += hs.data_to_send()
    return out, seen, hs.trailing_data()


def test_whole_buffer_and_byte_at_a_time_agree_and_keep_trailing_bytes():
    stream = _full_handshake_stream()
    whole = _drive([stream])
    # The GO is answered only after the shell accepts: trailing bytes past the GO stay put.
    one = _drive([stream[i:i + 1] for i in range(len(stream))])
    assert whole == one
    out, seen, trailing = whole
    assert trailing == Request(0, p.CMD_READ, 7, 0, 512).pack()
    assert isinstance(seen[-1], Ready) and seen[-1].meta_contexts == frozenset({1})
    assert out.count(REPLY_MAGIC) == 1 + 1 + 2 + 2 + 3


# -- request parser -------------------------------------------------------------------------
def _parse_all(parser: RequestParser) -> list:
    out = []
    while (ev := parser.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_request_header_layout():
    raw = Request(p.CMD_FLAG_FUA, p.CMD_TRIM, 0x0102030405060708, 4096, 512).pack()
    assert raw == bytes.fromhex("25609513" "0001" "0004" "0102030405060708"
                                "0000000000001000" "00000200")


def test_parse_whole_byte_at_a_time_and_trailing():
    write = Request(0, p.CMD_WRITE, 1, 10, 5).pack() + b"hello"
    read = Request(0, p.CMD_READ, 2, 0, 512).pack()
    stream = write + read + read[:7]
    expected = [Request(0, p.CMD_WRITE, 1, 10, 5, bytearray(b"hello")), Request(0, p.CMD_READ, 2, 0, 512)]
    parser = RequestParser()
    parser.receive_data(stream)
    assert _parse_all(parser) == expected
    parser.receive_data(read[7:])
    assert _parse_all(parser) == [Request(0, p.CMD_READ, 2, 0, 512)]

    parser, got = RequestParser(), []
    for i in range(len(stream)):
        parser.receive_data(stream[i:i + 1])
        got += _parse_all(parser)
    assert got == expected


def test_write_payload_via_recv_into_buffer():
    parser = RequestParser()
    parser.receive_data(Request(p.CMD_FLAG_FUA, p.CMD_WRITE, 9, 0, 10).pack() + b"abc")
    assert parser.next_event() is NEED_DATA
    view = parser.payload_buffer()
    assert len(view) == 7
    view[:4] = b"defg"
    parser.payload_received(4)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"hij" + Request(0, p.CMD_FLUSH, 10, 0, 0).pack())
    assert parser.payload_buffer() is None
    assert _parse_all(parser) == [Request(1, p.CMD_WRITE, 9, 0, 10, bytearray(b"abcdefghij")),
                                  Request(0, p.CMD_FLUSH, 10, 0, 0)]


def test_bad_magic_and_oversized_write_are_fatal():
    parser = RequestParser()
    parser.receive_data(b"\x25\x60\x95\x14" + bytes(24))
    with pytest.raises(NbdProtocolError):
        parser.next_event()
    with pytest.raises(NbdProtocolError):
        parser.next_event()
    parser = RequestParser()
    parser.receive_data(Request(0, p.CMD_WRITE, 1, 0, p.MAX_PAYLOAD + 1).pack())
    with pytest.raises(NbdProtocolError):
        parser.next_event()


TX = p.Transmission(size=1 << 20, readonly=False, structured=True, meta_contexts=frozenset({1}))
RO = p.Transmission(size=1 << 20, readonly=True, structured=False)


@pytest.mark.parametrize("req,tx,err", [
    (Request(0, p.CMD_READ, 1, 0, 4096), TX, 0),
    (Request(p.CMD_FLAG_DF, p.CMD_READ, 1, 0, 4096), TX, 0),
    (Request(p.CMD_FLAG_DF, p.CMD_READ, 1, 0, 4096), RO, p.EINVAL),      # DF needs structured
    (Request(0, p.CMD_READ, 1, (1 << 20) - 1, 2), TX, p.EINVAL),
    (Request(0, p.CMD_READ, 1, 0, p.MAX_PAYLOAD + 1), TX, p.EINVAL),
    (Request(0, p.CMD_READ, 1, 0, 0), TX, p.EINVAL),
    (Request(0, p.CMD_WRITE, 1, (1 << 20) - 1, 2), TX, p.ENOSPC),
    (Request(0, p.CMD_WRITE, 1, 0, 1), RO, p.EPERM),
    (Request(p.CMD_FLAG_FUA, p.CMD_WRITE, 1, 0, 1), TX, 0),
    (Request(p.CMD_FLAG_NO_HOLE, p.CMD_WRITE, 1, 0, 1), TX, p.EINVAL),
    (Request(0x8000, p.CMD_READ, 1, 0, 1), TX, p.EINVAL),
    (Request(0, 42, 1, 0, 1), TX, p.EINVAL),
    (Request(0, p.CMD_CACHE, 1, 0, 1), TX, p.EINVAL),
    (Request(0, p.CMD_FLUSH, 1, 0, 0), RO, 0),
    (Request(0, p.CMD_TRIM, 1, 0, 1), RO, p.EPERM),
    (Request(p.CMD_FLAG_FAST_ZERO, p.CMD_WRITE_ZEROES, 1, 0, 512), TX, 0),
    (Request(p.CMD_FLAG_FAST_ZERO | p.CMD_FLAG_NO_HOLE, p.CMD_WRITE_ZEROES, 1, 0, 512), TX, p.ENOTSUP),
    (Request(p.CMD_FLAG_REQ_ONE, p.CMD_BLOCK_STATUS, 1, 0, 512), TX, 0),
    (Request(0, p.CMD_BLOCK_STATUS, 1, 0, 512), RO, p.EINVAL),            # no meta context
    (Request(0, p.CMD_BLOCK_STATUS, 1, 1 << 20, 1), TX, p.EINVAL),
])
def test_check_request(req, tx, err):
    assert p.check_request(req, tx)[0] == err


# -- replies ----------------------------------------------------------------------------------
def test_simple_reply_bytes():
    assert p.simple_reply(0x1122334455667788, p.EIO) == bytes.fromhex(
        "67446698" "00000005" "1122334455667788")
    assert p.read_reply_header(5, 4096, 512, structured=False) == p.simple_reply(5)


def test_structured_read_header_bytes():
    assert p.read_reply_header(5, 4096, 512, structured=True) == bytes.fromhex(
        "668e33ef" "0001" "0001" "0000000000000005" "00000208" "0000000000001000")


def test_error_replies_bytes():
    assert p.error_reply(5, p.EINVAL, structured=False, message="ignored") == p.simple_reply(5, 22)
    assert p.error_reply(5, p.ENOSPC, structured=True, message="full") == bytes.fromhex(
        "668e33ef" "0001" "8001" "0000000000000005" "0000000a" "0000001c" "0004") + b"full"


def test_block_status_reply_bytes():
    assert p.block_status_reply(5, 1, [(4096, 0), (512, 3)]) == bytes.fromhex(
        "668e33ef" "0001" "0005" "0000000000000005" "00000014" "00000001"
        "00001000" "00000000" "00000200" "00000003")


@pytest.mark.parametrize("extents,length,req_one,out", [
    ([(100, 3), (100, 3), (50, 0)], 1000, False, [(200, 3), (50, 0)]),
    ([(100, 3), (100, 0)], 150, False, [(100, 3), (50, 0)]),
    ([(100, 3), (100, 0)], 150, True, [(100, 3)]),
    ([], 77, False, [(77, 0)]),
    ([(0, 1), (10, 0xff)], 5, False, [(5, 3)]),
])
def test_normalize_extents(extents, length, req_one, out):
    assert p.normalize_extents(extents, length, req_one) == out


# -- edge tables (nbd_frontend.export) -------------------------------------------------------
@pytest.mark.parametrize("exc,errno", [
    (errors.OutOfRange(), p.EINVAL), (errors.InvalidRequest(), p.EINVAL), (errors.NoSpace(), p.ENOSPC),
    (errors.ReadOnly(), p.EPERM), (errors.Unavailable(), p.EIO), (errors.NoObject(), p.EIO),
    (errors.Shutdown(), p.ESHUTDOWN), (ValueError("bug"), p.EIO)])
def test_errno_table(exc, errno):
    assert export.errno_for(exc) == errno


@pytest.mark.parametrize("exc,code", [
    (errors.NotFound(), p.REP_ERR_UNKNOWN), (errors.Locked("locked by h:1"), p.REP_ERR_POLICY),
    (errors.Shutdown(), p.REP_ERR_SHUTDOWN), (errors.Unavailable(), p.REP_ERR_UNKNOWN),
    (KeyError("bug"), p.REP_ERR_UNKNOWN)])
def test_option_error_table(exc, code):
    assert export.option_error_for(exc) == code
