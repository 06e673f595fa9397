"""API plumbing every service uses: the app factory, auth, health, metrics, idempotency.

Routes stay thin: parse the request, call a handler with a unit of work, map the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .db import Database, UnitOfWork
from .observability import correlation_id, metrics
from .platform import PlatformStore, Principal
from .problems import Conflict, Forbidden, InvalidRequest, Unauthorized, install_problem_handlers
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a service's routes need, built once at start-up."""

    name: str
    settings: Settings
    db: Database
    platform: PlatformStore


def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]
_bearer = HTTPBearer(auto_error=False, description="API key of one chain, with scopes pos/app/ops")


def require(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: a valid key with any of ``scopes`` (``ops`` may do everything)."""

    async def dependency(
        ctx: CtxDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        if credentials is None or not credentials.credentials:
            raise Unauthorized("Send 'Authorization: Bearer <api key>'.")
        principal = await ctx.platform.principal(credentials.credentials)
        if principal is None:
            raise Unauthorized("The API key is unknown or revoked.")
        if not any(principal.allows(s) for s in scopes):
            raise Forbidden(f"This operation needs one of the scopes {list(scopes)} (or ops).")
        return principal

    return dependency


#: the keys a route accepts, named once for every service (``ops`` may do everything)
PosKey = Annotated[Principal, Depends(require("pos"))]
AppKey = Annotated[Principal, Depends(require("app"))]
OpsKey = Annotated[Principal, Depends(require("ops"))]
PosOrApp = Annotated[Principal, Depends(require("pos", "app"))]


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def idempotent(
    uow: UnitOfWork,
    principal: Principal,
    *,
    scope: str,
    key: str | None,
    body: Any,
    action: Callable[[], Awaitable[tuple[int, Any]]],
) -> JSONResponse:
    """Run ``action`` once per (chain, scope, Idempotency-Key).

    The key row is inserted in the caller's transaction before the work: a second
    request with the same key waits for the first to commit, then gets its stored
    response (same ids); a different body gets 409. If the work fails, the key
    rolls back with it, so the client may retry.
    """
    if key is None:
        status, doc = await action()
        return JSONResponse(doc, status_code=status)
    if not key.strip():
        raise InvalidRequest("Idempotency-Key must not be blank.")
    t = uow.tables.idempotency
    digest = request_hash(body)
    inserted = (
        await uow.session.execute(
            pg_insert(t)
            .values(chain_id=principal.chain_id, scope=scope, key=key, request_hash=digest)
            .on_conflict_do_nothing()
            .returning(t.c.key)
        )
    ).first()
    if inserted is None:
        row = (
            await uow.session.execute(
                select(t).where(t.c.chain_id == principal.chain_id, t.c.scope == scope, t.c.key == key)
            )
        ).one()
        if row.request_hash != digest:
            raise Conflict("This Idempotency-Key was used with a different request body.")
        return JSONResponse(row.response, status_code=row.status_code, headers={"Idempotent-Replayed": "true"})
    status, doc = await action()
    await uow.session.execute(
        t.update()
        .where(t.c.chain_id == principal.chain_id, t.c.scope == scope, t.c.key == key)
        .values(status_code=status, response=doc)
    )
    return JSONResponse(doc, status_code=status)


Result = BaseModel | tuple[int, BaseModel]


async def idempotent_command(
    ctx: ServiceContext,
    principal: Principal,
    *,
    scope: str,
    key: str | None,
    body: Any,
    status: int = 200,
    run: Callable[[UnitOfWork], Awaitable[Result]],
) -> JSONResponse:
    """A route's whole write: one unit of work (correlated with the request) in which ``run`` happens
    once per Idempotency-Key (see :func:`idempotent`). ``run`` returns the response model, answered
    with ``status``, or ``(status, model)`` when the status depends on the outcome (200 for a repeat)."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:

        async def action() -> tuple[int, Any]:
            result = await run(uow)
            code, model = result if isinstance(result, tuple) else (status, result)
            return code, model.model_dump(mode="json")

        return await idempotent(uow, principal, scope=scope, key=key, body=body, action=action)


def _broker_reachable(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
                return True
        except OSError:
            continue
    return False


#: the errors any authenticated operation may answer, each an RFC 9457 problem document (shared.problems)
PROBLEM_RESPONSES: dict[int, str] = {
    400: "The body is not JSON",
    401: "Missing, unknown, expired or revoked API key",
    403: "The key lacks the scope, or is bound to another clinic",
    404: "Not found (another chain's data is not found either)",
    409: "Conflict with the current state, or an Idempotency-Key reused with another body",
    413: "Request body too large",
    422: "Validation failed (`errors[]` lists each field)",
    429: "Rate limit of the key exceeded (see Retry-After)",
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem document",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "URI of the problem type"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "validation errors, one per field",
            "items": {
                "type": "object",
                "required": ["location", "message", "type"],
                "properties": {
                    "location": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,  # problem types may add members (e.g. member_id of a 409)
}


def _problem_response(code: int, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if code == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if code == 429:
        response["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return response


def declare_problem_responses(doc: dict[str, Any]) -> dict[str, Any]:
    """Document the real error responses once for every operation: each authenticated operation may
    answer PROBLEM_RESPONSES, any operation with parameters or a body 422, with a body 400, all as
    ``application/problem+json`` with the Problem schema (FastAPI's default 422 names a JSON body
    this service never sends). A response a route documents itself is kept, but for 422."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            codes = [c for c in PROBLEM_RESPONSES if c != 400] if operation.get("security") else []
            if "422" in responses or operation.get("parameters") or operation.get("requestBody"):
                codes.append(422)
            if operation.get("requestBody"):
                codes.append(400)
            for code in codes:
                if str(code) not in responses or code == 422:
                    responses[str(code)] = _problem_response(code, PROBLEM_RESPONSES[code])
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and f"#/components/schemas/{unused}" not in json.dumps(doc["paths"]):
            del schemas[unused]
    return doc


class ServiceApp(FastAPI):
    """A service's FastAPI app: its OpenAPI document declares the problem responses (see above)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = declare_problem_responses(super().openapi())
        return self.openapi_schema


def create_service_app(ctx: ServiceContext, routers: list[APIRouter], *, title: str, description: str = "") -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await ctx.db.dispose()

    app = ServiceApp(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.ctx = ctx
    install_problem_handlers(app)

    @app.middleware("http")
    async def correlate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        cid = request.headers.get("x-correlation-id") or str(uuid.uuid4())
        token = correlation_id.set(cid[:100])
        started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            correlation_id.reset(token)
        elapsed = time.perf_counter() - started
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.inc(
            "http_requests_total",
            1,
            service=ctx.name,
            method=request.method,
            path=path,
            status=str(response.status_code),
        )
        metrics.observe("http_request_seconds", elapsed, service=ctx.name, method=request.method, path=path)
        response.headers["X-Correlation-Id"] = cid
        # the path template, never the query string: a phone lookup must not reach the logs
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": path,
                "status": response.status_code,
                "ms": round(elapsed * 1000, 2),
                "correlation_id": cid,
            },
        )
        return response

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Alive."""
        return {"status": "ok", "service": ctx.name}

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {"description": "Not ready", "content": {"application/json": {"schema": {"type": "object"}}}}},
    )
    async def readyz() -> JSONResponse:
        """Database and broker reachable."""
        checks = {"database": False, "broker": False}
        try:
            async with ctx.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:
            log.warning("readiness: database unreachable", exc_info=True)
        checks["broker"] = _broker_reachable(ctx.settings.kafka_bootstrap)
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus metrics."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    for router in routers:
        app.include_router(router)
    return app


def current_correlation_id() -> str | None:
    return correlation_id.get()
