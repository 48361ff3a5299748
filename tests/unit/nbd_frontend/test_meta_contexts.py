"""Meta contexts besides base:allocation: the handshake asks the shell what an export
offers, matches queries itself, numbers the selection; BLOCK_STATUS needs any context."""
import struct

import pytest

from nbd_frontend import protocol as p
from nbd_frontend.handshake import (ExportRequest, MetaContextRequest, Ready, ServerHandshake,
                                    match_contexts)
from tests.unit.nbd_frontend.test_protocol import events, go_data, meta_data, opt, rep

DIFFS = ["x-sheepdog:diff:s1", "x-sheepdog:diff:s3"]


def started(structured: bool = True) -> ServerHandshake:
    hs = ServerHandshake(extra_contexts=True)
    hs.data_to_send()
    hs.receive_data(struct.pack("!I", 3) + (opt(p.OPT_STRUCTURED_REPLY) if structured else b""))
    assert events(hs) == []
    hs.data_to_send()
    return hs


def ctx(option: int, ctx_id: int, name: str) -> bytes:
    return rep(option, p.REP_META_CONTEXT, struct.pack("!I", ctx_id) + name.encode())


@pytest.mark.parametrize("queries,listed", [
    ((), ["base:allocation", *DIFFS]),
    (("x-sheepdog:",), DIFFS),
    (("x-sheepdog:diff:",), DIFFS),
    (("x-sheepdog:diff:s3",), ["x-sheepdog:diff:s3"]),
    (("x-sheepdog:diff:s3", "x-sheepdog:diff:"), DIFFS),
    (("x-sheepdog:diff:nope", "qemu:dirty-bitmap:a"), []),
    (("base:", "x-sheepdog:diff:s1"), ["base:allocation", "x-sheepdog:diff:s1"]),
])
def test_list_asks_the_shell_and_matches_queries(queries, listed):
    hs = started()
    hs.receive_data(opt(p.OPT_LIST_META_CONTEXT, meta_data("vm@s2", *queries)))
    [req] = events(hs)
    assert req == MetaContextRequest(p.OPT_LIST_META_CONTEXT, "vm@s2", tuple(queries))
    assert hs.data_to_send() == b""
    hs.reply_meta_contexts(DIFFS)
    # LIST replies carry id 0 (reserved there)
    assert hs.data_to_send() == b"".join(ctx(9, 0, n) for n in listed) + rep(9, p.REP_ACK)
    assert events(hs) == []


def test_base_only_queries_are_answered_without_the_shell():
    hs = started()
    hs.receive_data(opt(p.OPT_LIST_META_CONTEXT, meta_data("vm", "base:allocation")))
    assert events(hs) == []
    assert hs.data_to_send() == ctx(9, 0, "base:allocation") + rep(9, p.REP_ACK)


def test_set_selects_exact_names_with_ids_and_go_reports_them():
    hs = started()
    hs.receive_data(opt(p.OPT_SET_META_CONTEXT, meta_data(
        "vm@s2", "x-sheepdog:diff:", "x-sheepdog:diff:s3", "base:allocation", "nope:x")))
    [req] = events(hs)
    hs.reply_meta_contexts(DIFFS)
    # a prefix selects nothing in SET; ids: 1 base:allocation, then the others in order
    assert hs.data_to_send() == (ctx(10, 1, "base:allocation") + ctx(10, 2, "x-sheepdog:diff:s3")
                                 + rep(10, p.REP_ACK))
    hs.receive_data(opt(p.OPT_GO, go_data("vm@s2")))
    [go] = events(hs)
    assert isinstance(go, ExportRequest)
    hs.accept_export(1 << 20, True)
    [ready] = events(hs)
    assert isinstance(ready, Ready)
    assert ready.meta_contexts == frozenset({1, 2})
    assert ready.contexts == ((1, "base:allocation"), (2, "x-sheepdog:diff:s3"))


def test_a_diff_context_alone_allows_block_status():
    hs = started()
    hs.receive_data(opt(p.OPT_SET_META_CONTEXT, meta_data("vm@s2", "x-sheepdog:diff:s1")))
    events(hs)
    hs.reply_meta_contexts(DIFFS)
    assert hs.data_to_send() == ctx(10, 2, "x-sheepdog:diff:s1") + rep(10, p.REP_ACK)
    hs.receive_data(opt(p.OPT_GO, go_data("vm@s2")))
    events(hs)
    hs.accept_export(1 << 20, True)
    [ready] = events(hs)
    assert ready.contexts == ((2, "x-sheepdog:diff:s1"),)
    tx = ready.transmission()
    assert p.check_request(p.Request(0, p.CMD_BLOCK_STATUS, 1, 0, 512), tx) == (0, "")
    none = p.Transmission(1 << 20, True, True, frozenset())
    assert p.check_request(p.Request(0, p.CMD_BLOCK_STATUS, 1, 0, 512), none)[0] == p.EINVAL


def test_a_set_for_another_export_is_not_used_at_go():
    hs = started()
    hs.receive_data(opt(p.OPT_SET_META_CONTEXT, meta_data("vm@s2", "x-sheepdog:diff:s1")))
    events(hs)
    hs.reply_meta_contexts(DIFFS)
    hs.receive_data(opt(p.OPT_GO, go_data("vm@s3")))
    events(hs)
    hs.accept_export(1 << 20, True)
    [ready] = events(hs)
    assert ready.contexts == () and ready.meta_contexts == frozenset()


def test_without_extra_contexts_nothing_is_asked():
    hs = ServerHandshake()
    hs.data_to_send()
    hs.receive_data(struct.pack("!I", 3) + opt(p.OPT_LIST_META_CONTEXT,
                                                meta_data("vm@s2", "x-sheepdog:")))
    assert events(hs) == []
    assert hs.data_to_send() == rep(9, p.REP_ACK)


def test_a_reply_without_a_request_is_a_protocol_error():
    hs = started()
    with pytest.raises(p.NbdProtocolError):
        hs.reply_meta_contexts(DIFFS)


def test_match_contexts_keeps_the_offered_order_without_duplicates():
    offered = ["x-a:1", "x-a:2", "x-b:1", "x-a:1"]
    assert match_contexts((), offered, listing=True) == ["x-a:1", "x-a:2", "x-b:1"]
    assert match_contexts(("x-b:1", "x-a:"), offered, listing=True) == ["x-a:1", "x-a:2", "x-b:1"]
    assert match_contexts(("x-a:",), offered, listing=False) == []
    assert match_contexts((), offered, listing=False) == []


def test_block_status_chunks_one_per_context_done_on_the_last():
    first = p.block_status_reply(7, 1, [(512, 3)], done=False)
    last = p.block_status_reply(7, 2, [(512, 1)])
    assert struct.unpack_from("!IHHQI", first)[1] == 0
    assert struct.unpack_from("!IHHQI", last)[1] == p.REPLY_FLAG_DONE
    # flags of other contexts are not masked to base:allocation's bits
    assert p.normalize_extents([(512, 5)], 512, mask=0xFFFFFFFF) == [(512, 5)]
    assert p.normalize_extents([(512, 5)], 512) == [(512, 1)]
