"""One exception tree for the whole system.

Every leaf registers a small integer wire code, so an error raised on one sheep
travels over the peer protocol (``{"code": N, "error": "message", ...}``) and is
raised again, as the same class, on the gateway that sent the request.  The edges
translate these classes into their own vocabularies in exactly one table each:
HTTP statuses in ``sheep.admin.app``, NBD errnos in ``nbd_frontend``, exit codes in
``collie``.
"""
from __future__ import annotations

_BY_CODE: dict[int, type["SheepError"]] = {}


def _wire(code: int):
    def register(cls):
        assert code not in _BY_CODE, code
        cls.code = code
        _BY_CODE[code] = cls
        return cls
    return register


class SheepError(Exception):
    """Base of every error the system raises on purpose."""

    code = 1

    def __init__(self, message: str = "", **data):
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)
        self.data = data

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_wire(self) -> dict:
        return {"code": self.code, "error": self.message, **self.data}

    @staticmethod
    def from_wire(header: dict) -> "SheepError":
        cls = _BY_CODE.get(header.get("code", 1), SheepError)
        data = {k: v for k, v in header.items() if k not in ("code", "error", "id")}
        return cls(str(header.get("error", "")), **data)


SheepError.code = 1
_BY_CODE[1] = SheepError


@_wire(2)
class NoObject(SheepError):
    """object not found on this node"""


@_wire(3)
class OldEpoch(SheepError):
    """the request carries an epoch older than the receiver's (data: epoch)"""


@_wire(4)
class NewEpoch(SheepError):
    """the receiver has not seen the request's epoch yet"""


@_wire(5)
class NoSpace(SheepError):
    """no space left"""


@_wire(6)
class ReadOnly(SheepError):
    """read-only"""


@_wire(7)
class InvalidRequest(SheepError):
    """invalid request"""


@_wire(8)
class NotFound(SheepError):
    """not found"""


@_wire(9)
class AlreadyExists(SheepError):
    """already exists"""


@_wire(10)
class NotReady(SheepError):
    """cluster is not formatted or not running"""


@_wire(11)
class Fenced(SheepError):
    """this node lost its ZooKeeper session and serves no writes"""


@_wire(12)
class Unavailable(SheepError):
    """replicas unreachable"""


@_wire(13)
class Locked(SheepError):
    """the VDI is locked by another attacher (data: holder)"""


@_wire(14)
class OutOfRange(SheepError):
    """offset or length outside the VDI"""


@_wire(15)
class ProtocolError(SheepError):
    """malformed message on the wire"""


@_wire(16)
class StoreMismatch(SheepError):
    """the store directory belongs to another cluster"""


@_wire(17)
class Shutdown(SheepError):
    """the node or cluster is shutting down"""


@_wire(18)
class Corrupt(SheepError):
    """a copy's data fails its block checksums (data: oid, blocks)"""


@_wire(19)
class StaleGeneration(SheepError):
    """the VDI's lock generation was superseded: a newer attacher holds it (data: vid,
    generation, newest)"""


@_wire(20)
class Degraded(SheepError):
    """fewer replicas available than the cluster's min_copies: writes are refused"""
