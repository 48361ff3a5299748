"""What the NBD server serves: the Export / ExportProvider interfaces and the error tables.

The sheep daemon implements ``ExportProvider`` over the VDI catalog and ``Export``
over a ``vdi.volume.Volume``; tests implement both over a bytearray.  Methods
may block the calling greenlet (they run in the connection's request pool) and
report failures by raising ``common.errors`` classes; the two tables below turn
those into NBD errnos (transmission) and NBD_REP_ERR_* codes (handshake).  They
are the only places where that translation happens.
"""
from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from common import errors
from nbd_frontend import protocol as p

log = logging.getLogger(__name__)

# base:allocation flags an Export's block_status may return
HOLE = p.STATE_HOLE
ZERO = p.STATE_ZERO


@runtime_checkable
class Export(Protocol):
    """One attached export (for a VDI: the lock is held from open until close()).

    ``size`` and ``readonly`` are fixed for the life of the attachment.  The
    server checks ranges, read-only and flags before calling; the export may
    still raise (OutOfRange, ReadOnly, NoSpace, Unavailable, Shutdown ...).

    FUA: the server passes ``fua=True`` and then calls ``flush()`` before replying,
    unless the export has ``handles_fua = True``, which promises that a call
    with ``fua=True`` is durable when it returns (cheaper than a full flush).
    """
    name: str
    size: int
    readonly: bool

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes (holes read as zeros); any bytes-like object."""

    def write(self, offset: int, data, fua: bool = False) -> None:
        """Write ``data`` (bytes-like); with fua, durable before returning."""

    def flush(self) -> None:
        """Every write that returned before this call is on stable storage."""

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Discard hint: the range may read as anything (zeros in practice) afterwards."""

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool = False) -> None:
        """Range reads as zeros afterwards; ``may_trim`` allows punching holes."""

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Consecutive ``(length, flags)`` extents from ``offset``; flags HOLE=1 | ZERO=2."""

    # optional, with ExportProvider.meta_contexts:
    # def context_status(self, context: str, offset: int, length: int) -> list[tuple[int, int]]:
    #     """The same for one of the extra meta contexts the provider offered this export."""

    def close(self) -> None:
        """Detach (release the lock).  Called exactly once, after the last request."""


@runtime_checkable
class ExportProvider(Protocol):
    """The catalog of exports a server offers."""

    def list_exports(self) -> list[str]:
        """Names for NBD_OPT_LIST."""

    def describe(self, name: str) -> tuple[int, bool]:
        """(size, readonly) for NBD_OPT_INFO; NotFound if unknown.  Takes no locks."""

    def open_export(self, name: str, client_addr: str) -> Export:
        """Attach; NotFound if unknown, Locked (message names the holder) if taken."""

    # optional: a provider with meta contexts besides base:allocation
    # def meta_contexts(self, name: str) -> list[str]:
    #     """Every extra context export ``name`` offers (``x-ns:leaf`` names); the
    #     handshake matches clients' queries against them.  Takes no locks."""


# -- edge tables -----------------------------------------------------------------------

# common.errors class -> NBD errno for a failed request (first match in MRO order wins).
ERRNO_TABLE: dict[type, int] = {
    errors.OutOfRange: p.EINVAL,
    errors.InvalidRequest: p.EINVAL,
    errors.NoSpace: p.ENOSPC,
    errors.ReadOnly: p.EPERM,
    errors.Fenced: p.EPERM,
    errors.StaleGeneration: p.EPERM,
    errors.Shutdown: p.ESHUTDOWN,
    errors.Unavailable: p.EIO,
    errors.SheepError: p.EIO,
}

# common.errors class -> NBD_REP_ERR_* for a refused INFO/GO.  Locked is "policy":
# qemu prints "Denied by server for option ..." followed by our message (the holder).
OPTION_ERROR_TABLE: dict[type, int] = {
    errors.NotFound: p.REP_ERR_UNKNOWN,
    errors.Locked: p.REP_ERR_POLICY,
    errors.ReadOnly: p.REP_ERR_POLICY,
    errors.Shutdown: p.REP_ERR_SHUTDOWN,
    errors.InvalidRequest: p.REP_ERR_INVALID,
    errors.SheepError: p.REP_ERR_UNKNOWN,
}


def _lookup(table: dict[type, int], exc: BaseException, default: int) -> int:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def errno_for(exc: BaseException, what: str = "request") -> int:
    """NBD errno for an exception raised by an Export.  The one catch-all: anything
    that is not a SheepError is a bug, logged with its traceback, and becomes EIO."""
    if not isinstance(exc, errors.SheepError):
        log.error("unexpected error in %s", what, exc_info=exc)
    return _lookup(ERRNO_TABLE, exc, p.EIO)


def option_error_for(exc: BaseException, what: str = "option") -> int:
    """NBD_REP_ERR_* for an exception raised by an ExportProvider (catch-all logs)."""
    if not isinstance(exc, errors.SheepError):
        log.error("unexpected error in %s", what, exc_info=exc)
    return _lookup(OPTION_ERROR_TABLE, exc, p.REP_ERR_UNKNOWN)
