"""HTTP admin API of one sheep: JSON over HTTP, collie's only transport.

Routes are listed in docs/internals.md.  Errors become HTTP statuses here and
nowhere else (`STATUS_BY_ERROR`), with a body ``{"error": line, "code": name}``.
"""
from __future__ import annotations

import json
import logging
import re
import socket
from typing import Callable
from urllib.parse import parse_qs

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from common import errors as E
from sheep.admin.auth import AdminPolicy

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type, int]] = [
    (E.InvalidRequest, 400), (E.NotFound, 404), (E.AlreadyExists, 409), (E.Locked, 409),
    (E.StaleGeneration, 409),
    (E.OutOfRange, 416), (E.ReadOnly, 423), (E.NotReady, 503), (E.Fenced, 503),
    (E.Degraded, 503),
    (E.Unavailable, 503), (E.Shutdown, 503), (E.NoSpace, 507),
]
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type", 416: "Range Not Satisfiable", 421: "Misdirected Request",
           423: "Locked", 500: "Internal Server Error", 503: "Service Unavailable",
           507: "Insufficient Storage"}
DATA_CHUNK = 4 << 20
JSON_MAX_BODY = 1 << 20          # a JSON request body (PUT data may be up to --admin-max-body)
UNREAD_BODY = "sheepdog.unread_body"   # environ flag: close without reading the body


def status_for(exc: E.SheepError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


class Request:
    def __init__(self, environ: dict, params: dict, max_body: int = JSON_MAX_BODY) -> None:
        self.environ = environ
        self.params = params
        self.max_body = min(max_body, JSON_MAX_BODY)
        self.query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}

    def json(self) -> dict:
        declared = int(self.environ.get("CONTENT_LENGTH") or 0)
        # a chunked body has no length: read one byte past the cap to see it is too long
        raw = self.environ["wsgi.input"].read(declared or self.max_body + 1)
        if len(raw) > self.max_body:
            self.environ[UNREAD_BODY] = True
            raise E.InvalidRequest(f"request body is over {self.max_body} bytes")
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise E.InvalidRequest("request body is not JSON") from None
        if not isinstance(body, dict):
            raise E.InvalidRequest("request body must be a JSON object")
        return body

    def int_query(self, name: str, default: int | None = None) -> int | None:
        value = self.query.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise E.InvalidRequest(f"query parameter {name} must be an integer") from None


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern, Callable]] = []

    def add(self, method: str, pattern: str, handler: Callable) -> None:
        regex = re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append((method, regex, handler))

    def match(self, method: str, path: str):
        allowed = False
        for m, regex, handler in self._routes:
            found = regex.match(path)
            if found:
                if m == method:
                    return handler, found.groupdict()
                allowed = True
        if allowed:
            raise _HttpError(405, f"method {method} not allowed on {path}")
        raise _HttpError(404, f"no such API route: {method} {path}")


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Response:
    """A handler's answer: JSON (``body``) or raw bytes chunks (``chunks``)."""

    def __init__(self, body=None, status: int = 200, chunks=None, length: int | None = None,
                 content_type: str | None = None) -> None:
        self.body, self.status, self.chunks, self.length = body, status, chunks, length
        self.content_type = content_type


class AdminApp:
    """WSGI application; handlers are registered by `sheep.admin.routes`."""

    def __init__(self, router: Router, policy: AdminPolicy | None = None) -> None:
        self.router = router
        self.policy = policy

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        route = path.rstrip("/") or "/"
        refusal = self.policy.check(method, route, environ) if self.policy else None
        if refusal is not None:
            if refusal.status != 421:
                log.warning("admin %s %s from %s refused: %s", method, path,
                            environ.get("REMOTE_ADDR"), refusal.message)
            data = json.dumps({"error": refusal.message, "code": refusal.code}).encode() + b"\n"
            environ[UNREAD_BODY] = True     # a refused client's body is never read
            start_response(f"{refusal.status} {REASONS.get(refusal.status, 'Refused')}",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), ("Connection", "close"),
                            *refusal.headers])
            return [data]
        max_body = self.policy.max_body if self.policy else 1 << 20
        try:
            handler, params = self.router.match(method, route)
            result = handler(Request(environ, params, max_body))
            if not isinstance(result, Response):
                result = Response(result)
        except E.SheepError as exc:
            result = Response({"error": exc.message, "code": type(exc).__name__},
                              status_for(exc))
        except _HttpError as exc:
            code = "NoRoute" if exc.status == 404 else "HttpError"
            result = Response({"error": str(exc), "code": code}, exc.status)
        except Exception as exc:  # the one catch-all: log, answer 500
            log.exception("admin %s %s failed", method, path)
            result = Response({"error": f"internal error: {exc}", "code": "SheepError"}, 500)
        status = f"{result.status} {REASONS.get(result.status, 'Unknown')}"
        if result.chunks is not None:
            headers = [("Content-Type", result.content_type or "application/octet-stream")]
            if result.length is not None:
                headers.append(("Content-Length", str(result.length)))
            start_response(status, headers)
            return result.chunks
        if result.content_type:
            data = result.body.encode() if isinstance(result.body, str) else result.body
            start_response(status, [("Content-Type", result.content_type),
                                    ("Content-Length", str(len(data)))])
            return [data]
        data = json.dumps(result.body, indent=None, sort_keys=True).encode() + b"\n"
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data)))])
        return [data]


class _Handler(WSGIHandler):
    """pywsgi's handler with one deadline for a request's line and headers (an idle
    keep-alive connection included): a client trickling bytes cannot hold a worker.
    TCP_NODELAY: pywsgi sends a response's head and body in separate writes, and on a
    keep-alive connection Nagle held the body for the client's delayed ACK (~40 ms per
    request; the status page's browser keeps its connections)."""

    def handle(self):
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:     # not TCP (a test's socketpair) or already closed
            pass
        return super().handle()

    def read_requestline(self):
        self._head_deadline = gevent.Timeout.start_new(
            self.server.head_timeout_s, socket.timeout("admin request head timed out"))
        try:
            return super().read_requestline()
        except BaseException:
            self._head_deadline.cancel()
            raise

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._head_deadline.cancel()

    def run_application(self):
        super().run_application()
        if self.environ.get(UNREAD_BODY):
            # pywsgi would read (discard) the rest of the body before the next request: a
            # client declaring a huge or never-sent body would hold this worker.  Close.
            self.wsgi_input.content_length = 0
            self.wsgi_input.chunked_input = False
            self.close_connection = True


class AdminServer:
    """The admin API's listener: at most ``workers`` connections served at once (more
    wait in the kernel's backlog), each request's head read within ``head_timeout_s``."""

    def __init__(self, app: AdminApp, host: str, port: int, workers: int = 64,
                 head_timeout_s: float = 10.0) -> None:
        self._server = WSGIServer((host, port), app, log=None, error_log=log,
                                  handler_class=_Handler, spawn=Pool(workers))
        self._server.head_timeout_s = head_timeout_s

    def start(self) -> None:
        self._server.start()

    @property
    def port(self) -> int:
        return self._server.server_port

    def stop(self) -> None:
        self._server.stop(timeout=1)


def volume_range_response(req: Request, volume, entry: dict, what: str) -> Response:
    """Stream ``?offset=&length=`` of a volume (default: to its end) in DATA_CHUNK pieces.

    The range is checked, and the first chunk read, before any header goes out, so an
    error still becomes a proper status.  ``what`` names the thing in the error.
    """
    size = entry["size"]
    offset = req.int_query("offset", 0)
    length = req.int_query("length", None)
    if length is None:
        length = max(0, size - offset)
    if offset < 0 or length < 0 or offset + length > size:
        raise E.OutOfRange(f"read of {length} bytes at {offset} is past the end of {what} "
                           f"({size} bytes)")
    first = volume.read(offset, min(length, DATA_CHUNK))

    def chunks():
        yield first
        pos = offset + len(first)
        while pos < offset + length:
            n = min(DATA_CHUNK, offset + length - pos)
            yield volume.read(pos, n)
            pos += n
    return Response(chunks=chunks(), length=length)
