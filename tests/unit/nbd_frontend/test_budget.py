"""The per-connection memory budget of the NBD server and the parser's look-ahead it
relies on: a request is admitted before anything is allocated for it."""
import pytest

from nbd_frontend import protocol as p
from nbd_frontend.budget import MIN_CAP, OVERHEAD, Budget, request_cost
from nbd_frontend.protocol import NEED_DATA, Request, RequestParser

MiB = 1 << 20


def header(rtype, length, handle=1, offset=0):
    return Request(0, rtype, handle, offset, length).pack()


def test_costs_count_the_data_a_request_holds():
    assert request_cost(p.CMD_READ, 4096) == 4096 + OVERHEAD
    assert request_cost(p.CMD_WRITE, 65536) == 65536 + OVERHEAD
    assert request_cost(p.CMD_FLUSH, 0) == OVERHEAD
    assert request_cost(p.CMD_TRIM, 1 << 30) == OVERHEAD          # no data of its own
    assert request_cost(p.CMD_READ, p.MAX_PAYLOAD + 1) == OVERHEAD  # refused unallocated
    assert request_cost(p.CMD_WRITE, 1 << 31) == OVERHEAD + p.MAX_PAYLOAD


def test_requests_are_admitted_up_to_the_cap_and_again_once_freed():
    budget = Budget(64 * MiB)
    big = request_cost(p.CMD_READ, 32 * MiB)
    assert budget.admits(big, queued=0)
    budget.take(big)
    assert not budget.admits(big, queued=0)            # 2 x (32 MiB + overhead) > 64 MiB
    assert budget.admits(request_cost(p.CMD_READ, 4096), queued=0)
    budget.release(big)                                # its reply queued: the writer has it
    assert not budget.admits(big, queued=big)
    assert budget.admits(big, queued=0)


def test_a_largest_request_is_admitted_when_nothing_is_held():
    budget = Budget(MIN_CAP)
    big = request_cost(p.CMD_WRITE, p.MAX_PAYLOAD)
    assert budget.admits(big, queued=0)
    assert budget.admits(big, queued=MIN_CAP - big)      # fits alongside a small queue
    assert not budget.admits(big, queued=MIN_CAP - big + 1)


def test_queued_replies_alone_stop_admission():
    budget = Budget(MIN_CAP)
    assert not budget.admits(OVERHEAD, queued=MIN_CAP)
    assert budget.admits(OVERHEAD, queued=MIN_CAP - OVERHEAD)


def test_a_cap_below_one_largest_request_is_refused():
    assert MIN_CAP == 33 * MiB
    with pytest.raises(ValueError):
        Budget(MIN_CAP - 1)


def test_peek_sees_the_next_header_before_its_payload_is_allocated():
    parser = RequestParser()
    assert parser.peek() is None
    data = header(p.CMD_WRITE, 8, handle=7) + b"12345678" + header(p.CMD_READ, 512, handle=8)
    parser.receive_data(data[:27])
    assert parser.peek() is None                       # not a whole header yet
    parser.receive_data(data[27:30])
    assert parser.peek() == (p.CMD_WRITE, 8)
    assert parser.next_event() is NEED_DATA            # payload allocated, not complete
    assert parser.peek() is None                       # the pending write was admitted
    parser.receive_data(data[30:])
    req = parser.next_event()
    assert (req.handle, bytes(req.payload)) == (7, b"12345678")
    assert parser.peek() == (p.CMD_READ, 512)
    assert parser.next_event().handle == 8
    assert parser.peek() is None and parser.next_event() is NEED_DATA
