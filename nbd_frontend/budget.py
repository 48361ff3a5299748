"""How much memory one NBD connection may hold for its client, sans-IO.

A connection holds memory for a request from the moment it is admitted until its
reply is queued: a READ's data (the export allocates it), a WRITE's payload (read
from the socket into a buffer of its own), plus a little for the objects around
them (``OVERHEAD``).  Once queued, a reply's bytes belong to the socket writer
until the kernel takes them; the writer counts those (``queued`` below, its bytes
plus ``OVERHEAD`` per buffer waiting, so a flood of tiny replies counts too).

`Budget` holds the first part (``reserved``) and decides admission against a cap
on the sum: the connection admits the next request only when it fits, and
otherwise stops reading the socket until replies or requests free enough.  A
request is always admitted when nothing is held, so a cap of at least
``MIN_CAP`` never deadlocks: the largest request fits alone.
"""
from __future__ import annotations

from nbd_frontend.protocol import CMD_READ, CMD_WRITE, MAX_PAYLOAD

OVERHEAD = 128                          # bytes of Python objects per request or queued buffer
MIN_CAP = MAX_PAYLOAD + (1 << 20)       # one largest request, its header and slack


def request_cost(rtype: int, length: int) -> int:
    """Bytes a request of this type and length holds while in flight.

    A READ longer than ``MAX_PAYLOAD`` is refused without allocating its data and
    a WRITE that long ends the connection, so neither counts beyond the maximum."""
    if rtype == CMD_READ:
        return OVERHEAD + (length if length <= MAX_PAYLOAD else 0)
    if rtype == CMD_WRITE:
        return OVERHEAD + min(length, MAX_PAYLOAD)
    return OVERHEAD


class Budget:
    """The bytes reserved by one connection's admitted requests, under ``cap``.

    ``admits(cost, queued)``: may a request of ``cost`` start now, with ``queued``
    bytes held by the writer?  ``take(cost)`` when it starts, ``release(cost)``
    once its reply is queued (or it needed none).  Pure, no I/O, no yields.
    """

    __slots__ = ("cap", "reserved")

    def __init__(self, cap: int) -> None:
        if cap < MIN_CAP:
            raise ValueError(f"queue cap {cap} is below the minimum {MIN_CAP}")
        self.cap = cap
        self.reserved = 0

    def admits(self, cost: int, queued: int) -> bool:
        held = self.reserved + queued
        return held == 0 or held + cost <= self.cap

    def take(self, cost: int) -> None:
        self.reserved += cost

    def release(self, cost: int) -> None:
        self.reserved -= cost
