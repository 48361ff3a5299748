"""The sans-IO handshake with TLS required, without it, and the option cap; the TLS
context's refusal of unusable files."""
from __future__ import annotations

import struct

import pytest

from common.errors import InvalidRequest
from nbd_frontend import protocol as p
from nbd_frontend import tls as nbd_tls
from nbd_frontend.handshake import (
    CLOSED,
    MAX_OPTION_DATA,
    OPTIONS,
    TLS_WAIT,
    Aborted,
    ExportRequest,
    ListRequest,
    ServerHandshake,
    StartTls,
)
from nbd_frontend.protocol import NbdProtocolError
from sheep.daemon.config import parse_args
from tests.unit.nbd_frontend.test_protocol import events, go_data, opt, rep

TLS_REQD_MSG = b"TLS is required: send STARTTLS first"


def started(**kwargs) -> ServerHandshake:
    hs = ServerHandshake(**kwargs)
    hs.data_to_send()
    hs.receive_data(struct.pack("!I", 3))
    assert events(hs) == []
    return hs


def tls_started() -> ServerHandshake:
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_STARTTLS))
    assert events(hs) == [StartTls()]
    assert hs.data_to_send() == rep(p.OPT_STARTTLS, p.REP_ACK)
    hs.tls_started()
    return hs


# -- TLS required ------------------------------------------------------------------------
@pytest.mark.parametrize("option, data", [
    (p.OPT_LIST, b""),
    (p.OPT_GO, go_data("disk")),
    (p.OPT_INFO, go_data("disk")),
    (p.OPT_STRUCTURED_REPLY, b""),
    (99, b"xyz"),
])
def test_every_option_before_starttls_gets_tls_reqd(option, data):
    hs = started(tls=True)
    hs.receive_data(opt(option, data))
    assert events(hs) == []
    assert hs.data_to_send() == rep(option, p.REP_ERR_TLS_REQD, TLS_REQD_MSG)
    assert hs.state == OPTIONS and hs.tls_pending
    assert not hs.structured                   # nothing negotiated in plaintext


def test_oversized_option_before_starttls_is_skipped_and_gets_tls_reqd():
    hs = started(tls=True)
    hs.receive_data(b"IHAVEOPT" + struct.pack("!II", p.OPT_GO, MAX_OPTION_DATA + 1))
    hs.receive_data(bytes(MAX_OPTION_DATA + 1))
    assert events(hs) == []
    assert hs.data_to_send() == rep(p.OPT_GO, p.REP_ERR_TLS_REQD, b"option data too long")


def test_export_name_before_starttls_closes():
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_EXPORT_NAME, b"disk"))
    with pytest.raises(NbdProtocolError, match="before STARTTLS"):
        events(hs)
    assert hs.state == CLOSED and hs.data_to_send() == b""


def test_abort_before_starttls_is_acked():
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_ABORT))
    assert events(hs) == [Aborted()]
    assert hs.data_to_send() == rep(p.OPT_ABORT, p.REP_ACK)
    assert hs.state == CLOSED


def test_starttls_is_acked_then_negotiation_goes_on_inside_tls():
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_LIST))
    hs.receive_data(opt(p.OPT_STARTTLS))
    assert events(hs) == [StartTls()]
    assert hs.data_to_send() == (rep(p.OPT_LIST, p.REP_ERR_TLS_REQD, TLS_REQD_MSG)
                                 + rep(p.OPT_STARTTLS, p.REP_ACK))
    assert hs.state == TLS_WAIT
    assert events(hs) == []                    # waits for the shell's TLS handshake
    hs.tls_started()
    assert not hs.tls_pending and hs.state == OPTIONS
    hs.receive_data(opt(p.OPT_LIST) + opt(p.OPT_GO, go_data("disk")))
    assert events(hs) == [ListRequest()]
    hs.reply_list(["disk"])
    assert events(hs) == [ExportRequest(p.OPT_GO, "disk", ())]


def test_second_starttls_is_invalid():
    hs = tls_started()
    hs.receive_data(opt(p.OPT_STARTTLS))
    assert events(hs) == []
    assert hs.data_to_send() == rep(p.OPT_STARTTLS, p.REP_ERR_INVALID, b"TLS already enabled")
    assert hs.state == OPTIONS


def test_export_name_inside_tls_is_served():
    hs = tls_started()
    hs.receive_data(opt(p.OPT_EXPORT_NAME, b"disk"))
    assert events(hs) == [ExportRequest(p.OPT_EXPORT_NAME, "disk")]


def test_bytes_pipelined_after_starttls_close():
    """A ClientHello sent before the ACK arrived would be taken as plaintext: refuse it."""
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_STARTTLS) + b"\x16\x03\x01")
    with pytest.raises(NbdProtocolError, match="after STARTTLS"):
        events(hs)
    assert hs.state == CLOSED


def test_data_fed_while_waiting_for_tls_closes():
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_STARTTLS))
    assert events(hs) == [StartTls()]
    with pytest.raises(NbdProtocolError):
        hs.receive_data(b"\x16")
    assert hs.state == CLOSED


def test_tls_started_out_of_turn_is_a_protocol_error():
    with pytest.raises(NbdProtocolError):
        started(tls=True).tls_started()


def test_starttls_with_data_is_invalid():
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_STARTTLS, b"x"))
    assert events(hs) == []
    assert hs.data_to_send() == rep(p.OPT_STARTTLS, p.REP_ERR_INVALID, b"STARTTLS takes no data")
    assert hs.tls_pending


# -- TLS not configured ------------------------------------------------------------------
def test_starttls_without_tls_is_refused_by_policy_and_handshake_goes_on():
    hs = started()
    hs.receive_data(opt(p.OPT_STARTTLS) + opt(p.OPT_LIST))
    assert events(hs) == [ListRequest()]
    assert hs.data_to_send() == rep(p.OPT_STARTTLS, p.REP_ERR_POLICY, b"TLS not configured")


# -- option cap --------------------------------------------------------------------------
@pytest.mark.parametrize("tls", [False, True])
def test_option_cap_closes_on_the_next_option(tls):
    hs = started(tls=tls, max_options=5)
    hs.receive_data(opt(99) * 5)
    assert events(hs) == []
    assert hs.data_to_send().count(struct.pack("!Q", p.OPTION_REPLY_MAGIC)) == 5
    hs.receive_data(opt(p.OPT_LIST))
    with pytest.raises(NbdProtocolError, match="more than 5 options"):
        events(hs)
    assert hs.state == CLOSED


def test_option_cap_counts_skipped_oversized_options():
    hs = started(max_options=1)
    hs.receive_data(b"IHAVEOPT" + struct.pack("!II", 99, MAX_OPTION_DATA + 1))
    hs.receive_data(bytes(MAX_OPTION_DATA + 1) + opt(p.OPT_LIST))
    with pytest.raises(NbdProtocolError, match="more than 1 options"):
        events(hs)


def test_default_cap_lets_a_normal_client_through():
    hs = started(tls=True)
    hs.receive_data(opt(p.OPT_STARTTLS))
    assert events(hs) == [StartTls()]
    hs.tls_started()
    hs.receive_data(opt(p.OPT_STRUCTURED_REPLY) + opt(p.OPT_LIST) * 10)
    for _ in range(10):
        assert events(hs) == [ListRequest()]
        hs.reply_list([])


# -- the server context ------------------------------------------------------------------
def test_server_context_names_a_missing_file(tmp_path):
    (tmp_path / "ca-cert.pem").write_text("x")
    with pytest.raises(InvalidRequest, match="server-cert.pem is missing or unreadable"):
        nbd_tls.server_context(tmp_path)


def test_server_context_names_a_file_it_cannot_load(tmp_path):
    for name in nbd_tls.REQUIRED_FILES:
        (tmp_path / name).write_text("not a certificate\n")
    with pytest.raises(InvalidRequest, match="cannot load .*server-cert.pem"):
        nbd_tls.server_context(tmp_path)


def test_sheep_refuses_to_start_on_an_unusable_tls_dir(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--dir", "/srv/sheep", "--zk", "zk", "--nbd-tls-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"--nbd-tls-dir: NBD TLS: {tmp_path}/ca-cert.pem is missing or unreadable "
                        "(the directory needs ca-cert.pem, server-cert.pem, server-key.pem)")


class _RecordingTls:
    def __init__(self):
        self.writes: list[bytes] = []

    def sendall(self, data) -> None:
        self.writes.append(bytes(data))


def test_tls_sender_joins_small_buffers_and_writes_large_ones_as_they_are():
    tls = _RecordingTls()
    big = bytes(nbd_tls.COALESCE_BYTES)
    sent = nbd_tls.TlsSender(tls).sendmsg([b"h1", memoryview(b"p1"), b"h2", big, b"h3", b"p3"])
    assert sent == 10 + len(big)
    assert tls.writes == [b"h1p1h2", big, b"h3p3"]
