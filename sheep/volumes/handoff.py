"""When a VDI's writer may hand the write right over (pure: no I/O, no gevent).

The right to write a working VDI is its lock (`coordinator.locks`), taken at a
connection's first write, trim or zeroes.  A connection that wants to write while
another holds it asks for a hand-off (`coordinator.attachments`), and the holder gives
the lock up only when it is *quiescent and clean*: nothing in flight, and every
mutation it acknowledged followed by a completed FLUSH (or FUA), and it has been so for
``idle_s`` (the policy: automatic after a clean idle period).  A dirty holder is never
pre-empted: the asker waits up to ``timeout_s`` and then fails its write.

This is the state qemu's migration source is in after it stopped the guest, drained and
flushed; and a second VM booted on the same VDI by mistake cannot write while the first
one has unflushed writes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

IDLE_S = 0.5            # a clean holder hands over after being idle this long
TIMEOUT_S = 30.0        # an asker's write fails (EIO) after waiting this long


@dataclass(frozen=True)
class HandoffPolicy:
    idle_s: float = IDLE_S
    timeout_s: float = TIMEOUT_S


class WriteState:
    """What one writer did since its last completed flush."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.in_flight = 0
        self.done = 0               # mutations finished (acknowledged or failed)
        self.flushed = 0            # `done` as it was when the newest completed flush began
        self.last = clock()         # when the last mutation finished (or this began)

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        self.done += 1
        self.last = self._clock()

    def flush_started(self) -> int:
        """The mark a flush that starts now covers (pass it to `flush_finished`)."""
        return self.done

    def flush_finished(self, mark: int) -> None:
        self.flushed = max(self.flushed, mark)

    @property
    def clean(self) -> bool:
        """Nothing in flight and every finished mutation covered by a completed flush."""
        return self.in_flight == 0 and self.flushed == self.done

    def idle_for(self) -> float:
        return self._clock() - self.last

    def may_hand_over(self, policy: HandoffPolicy) -> bool:
        return self.clean and self.idle_for() >= policy.idle_s

    def wait_before_asking_again(self, policy: HandoffPolicy, poll_s: float = 0.05) -> float:
        """How long a holder with a request pending sleeps before it looks again."""
        if self.clean:
            return max(0.0, min(policy.idle_s - self.idle_for(), policy.idle_s)) or poll_s
        return poll_s
