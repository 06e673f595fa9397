"""Attacks on what every service's API does before its routes (shared.edge, shared.api): invented methods and
paths against the metrics, oversized and endless bodies, floods of one key, exceptions escaping the app, NUL
characters, values out of range. The app is the real one every service builds, on a fake database and keys."""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy.exc import DBAPIError

from shared.api import CtxDep, PosKey, ServiceContext, create_service_app
from shared.edge import has_nul
from shared.observability import metrics
from shared.platform import Principal
from shared.problems import PROBLEM_JSON
from shared.ratelimit import KeyRateLimiter
from shared.settings import Settings

KEY = "good-key"
OTHER_KEY = "other-key"


class FakePlatform:
    def __init__(self) -> None:
        self.lookups = 0

    async def principal(self, key: str) -> Principal | None:
        self.lookups += 1
        if key in (KEY, OTHER_KEY):
            return Principal("chain", frozenset({"pos"}), key, key_id=key)
        return None


class FakeDb:
    async def dispose(self) -> None:
        pass


@dataclass
class Harness:
    app: FastAPI
    platform: FakePlatform
    calls: list[str]
    service: str


def _harness(**settings: Any) -> Harness:
    service = f"svc-{uuid.uuid4().hex[:8]}"  # its own metric series
    platform = FakePlatform()
    ctx = ServiceContext(service, Settings(**settings), FakeDb(), platform)  # type: ignore[arg-type]
    calls: list[str] = []
    router = APIRouter(prefix="/v1")

    @router.post("/things")
    async def post_thing(body: dict[str, Any], principal: PosKey) -> dict[str, Any]:
        calls.append("post")
        return {"ok": True}

    @router.get("/things/{thing_id}")
    async def get_thing(thing_id: str, principal: PosKey, q: str | None = None) -> dict[str, str]:
        calls.append(thing_id)
        return {"thing_id": thing_id}

    @router.get("/boom")
    async def boom(ctx: CtxDep) -> None:
        raise RuntimeError("the handler broke")

    @router.get("/overflow")
    async def overflow(ctx: CtxDep) -> None:
        raise OverflowError("date value out of range")

    @router.get("/db-range")
    async def db_range(ctx: CtxDep) -> None:
        class Orig(Exception):
            sqlstate = "22003"

        raise DBAPIError("SELECT 1", {}, Orig("integer out of range"))

    @router.get("/db-other")
    async def db_other(ctx: CtxDep) -> None:
        class Orig(Exception):
            sqlstate = "40P01"

        raise DBAPIError("SELECT 1", {}, Orig("deadlock detected"))

    @router.get("/db-internal")
    async def db_internal(ctx: CtxDep) -> None:
        class Orig(Exception):
            sqlstate = "XX000"

        raise DBAPIError("SELECT 1", {}, Orig("internal error"))

    return Harness(create_service_app(ctx, [router], title="t"), platform, calls, service)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    yield _harness()


def _client(h: Harness) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url="http://test")


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _series(service: str) -> int:
    return metrics.series(service=service)


def _is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    doc: dict[str, Any] = r.json()
    assert doc["status"] == status and doc["type"] and doc["title"] and doc["detail"]
    return doc


# ---- 1. metric labels are bounded --------------------------------------------------------------


async def test_a_flood_of_invented_methods_and_paths_adds_no_metric_series(h: Harness) -> None:
    async with _client(h) as client:
        await client.get("/v1/things/a", headers=_auth())
        await client.request("BREW", "/nowhere")
        baseline = _series(h.service)
        gc.collect()
        before = metrics.series()
        for i in range(1500):
            method = f"M{uuid.uuid4().hex[:10].upper()}"
            r = await client.request(method, f"/x/{uuid.uuid4()}/{i}")
            assert r.status_code in (404, 405)
            r = await client.request(method, f"/v1/things/{i}", headers=_auth())
            assert r.status_code == 405
            await client.get(f"/{uuid.uuid4()}")
        after = metrics.series()
    rendered = metrics.render()
    assert "BREW" not in rendered and "/x/" not in rendered
    # only the bounded labels: other/unmatched and the route template, with their statuses
    assert _series(h.service) <= baseline + 6, _series(h.service)
    assert after - before <= 6  # the series (the label memory) did not grow with the 4,500 requests
    assert f'method="other",path="/v1/things/{{thing_id}}",service="{h.service}",status="405"' in rendered
    assert f'method="GET",path="unmatched",service="{h.service}",status="404"' in rendered


# ---- 2. the body limit comes before reading the body and before authentication -------------------


async def _raw(
    app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[bytes, bytes], bytes, int]:
    """Call the ASGI app by hand; returns (status, headers, body, how many body chunks it read)."""
    read = 0
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"], out["headers"] = message["status"], dict(message["headers"])
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    return out["status"], out["headers"], out["body"], read


async def test_a_declared_oversized_body_is_413_before_a_byte_is_read_or_the_key_is_checked() -> None:
    h = _harness(max_body_bytes=1024 * 1024)
    twenty_mb = 20 * 1024 * 1024
    chunks = [b"x" * 65536] * (twenty_mb // 65536)
    for auth in ([], [(b"authorization", b"Bearer unknown")]):
        status, headers, body, read = await _raw(
            h.app, "POST", "/v1/things", [(b"content-length", str(twenty_mb).encode()), *auth], chunks
        )
        assert status == 413 and headers[b"content-type"].startswith(PROBLEM_JSON.encode())
        assert b"too-large" in body
        assert read == 0
    assert h.platform.lookups == 0 and h.calls == []


async def test_a_chunked_body_is_counted_and_stopped_at_the_limit_without_authentication() -> None:
    h = _harness(max_body_bytes=1024 * 1024)
    chunks = [b"x" * 65536] * 320  # 20 MB, no Content-Length
    status, _, body, read = await _raw(
        h.app, "POST", "/v1/things", [(b"transfer-encoding", b"chunked"), (b"authorization", b"Bearer nope")], chunks
    )
    assert status == 413 and b"too-large" in body
    assert read <= 1024 * 1024 // 65536 + 1  # stopped just past the limit, not read in full
    assert h.platform.lookups == 0 and h.calls == []


async def test_a_lying_content_length_is_still_stopped_at_the_limit() -> None:
    h = _harness(max_body_bytes=1024 * 1024)
    chunks = [b"x" * 65536] * 320
    status, _, _, read = await _raw(h.app, "POST", "/v1/things", [(b"content-length", b"10")], chunks)
    assert status == 413 and read <= 17
    for bad in (b"-5", "\u00b2".encode("latin-1"), b"1" * 40):
        status, _, _, _ = await _raw(h.app, "POST", "/v1/things", [(b"content-length", bad)], chunks)
        assert status == 400


async def test_a_body_within_the_limit_still_works(h: Harness) -> None:
    async with _client(h) as client:
        r = await client.post("/v1/things", json={"a": "b" * 1000}, headers=_auth())
        assert r.status_code == 200, r.text

        async def stream() -> AsyncIterator[bytes]:
            yield b'{"a": '
            yield b'"chunked"}'

        r = await client.post("/v1/things", content=stream(), headers={**_auth(), "content-type": "application/json"})
        assert r.status_code == 200, r.text
    assert h.calls == ["post", "post"]


# ---- 3. rate limit per key ---------------------------------------------------------------------


async def test_a_key_past_its_burst_gets_429_with_retry_after_and_other_keys_go_on() -> None:
    h = _harness(rate_limit_per_second=0.5, rate_limit_burst=3)
    async with _client(h) as client:
        codes = [(await client.get("/v1/things/a", headers=_auth())).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = await client.get("/v1/things/a", headers=_auth())
        doc = _is_problem(r, 429)
        assert int(r.headers["Retry-After"]) >= 1 and doc["retry_after"] == int(r.headers["Retry-After"])
        assert (await client.get("/v1/things/b", headers=_auth(OTHER_KEY))).status_code == 200
    assert h.calls == ["a", "a", "a", "b"]


def test_the_token_bucket_refills_at_its_rate_and_never_beyond_its_burst() -> None:
    now = [0.0]
    limiter = KeyRateLimiter(2.0, 4, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(4)] == [0.0] * 4
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("k") == 0.0 and limiter.take("k") > 0
    now[0] += 1000
    assert [limiter.take("k") for _ in range(4)] == [0.0] * 4 and limiter.take("k") > 0


def test_the_default_limits_leave_the_suite_and_the_benchmarks_alone() -> None:
    s = Settings()
    assert s.rate_limit_per_second >= 1000 and s.rate_limit_burst >= 2000
    assert s.phone_lookup_per_second < s.rate_limit_per_second and s.phone_lookup_burst < s.rate_limit_burst


# ---- 4. every 5xx is counted and logged with its correlation id ---------------------------------


async def test_an_exception_escaping_a_route_is_a_counted_logged_500_with_its_correlation_id(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with _client(h) as client:
        r = await client.get("/v1/boom", headers={"X-Correlation-Id": "req-boom-1"})
    doc = _is_problem(r, 500)
    assert "broke" not in r.text and doc["type"].endswith("/internal")
    assert r.headers["X-Correlation-Id"] == "req-boom-1"
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any(rec.exc_info and getattr(rec, "correlation_id", None) == "req-boom-1" for rec in errors)
    rendered = metrics.render()
    assert f'membership_http_server_errors_total{{path="/v1/boom",service="{h.service}",status="500"}} 1.0' in rendered
    assert f'method="GET",path="/v1/boom",service="{h.service}",status="500"' in rendered


async def test_a_forged_correlation_id_is_replaced_not_echoed(h: Harness) -> None:
    async with _client(h) as client:
        r = await client.get("/v1/things/a", headers={**_auth(), "X-Correlation-Id": 'x"} {y' + "z" * 200})
    assert r.status_code == 200 and len(r.headers["X-Correlation-Id"]) == 36


# ---- 5. NUL and out-of-range values are 4xx, never 500 ------------------------------------------


async def test_a_nul_anywhere_is_422_before_the_route(h: Harness) -> None:
    async with _client(h) as client:
        for r in (
            await client.get("/v1/things/a%00b", headers=_auth()),
            await client.get("/v1/things/a", params={"q": "x\x00y"}, headers=_auth()),
            await client.post("/v1/things", json={"a": ["ok", {"b": "x\x00"}]}, headers=_auth()),
            await client.post("/v1/things", content=b'{"a": "\\\\\\u0000"}', headers=_auth()),
        ):
            doc = _is_problem(r, 422)
            assert "NUL" in doc["detail"]
        # an escaped backslash before "u0000" is text, not a NUL
        r = await client.post(
            "/v1/things", content=b'{"a": "\\\\u0000"}', headers={**_auth(), "content-type": "application/json"}
        )
        assert r.status_code == 200
    assert h.calls == ["post"]


def test_nul_detection_follows_json_escapes() -> None:
    assert has_nul(b'"\\u0000"') and has_nul(b'"\\\\\\u0000"') and has_nul(b"\x00")
    assert not has_nul(b'"\\\\u0000"') and not has_nul(b'"u0000"') and not has_nul(b'"\\u00001"'[:3])


async def test_values_out_of_range_are_422_transient_database_errors_503_and_others_stay_500(h: Harness) -> None:
    async with _client(h) as client:
        for path in ("/v1/overflow", "/v1/db-range"):
            doc = _is_problem(await client.get(path), 422)
            assert "out of the range" in doc["detail"]
        # a deadlock (or a pooled connection that broke: the pool no longer pings) is the client's to retry
        busy = await client.get("/v1/db-other")
        _is_problem(busy, 503)
        assert busy.headers["Retry-After"] == "1"
        _is_problem(await client.get("/v1/db-internal"), 500)


def test_every_strict_body_bounds_its_dates_instants_and_integers() -> None:
    from datetime import UTC, date, datetime

    from pydantic import TypeAdapter, ValidationError

    from shared.schemas import Instant, Strict

    class Body(Strict):
        day: date | None = None
        at: datetime | None = None
        n: int | None = None
        days: list[date] | None = None

    Body(day=date(1990, 1, 1), at=datetime(2026, 1, 1, tzinfo=UTC), n=2**63 - 1)
    for bad in (
        {"day": "0001-01-01"},
        {"day": "9999-12-31"},
        {"at": "9999-12-31T23:59:59+00:00"},
        {"at": "0001-01-01T00:00:00+14:00"},
        {"n": 2**63},
        {"n": -(2**64)},
        {"days": ["2000-01-01", "9999-01-01"]},
    ):
        with pytest.raises(ValidationError):
            Body.model_validate(bad)
    instant = TypeAdapter(Instant)
    assert instant.validate_python("2026-01-01T00:00:00+08:00").year == 2026
    for bad_instant in ("9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00", "2026-01-01T00:00:00"):
        with pytest.raises(ValidationError):
            instant.validate_python(bad_instant)
