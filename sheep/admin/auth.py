"""Who may call the admin API: the pure checks applied to every request before routing.

Order (the first failure answers):

1. ``Host`` names this sheep: an IP literal, ``localhost``, the sheep's ``--addr``, the
   machine's host names, or a configured ``--admin-host`` (DNS rebinding: a browser
   that resolved ``evil.example`` to this address still sends ``Host: evil.example``).
   -> 421.
2. Open routes (``GET /health``, ``GET /metrics``, the status page's shell ``GET /ui``,
   ``/ui/ui.js``, ``/ui/ui.css``) need nothing more.
3. ``Authorization: Bearer <admin token>``, compared in constant time.  -> 401.
4. A request with a body must say what it is: ``POST`` needs ``application/json``,
   ``PUT`` ``application/octet-stream`` (a CORS "simple request" cannot send either).
   -> 415.
5. The body's declared length is at most the cap.  -> 413.  Routes that read their body
   as a stream (``STREAMING``: a restore reads a backup stream piece by piece) have no cap.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Callable

from common.secrets import same

# the status page's shell (no cluster data in it; its script reads the API with the token)
UI_SHELL = frozenset({("GET", "/ui"), ("GET", "/ui/ui.js"), ("GET", "/ui/ui.css")})
OPEN_ROUTES = frozenset({("GET", "/health"), ("GET", "/metrics")}) | UI_SHELL
BODY_TYPES = {"POST": "application/json", "PUT": "application/octet-stream"}
STREAMING = (("PUT", re.compile(r"^/vdis/[^/]+/restore$")),)


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def host_name(header: str) -> str:
    """The host part of a ``Host`` header: no port, no IPv6 brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class AdminPolicy:
    """``token()`` gives the current admin token (None: not known yet, everything but the
    open routes is refused); ``names`` are the host names this sheep answers to."""

    token: Callable[[], str | None]
    names: frozenset[str] = field(default_factory=frozenset)
    max_body: int = 64 << 20

    def __post_init__(self) -> None:
        self.names = frozenset(n.lower() for n in self.names) | {"localhost"}

    def check(self, method: str, path: str, headers: dict) -> Refusal | None:
        """``headers``: the WSGI environ (``HTTP_HOST``, ``HTTP_AUTHORIZATION``,
        ``CONTENT_TYPE``, ``CONTENT_LENGTH``)."""
        host = headers.get("HTTP_HOST")
        if host is not None:
            name = host_name(host)
            if not (_is_ip(name) or name in self.names):
                return Refusal(421, "WrongHost", f"this sheep does not answer to host "
                               f"'{name}' (add it with --admin-host)")
        if (method, path) in OPEN_ROUTES:
            return None
        refusal = self._check_token(headers.get("HTTP_AUTHORIZATION"))
        if refusal is not None:
            return refusal
        return self._check_body(method, path, headers)

    def _check_token(self, authorization: str | None) -> Refusal | None:
        challenge = (("WWW-Authenticate", 'Bearer realm="sheepdog"'),)
        if not authorization:
            return Refusal(401, "Unauthorized", "the admin API needs a token "
                           "(Authorization: Bearer; collie --token-file)", challenge)
        scheme, _, presented = authorization.strip().partition(" ")
        expected = self.token()
        if scheme.lower() != "bearer" or not presented.strip():
            return Refusal(401, "Unauthorized", "the admin API takes only "
                           "'Authorization: Bearer <token>'", challenge)
        if expected is None or not same(presented.strip(), expected):
            return Refusal(401, "Unauthorized", "wrong admin token", challenge)
        return None

    def _check_body(self, method: str, path: str, headers: dict) -> Refusal | None:
        wanted = BODY_TYPES.get(method)
        if wanted is not None:
            given = (headers.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
            if given != wanted:
                return Refusal(415, "UnsupportedMediaType",
                               f"{method} needs Content-Type: {wanted} (got "
                               f"{given or 'none'})")
        length = headers.get("CONTENT_LENGTH")
        if any(method == m and pattern.match(path) for m, pattern in STREAMING):
            length = None               # read piece by piece: any length is fine
        if length:
            try:
                n = int(length)
            except ValueError:
                return Refusal(400, "InvalidRequest", "Content-Length is not a number")
            if n > self.max_body:
                return Refusal(413, "TooLarge", f"request body of {n} bytes is over the "
                               f"limit of {self.max_body} (--admin-max-body)")
        return None


def admin_names(config) -> set[str]:
    """The host names a sheep's admin API answers to (besides any IP literal)."""
    names = {config.addr, *config.admin_hosts}
    try:
        names |= {socket.gethostname(), socket.getfqdn()}
    except OSError:
        pass
    return {n for n in names if n}
