"""What every request passes first, before routing, authentication or reading its body (an ASGI middleware).

- **Correlation**: ``X-Correlation-Id`` (a well-formed one of the client's, else a new one) is set for the
  request's logs and events and returned in the response.
- **Metrics with bounded labels**: one series per (known method or ``other``, route template or
  ``unmatched``, status), so invented methods and paths cannot grow memory without bound.
- **Every 5xx counted and logged** with its correlation id, including an exception that escapes the app:
  it becomes a 500 problem document here (nothing reaches the server's own handler untold).
- **Body limit** (``MEMBERSHIP_MAX_BODY_BYTES``): a ``Content-Length`` above it is a 413 before a byte is
  read; a chunked body is counted as it arrives and stopped at the limit. Nothing is authenticated first.
- **No NUL**: PostgreSQL cannot store U+0000 in text, so a NUL in the path, the query or a JSON string of the
  body is a 422 for every route of every service, before any of it reaches a handler.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from .observability import correlation_id, metrics
from .problems import PROBLEM_JSON, InvalidRequest, Problem, TooLarge

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: the methods a metric names; any other is counted as ``other``
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LENGTH = re.compile(r"^[0-9]{1,20}$")
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")
#: a JSON ``\u0000`` escape: an odd run of backslashes before ``u0000`` (an even run is a literal backslash)
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def has_nul(body: bytes) -> bool:
    """Whether a JSON document holds U+0000 (escaped, or as a raw byte, which is not JSON anyway)."""
    return b"\x00" in body or (b"u0000" in body and _JSON_NUL.search(body) is not None)


class _Rejected(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, service: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-correlation-id", "")
        cid = given if _CORRELATION_ID.match(given) else str(uuid.uuid4())
        token = correlation_id.set(cid)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid.encode())]
            await send(message)

        try:
            try:
                self._check_target(scope)
                receive = await self._bounded_body(scope, headers, receive)
                await self.app(scope, receive, send_with_id)
            except _Rejected as rejected:
                await self._problem(scope, send_with_id, rejected.problem)
            except Exception:
                log.exception("unhandled error", extra={"path": route_label(scope), "correlation_id": cid})
                if response_started:
                    raise
                p = Problem("An unexpected error occurred; it has been logged.")
                p.status, p.slug, p.title = 500, "internal", "Internal server error"
                await self._problem(scope, send_with_id, p)
            finally:
                self._account(scope, status, time.perf_counter() - started, cid)
        finally:
            correlation_id.reset(token)

    def _check_target(self, scope: Scope) -> None:
        path = scope.get("path", "")
        query = scope.get("query_string", b"")
        if "\x00" in path:
            raise _Rejected(_nul_problem("path"))
        if query and (b"\x00" in query or b"%00" in query.lower()) and b"\x00" in unquote_to_bytes(query):
            raise _Rejected(_nul_problem("query"))

    async def _bounded_body(self, scope: Scope, headers: dict[str, str], receive: Receive) -> Receive:
        """``receive`` replaying the body read here, at most ``max_body_bytes`` of it (413 beyond)."""
        length = headers.get("content-length")
        if length is not None:
            if not _LENGTH.match(length):
                raise _Rejected(Problem("Content-Length must be a number of bytes."))
            if int(length) > self.max_body_bytes:
                raise _Rejected(_too_large(self.max_body_bytes))
            if int(length) == 0:
                return receive
        elif "transfer-encoding" not in headers:
            return receive
        chunks: list[bytes] = []
        size = 0
        tail: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                tail.append(message)  # the client went away: the app sees it after the body
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Rejected(_too_large(self.max_body_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if has_nul(body):
            raise _Rejected(_nul_problem("body"))
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *tail]

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        return replay

    async def _problem(self, scope: Scope, send: Send, problem: Problem) -> None:
        body = json.dumps(problem.document(scope.get("path", "").replace("\x00", ""))).encode()
        headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
        if problem.status == 413:
            headers.append((b"connection", b"close"))  # the rest of a body sent anyway is not read
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _account(self, scope: Scope, status: int, elapsed: float, cid: str) -> None:
        method, path = method_label(scope.get("method", "")), route_label(scope)
        metrics.inc("http_requests_total", 1, service=self.service, method=method, path=path, status=str(status))
        metrics.observe("http_request_seconds", elapsed, service=self.service, method=method, path=path)
        if status >= 500:
            metrics.inc("http_server_errors_total", 1, service=self.service, path=path, status=str(status))
        # the path template, never the query string: a phone lookup must not reach the logs
        log.log(
            logging.ERROR if status >= 500 else logging.INFO,
            "request",
            extra={
                "method": method,
                "path": path,
                "status": status,
                "ms": round(elapsed * 1000, 2),
                "correlation_id": cid,
            },
        )


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"The request body exceeds {limit} bytes.", max_body_bytes=limit)


def _nul_problem(where: str) -> InvalidRequest:
    return InvalidRequest(
        f"The {where} contains a NUL character (U+0000), which no field accepts.",
        errors=[{"location": [where], "message": "NUL character (U+0000) not allowed", "type": "value_error"}],
    )
