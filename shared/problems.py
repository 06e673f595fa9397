"""RFC 9457 problem documents for every error a service returns.

Domain code raises :class:`Problem` subclasses (no FastAPI imports needed);
the handlers installed by :func:`install_problem_handlers` turn them, and
FastAPI's own validation and HTTP errors, into ``application/problem+json``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://membership.example/problems/"


class Problem(Exception):
    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        #: response headers the problem needs (``Retry-After`` of a 429)
        self.headers = headers or {}

    def document(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


class InvalidRequest(Problem):
    status, slug, title = 422, "validation", "Request validation failed"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Missing or unknown API key"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "The API key lacks the scope for this operation"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict with the current state"


class TooLarge(Problem):
    status, slug, title = 413, "too-large", "Request body too large"


class TooManyRequests(Problem):
    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after: float, **extra: Any) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(detail, headers={"Retry-After": str(seconds)}, retry_after=seconds, **extra)


def out_of_range(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says a value of the request is out of what the code or the database
    can hold: Python date arithmetic overflowing, PostgreSQL's data exceptions (SQLSTATE class 22: a NUL in
    text, an integer or timestamp out of range) and asyncpg's own check of an argument (an int beyond int4)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OverflowError):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("22"):
            return True
        if type(current).__module__.startswith("asyncpg") and type(current).__name__ == "DataError":
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


class Gone(Problem):
    status, slug, title = 410, "gone", "Gone"


def problem_response(
    problem: Problem, request: Request | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    instance = str(request.url.path) if request is not None else None
    return JSONResponse(
        problem.document(instance), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers
    )


_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    410: "gone",
    413: "too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "too-many-requests",
}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return problem_response(exc, request, {**headers, **exc.headers} or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": list(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        p = InvalidRequest(f"{len(errors)} field(s) failed validation", errors=errors)
        return problem_response(p, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        p = Problem(str(exc.detail))
        p.status = exc.status_code
        p.slug = _STATUS_SLUGS.get(exc.status_code, "http-error")
        p.title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        return problem_response(p, request, getattr(exc, "headers", None))

    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # a backstop behind the request models' bounds: a value the code or the database cannot hold is the
        # request's fault (422), and the transaction it broke has rolled back; a database outage (or a
        # pooled connection that broke meanwhile: the pool does not ping before each checkout) is a 503
        # the client retries; anything else stays a 500
        from .consumer import is_transient

        if is_transient(exc):
            log.warning("the database is unavailable", extra={"error": type(exc).__name__})
            p = Problem(
                "The database is unavailable for a moment; retry the request (a repeated purchase,"
                " refund or enrolment is recognised, never applied twice)."
            )
            p.status, p.slug, p.title = 503, "unavailable", "Service unavailable"
            return problem_response(p, request, {"Retry-After": "1"})
        if not out_of_range(exc):
            raise exc
        log.warning("a request value is out of range", extra={"error": type(exc).__name__})
        p = InvalidRequest(
            "A value of the request is out of the range this service accepts (too large, too far"
            " in the past or future, or a NUL character)."
        )
        return problem_response(p, request)

    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DBAPIError, _out_of_range)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        p = Problem("An unexpected error occurred; it has been logged.")
        p.status, p.slug, p.title = 500, "internal", "Internal server error"
        return problem_response(p, request)
