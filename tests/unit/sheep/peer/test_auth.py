"""The peer handshake's pure state machine (sheep.peer.auth): no sockets."""
from __future__ import annotations

import pytest

from sheep.peer import wire
from sheep.peer.auth import (ANSWER, HELLO, REFUSAL, VERDICT, BadKey, ClientHandshake,
                             NotAHandshake, ServerHandshake)

KEY, OTHER = b"k" * 32, b"o" * 32


def test_the_same_key_authenticates_both_ways_with_fixed_size_messages():
    server, client = ServerHandshake(KEY), ClientHandshake(KEY)
    hello = server.hello()
    answer = client.answer(hello)
    verdict = server.verdict(answer)
    assert (len(hello), len(answer), len(verdict)) == (HELLO.size, ANSWER.size, VERDICT.size)
    client.check(verdict)                         # no exception: the server proved the key


def test_a_client_with_another_key_is_refused_by_the_server():
    server, client = ServerHandshake(KEY), ClientHandshake(OTHER)
    with pytest.raises(BadKey, match="bad cluster secret"):
        server.verdict(client.answer(server.hello()))


def test_the_refusal_tells_the_client_to_compare_secret_files():
    client = ClientHandshake(OTHER)
    client.answer(ServerHandshake(KEY).hello())
    with pytest.raises(BadKey, match="same --secret-file"):
        client.check(REFUSAL)


def test_a_server_with_another_key_is_refused_by_the_client():
    """An impostor that accepts anything cannot forge the server's MAC."""
    impostor, client = ServerHandshake(OTHER), ClientHandshake(KEY)
    answer = client.answer(impostor.hello())
    forged = VERDICT.pack(0, b"\x00" * 32)
    with pytest.raises(BadKey, match="another cluster"):
        client.check(forged)
    with pytest.raises(BadKey):                   # and it cannot compute the real one
        impostor.verdict(answer)


def test_a_recorded_client_answer_is_refused_against_a_new_server_nonce():
    first, client = ServerHandshake(KEY), ClientHandshake(KEY)
    recorded = client.answer(first.hello())
    first.verdict(recorded)
    with pytest.raises(BadKey):
        ServerHandshake(KEY).verdict(recorded)


def test_a_server_verdict_cannot_be_reflected_as_a_client_answer():
    """The server's MAC over (Nc, Ns) is not the client's over (Ns, Nc): direction-bound."""
    ns, nc = b"s" * 32, b"c" * 32
    server, client = ServerHandshake(KEY, nonce=ns), ClientHandshake(KEY, nonce=nc)
    _status, server_mac = VERDICT.unpack(server.verdict(client.answer(server.hello())))
    reflected = ANSWER.pack(b"PAUT", 1, nc, server_mac)
    with pytest.raises(BadKey):
        ServerHandshake(KEY, nonce=ns).verdict(reflected)


def test_a_replayed_verdict_is_refused_by_a_client_with_a_new_nonce():
    server, client = ServerHandshake(KEY, nonce=b"s" * 32), ClientHandshake(KEY)
    verdict = server.verdict(client.answer(server.hello()))
    again = ClientHandshake(KEY)
    again.answer(ServerHandshake(KEY, nonce=b"s" * 32).hello())
    with pytest.raises(BadKey):
        again.check(verdict)


@pytest.mark.parametrize("answer", [
    b"",
    b"\x00" * (ANSWER.size - 1),
    b"\xff" * ANSWER.size,
    wire.encode_frame({"op": "install", "oid": 1, "epoch": 1 << 30}, b"x" * 64)[:ANSWER.size],
])
def test_truncated_garbage_or_a_raw_frame_is_not_a_handshake(answer):
    with pytest.raises(NotAHandshake):
        ServerHandshake(KEY).verdict(answer)


def test_another_version_is_not_a_handshake():
    server = ServerHandshake(KEY)
    good = ClientHandshake(KEY).answer(server.hello())
    magic, _version, nc, mac = ANSWER.unpack(good)
    with pytest.raises(NotAHandshake, match="version 2"):
        server.verdict(ANSWER.pack(magic, 2, nc, mac))


@pytest.mark.parametrize("hello", [b"", b"SH" + b"\x00" * (HELLO.size - 2), b"x" * 10])
def test_a_client_refuses_a_greeting_that_is_not_one(hello):
    with pytest.raises(NotAHandshake):
        ClientHandshake(KEY).answer(hello)


def test_a_verdict_before_any_greeting_or_of_the_wrong_size_is_refused():
    with pytest.raises(NotAHandshake):
        ClientHandshake(KEY).check(REFUSAL)
    client = ClientHandshake(KEY)
    client.answer(ServerHandshake(KEY).hello())
    with pytest.raises(NotAHandshake):
        client.check(REFUSAL[:-1])


def test_every_connection_draws_fresh_nonces():
    assert ServerHandshake(KEY).hello() != ServerHandshake(KEY).hello()
    hello = ServerHandshake(KEY).hello()
    assert ClientHandshake(KEY).answer(hello) != ClientHandshake(KEY).answer(hello)
