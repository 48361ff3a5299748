"""HTTP client for one sheep's admin API, and the HTTP-error -> exit-code table.

Every failure leaves this module as ``CollieError(message, exit_code)``, whose
message is one line meant for the user.  The table (docs/internals.md, "HTTP
admin API", and DESIGN.md section 8) is:

    400 -> 1, 401 -> 2, 404 -> 5, 409 -> 3 (code "Locked" -> 1), 416 -> 1, 423 -> 1,
    503 -> 2, 507 -> 4, anything else -> 1;
    connection refused / timeout / name resolution failure -> 2.

A 404 whose body is not the API's ``{"code": "NotFound"}`` shape (an older sheep
without the route answers like that) keeps exit 5 but sets ``route_missing`` so
the command can say "not supported by this sheep" instead.
"""
from __future__ import annotations

import enum
import json
import logging
import socket
from urllib.parse import quote

import requests

log = logging.getLogger(__name__)


class Exit(enum.IntEnum):
    """collie's exit codes (DESIGN.md section 8)."""

    OK = 0
    FAILURE = 1
    UNREACHABLE = 2
    EXISTS = 3
    NO_SPACE = 4
    NOT_FOUND = 5
    USAGE = 64


_STATUS_EXIT = {
    400: Exit.FAILURE,
    401: Exit.UNREACHABLE,
    404: Exit.NOT_FOUND,
    409: Exit.EXISTS,
    416: Exit.FAILURE,
    423: Exit.FAILURE,
    503: Exit.UNREACHABLE,
    507: Exit.NO_SPACE,
}


class CollieError(Exception):
    """A failure to report as one stderr line and an exit code.

    ``status`` and ``code`` carry the HTTP status and the API's error class name
    when the failure came from an HTTP answer (else ``None``).
    """

    def __init__(self, message: str, exit_code: int = Exit.FAILURE, *,
                 status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split()) or "unknown error"
        self.exit_code = int(exit_code)
        self.status = status
        self.code = code

    @property
    def route_missing(self) -> bool:
        """True for a 404 (or 405) that is not the API's own NotFound: the sheep lacks the route."""
        return self.status == 405 or (self.status == 404 and self.code != "NotFound")


def exit_code_for(status: int, code: str | None) -> int:
    """Map an HTTP error status (and the API's error class name) to collie's exit code."""
    if status == 409 and code == "Locked":
        return Exit.FAILURE
    return _STATUS_EXIT.get(status, Exit.FAILURE)


def error_from_response(method: str, path: str, status: int, reason: str, body: bytes) -> CollieError:
    """Build the ``CollieError`` for a non-2xx answer (pure; tested without a server)."""
    message, code = None, None
    try:
        doc = json.loads(body.decode("utf-8")) if body else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        message = doc.get("error") or None
        code = doc.get("code") if isinstance(doc.get("code"), str) else None
    if not message:
        message = f"{method} {path}: HTTP {status} {reason}".rstrip()
    return CollieError(message, exit_code_for(status, code), status=status, code=code)


def vdi_path(name: str, *rest: str) -> str:
    """``/vdis/<quoted name>[/rest...]``: names may hold any character."""
    return "/".join(["/vdis", quote(name, safe=""), *rest])


def quoted(name: str) -> str:
    """One path segment, percent-encoded."""
    return quote(name, safe="")


class AdminClient:
    """Blocking client for ``http://ADDR:PORT``; one ``requests.Session`` for every call.

    Methods return the decoded JSON answer (``get_bytes`` the raw body) or raise
    ``CollieError``.  ``timeout_s`` bounds the connect and each read.
    """

    def __init__(self, addr: str, port: int, timeout_s: float = 180, connect_timeout_s: float = 5,
                 token: str | None = None, token_source: str = "") -> None:
        self.addr = addr
        self.port = port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        host = f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
        self.base_url = f"http://{host}:{port}"
        self.session = requests.Session()
        # Admin traffic goes straight to the sheep: never through an HTTP(S)_PROXY from the environment.
        self.session.trust_env = False
        self.token_source = token_source
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @property
    def where(self) -> str:
        return f"{self.addr}:{self.port}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, path: str, **params) -> dict:
        return self._json(self._request("GET", path, params=params or None))

    def post(self, path: str, body: dict | None = None) -> dict:
        return self._json(self._request("POST", path, json=body if body is not None else {}))

    def delete(self, path: str) -> dict:
        return self._json(self._request("DELETE", path))

    def get_bytes(self, path: str, **params) -> bytes:
        return self._request("GET", path, params=params or None).content

    def put_bytes(self, path: str, data: bytes, **params) -> dict:
        headers = {"Content-Type": "application/octet-stream"}
        return self._json(self._request("PUT", path, params=params or None, data=data, headers=headers))

    def put_stream(self, path: str, chunks, **params) -> dict:
        """PUT a body of unknown length (an iterable of bytes, sent chunked)."""
        headers = {"Content-Type": "application/octet-stream"}
        return self._json(self._request("PUT", path, params=params or None, data=chunks,
                                        headers=headers))

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        url = self.base_url + path
        log.debug("%s %s params=%s", method, url, kwargs.get("params"))
        try:
            resp = self.session.request(method, url, timeout=(self.connect_timeout_s, self.timeout_s),
                                        **kwargs)
        except requests.RequestException as exc:
            raise CollieError(f"cannot reach sheep at {self.where}: {describe_connection_error(exc)}",
                              Exit.UNREACHABLE) from exc
        log.debug("%s %s -> %d (%d bytes)", method, url, resp.status_code, len(resp.content))
        if resp.status_code == 401:
            err = error_from_response(method, path, resp.status_code, resp.reason or "",
                                      resp.content)
            raise CollieError(f"sheep at {self.where} refused the request: {err.message} "
                              f"(token from {self.token_source or 'nowhere'})",
                              Exit.UNREACHABLE, status=401, code=err.code)
        if resp.status_code >= 400:
            raise error_from_response(method, path, resp.status_code, resp.reason or "", resp.content)
        return resp

    def _json(self, resp: requests.Response):
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            raise CollieError(f"sheep at {self.where} sent a non-JSON answer to {resp.request.method} "
                              f"{resp.request.path_url}") from None


def describe_connection_error(exc: BaseException) -> str:
    """A short reason for a transport failure: "connection refused", "timed out", ..."""
    seen = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, socket.gaierror):
            return "cannot resolve host name"
        if isinstance(err, ConnectionResetError):
            return "connection reset"
        if isinstance(err, (requests.Timeout, TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(err, BaseException):
            stack.extend([err.__cause__, err.__context__, getattr(err, "reason", None)])
            stack.extend(a for a in err.args if isinstance(a, BaseException))
    text = str(exc)
    for needle, reason in (("refused", "connection refused"), ("timed out", "timed out"),
                           ("Name or service not known", "cannot resolve host name"),
                           ("nodename nor servname", "cannot resolve host name"),
                           ("reset by peer", "connection reset")):
        if needle in text:
            return reason
    return "connection failed"
