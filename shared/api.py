"""API plumbing every service uses: the app factory, auth, health, metrics, idempotency.

Routes stay thin: parse the request, call a handler with a unit of work, map the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from . import tracing
from .db import Database, UnitOfWork
from .edge import EdgeMiddleware
from .observability import METRICS_CONTENT_TYPE, correlation_id, metrics
from .platform import PlatformStore, Principal
from .problems import (
    Conflict,
    Forbidden,
    InvalidRequest,
    TooManyRequests,
    Unauthorized,
    install_problem_handlers,
)
from .ratelimit import KeyRateLimiter
from .readiness import BrokerCheck, readiness
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a service's routes need, built once at start-up."""

    name: str
    settings: Settings
    db: Database
    platform: PlatformStore
    _limiters: dict[str, KeyRateLimiter] = field(default_factory=dict)

    def limiter(self, name: str, *, rate: float, burst: int) -> KeyRateLimiter:
        """This process's token buckets named ``name`` (one per API key), made on first use."""
        found = self._limiters.get(name)
        if found is None:
            found = self._limiters[name] = KeyRateLimiter(rate, burst)
        return found

    def throttle(self, name: str, principal: Principal, *, rate: float, burst: int, what: str) -> None:
        """A token of the key's bucket ``name``, or 429 (with Retry-After) when it is empty."""
        wait = self.limiter(name, rate=rate, burst=burst).take(principal.key_id or principal.key_name)
        if wait > 0:
            raise TooManyRequests(
                f"This API key sent more {what} than it may (up to {rate:g} a second, {burst} at once).",
                retry_after=wait,
            )


async def get_ctx(request: Request) -> ServiceContext:
    """The service context (async: a plain `def` dependency would run in a worker thread per request)."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ServiceContext, Depends(get_ctx)]
_bearer = HTTPBearer(auto_error=False, description="API key of one chain, with scopes pos/app/ops")


#: the scopes each :func:`require` dependency accepts, by the dependency: what a route declares, for
#: the tests that check every route's answers against the contract (tests/e2e/test_route_matrix.py)
REQUIRED_SCOPES: dict[Callable[..., Awaitable[Principal]], tuple[str, ...]] = {}


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
        settings = ctx.settings
        ctx.throttle(
            "requests", principal, rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst, what="requests"
        )
        if not any(principal.allows(s) for s in scopes):
            raise Forbidden(f"This operation needs one of the scopes {list(scopes)} (or ops).")
        return principal

    REQUIRED_SCOPES[dependency] = scopes
    return dependency


#: the keys a route accepts, named once for every service (``ops`` may do everything)
PosKey = Annotated[Principal, Depends(require("pos"))]
AppKey = Annotated[Principal, Depends(require("app"))]
OpsKey = Annotated[Principal, Depends(require("ops"))]
PosOrApp = Annotated[Principal, Depends(require("pos", "app"))]


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def job_as_of(ctx: ServiceContext, requested: datetime | None) -> datetime:
    """The instant an operations run of a job (``POST .../run``) is for: ``requested``, or the service
    clock's now. A job that writes must not run for an instant far from now: ahead of it by more than
    ``max_as_of_skew_seconds`` it would expire, demote or grant what is not due yet; behind it by more
    than ``max_as_of_past_seconds`` it would judge members on a stale window and stamp its effects in
    the past (docs/decisions/0030). Outside the bounds: 422, and nothing runs."""
    now = ctx.db.clock.now()
    if requested is None:
        return now
    ahead = timedelta(seconds=ctx.settings.max_as_of_skew_seconds)
    behind = timedelta(seconds=ctx.settings.max_as_of_past_seconds)
    if requested > now + ahead:
        message = f"as_of may be at most {int(ahead.total_seconds())} s after now ({now.isoformat()})."
    elif requested < now - behind:
        message = f"as_of may be at most {int(behind.total_seconds())} s before now ({now.isoformat()})."
    else:
        return requested
    raise InvalidRequest(message, errors=[{"location": ["body", "as_of"], "message": message, "type": "value_error"}])


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


#: the key id of the rows written before idempotency keys were scoped per API key (decision 0033)
LEGACY_KEY_ID = ""


class FastJSONResponse(JSONResponse):
    """A JSON response rendered by orjson (the same compact UTF-8 JSON as Starlette's, a few times faster)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def idempotent(
    uow: UnitOfWork,
    principal: Principal,
    *,
    scope: str,
    key: str | None,
    body: Any,
    action: Callable[[], Awaitable[tuple[int, Any]]],
) -> JSONResponse:
    """Run ``action`` once per (chain, API key, scope, Idempotency-Key).

    The key row is inserted in the caller's transaction before the work: a second
    request with the same key waits for the first to commit, then gets its stored
    response (same ids); a different body gets 409. If the work fails, the key
    rolls back with it, so the client may retry. Another API key of the same chain
    using the same Idempotency-Key has a row of its own: it never sees this response.
    """
    if key is None:
        status, doc = await action()
        return FastJSONResponse(doc, status_code=status)
    if not key.strip():
        raise InvalidRequest("Idempotency-Key must not be blank.")
    t = uow.tables.idempotency
    # the request's JSON form is only needed to tell a retry from another body under the same key
    digest = request_hash(body.model_dump(mode="json") if isinstance(body, BaseModel) else body)

    def row_of(key_id: str) -> Any:
        return select(t).where(
            t.c.chain_id == principal.chain_id, t.c.key_id == key_id, t.c.scope == scope, t.c.key == key
        )

    # a row written before the key id was recorded (within idempotency_key_hours of the upgrade)
    # still answers a retry, for whichever key of the chain sends it: a retry must not run twice
    legacy = (await uow.session.execute(row_of(LEGACY_KEY_ID))).first()
    if legacy is not None and legacy.status_code is not None:
        return _replay(legacy, digest)
    inserted = (
        await uow.session.execute(
            pg_insert(t)
            .values(chain_id=principal.chain_id, key_id=principal.key_id, scope=scope, key=key, request_hash=digest)
            .on_conflict_do_nothing()
            .returning(t.c.key)
        )
    ).first()
    if inserted is None:
        return _replay((await uow.session.execute(row_of(principal.key_id))).one(), digest)
    status, doc = await action()
    await uow.session.execute(
        t.update()
        .where(t.c.chain_id == principal.chain_id, t.c.key_id == principal.key_id, t.c.scope == scope, t.c.key == key)
        .values(status_code=status, response=doc)
    )
    return FastJSONResponse(doc, status_code=status)


def _replay(row: Any, digest: str) -> JSONResponse:
    if row.request_hash != digest:
        raise Conflict("This Idempotency-Key was used with a different request body.")
    return FastJSONResponse(row.response, status_code=row.status_code, headers={"Idempotent-Replayed": "true"})


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


#: the errors any authenticated operation may answer, each an RFC 9457 problem document (shared.problems)
PROBLEM_RESPONSES: dict[int, str] = {
    400: "The body is not JSON",
    401: "Missing, unknown, expired or revoked API key",
    403: "The key lacks the scope, or is bound to another clinic",
    404: "Not found (another chain's data is not found either)",
    409: "Conflict with the current state, or an Idempotency-Key reused with another body",
    410: "The member was erased (SPEC §8)",
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

    app = ServiceApp(
        title=title, description=description, version="1.0.0", lifespan=lifespan, telemetry=tracing.fastapi_telemetry()
    )
    app.state.ctx = ctx
    install_problem_handlers(app)

    app.add_middleware(EdgeMiddleware, service=ctx.name, max_body_bytes=ctx.settings.max_body_bytes)
    broker = BrokerCheck(ctx.settings.kafka_bootstrap, ctx.name, ctx.settings.broker_check_seconds)

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
        """Ready when the database is reachable; the broker's state is reported, not required."""
        ok, body = await readiness(ctx.db.engine, broker)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus metrics."""
        return PlainTextResponse(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    for router in routers:
        app.include_router(router)
    return app


def current_correlation_id() -> str | None:
    return correlation_id.get()
