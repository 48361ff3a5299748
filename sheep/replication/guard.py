"""May this node write now?  `WriteGuard`: fencing, the session a VDI was attached under,
and the daemon's own refusals (cluster waiting or shut down).

A storage node's replica and its gateway share one guard; a gateway-only node, which has
no replica, has a guard all the same: its writes are refused exactly when a storage
node's would be.
"""
from __future__ import annotations

from typing import Callable

from common.errors import Fenced


class WriteGuard:
    def __init__(self, is_fenced: Callable[[], bool], *,
                 wait_unfenced: Callable[[float], bool] = lambda _s: False,
                 session_generation: Callable[[], int] = lambda: 0) -> None:
        self.is_fenced = is_fenced
        self._wait_unfenced = wait_unfenced
        self._session_generation = session_generation
        # Why writes are refused besides fencing (cluster waiting/shutdown), or None.
        self.write_block: Callable[[], Exception | None] | None = None

    def check(self, generation: int | None = None, wait_s: float = 0.0) -> None:
        """Refuse writes while fenced, or once the session ``generation`` is gone.

        With ``wait_s``, a session in doubt (ZooKeeper unreachable, e.g. restarting) is
        waited for rather than refused: if the same session comes back the write goes
        on; if the session was lost, whatever was held under it (the VDI lock of the
        ``generation`` given) is gone and the write is refused.
        """
        if self.is_fenced() and not (wait_s > 0 and self._wait_unfenced(wait_s)):
            raise Fenced("node is fenced: ZooKeeper session lost")
        if generation is not None and self._session_generation() != generation:
            raise Fenced("ZooKeeper session lost since the VDI was attached: its lock is gone")
        if self.write_block is not None:
            refusal = self.write_block()
            if refusal is not None:
                raise refusal
