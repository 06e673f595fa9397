"""No input produces a 500 (SPEC §5), on every route of every service, generated from their OpenAPI documents:
each path and query parameter, and each field of a valid request body, in turn gets a NUL character, dates of
year 1 and 9999, and integers beyond what PostgreSQL holds; every answer must be a 4xx or a success, never a
5xx. It runs in a chain of its own, so what the valid parts of it create touches no other test's data."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.stack import Stack
from shared.policy import DEFAULT_POLICY
from shared.settings import SERVICES
from tests.helpers import Api, eventually

pytestmark = pytest.mark.e2e

CHAIN = "bad-input-chain"
NOW = datetime.now(UTC)
NUL = "x\x00y"
DATES = ["0001-01-01", "9999-12-31"]
INSTANTS = ["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+14:00"]
HUGE = [2**63, 99_999_999_999, -(2**63) - 1, 10**30]


@pytest.fixture(scope="module")
def keys(stack: Stack) -> dict[str, str]:
    from shared.platform import add_api_key, upsert_chain

    async def go() -> dict[str, str]:
        engine = create_async_engine(stack.postgres.url)  # type: ignore[union-attr]
        try:
            await upsert_chain(engine, CHAIN, "Bad Input Clinics")
            ops = await add_api_key(engine, CHAIN, ["ops"], name="bad-input-ops")
            spare = await add_api_key(engine, CHAIN, ["pos"], name="bad-input-spare")
            return {"ops": ops, "spare": spare}
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _fresh_phone() -> str:
    return "137" + str(uuid.uuid4().int)[:8]


def _enrol_body() -> dict[str, Any]:
    return {
        "phone": _fresh_phone(),
        "name": "坏输入",
        "birthday": "1990-06-15",
        "home_clinic_id": "clinic-1",
        "source": "walk_in",
        "consents": {"marketing": False, "sms": True, "email": True},
        "email": "bad@example.com",
    }


def _purchase_body(member_id: str) -> dict[str, Any]:
    return {
        "pos_txn_id": f"bad-{uuid.uuid4()}",
        "clinic_id": "clinic-1",
        "member_id": member_id,
        "amount_fen": 10_000,
        "currency": "CNY",
        "occurred_at": (NOW - timedelta(minutes=5)).isoformat(),
        "items": [{"sku": "peel", "category": "skin_care", "amount_fen": 10_000, "qty": 1}],
    }


@pytest.fixture(scope="module")
def world(api: Api, keys: dict[str, str]) -> dict[str, Any]:
    """Real ids of this chain, so a mutated request gets as deep as a valid one would."""
    ops = keys["ops"]
    r = api.post("enrollment", "/v1/members", _enrol_body(), key=ops)
    assert r.status_code == 201, r.text
    member_id = r.json()["member_id"]
    r = api.post("enrollment", "/v1/purchases", _purchase_body(member_id), key=ops)
    assert r.status_code == 202, r.text
    purchase_id = r.json()["purchase_id"]
    for service in ("points", "tiering", "benefits", "notify"):
        path = {
            "points": "/v1/members/{m}/points",
            "tiering": "/v1/members/{m}/tier",
            "benefits": "/v1/members/{m}/benefits",
            "notify": "/v1/members/{m}/notifications",
        }[service]
        eventually(lambda s=service, p=path: api.get(s, p.format(m=member_id), key=ops).status_code == 200)
    keys_page = api.get("enrollment", "/v1/keys", key=ops).json()
    spare = next(k["key_id"] for k in keys_page["items"] if k["name"] == "bad-input-spare")
    return {
        "member_id": member_id,
        "purchase_id": purchase_id,
        "key_id": spare,
        "chain_id": CHAIN,
        "version": 1,
        "benefit_id": str(uuid.uuid4()),
        "dead_letter_id": str(uuid.uuid4()),
        "job_id": str(uuid.uuid4()),
    }


# ---- valid bodies: from the schema, with examples where a generated value would be refused anyway ----


def _examples(world: dict[str, Any]) -> dict[tuple[str, str], Any]:
    m = world["member_id"]
    policy = DEFAULT_POLICY.model_dump(mode="json")
    return {
        ("POST", "/v1/members"): _enrol_body,
        ("PATCH", "/v1/members/{member_id}"): lambda: {
            "name": "改名",
            "email": "new@example.com",
            "consents": {"marketing": True, "sms": True, "email": True},
        },
        ("POST", "/v1/purchases"): lambda: _purchase_body(m),
        ("POST", "/v1/activities"): lambda: {
            "activity_id": f"act-{uuid.uuid4()}",
            "member_id": m,
            "clinic_id": "clinic-1",
            "kind": "lecture",
            "occurred_at": NOW.isoformat(),
        },
        ("POST", "/v1/purchases/{purchase_id}/refunds"): lambda: {
            "refund_id": f"ref-{uuid.uuid4()}",
            "amount_fen": 1,
            "occurred_at": NOW.isoformat(),
        },
        ("POST", "/v1/members/batch"): lambda: {
            "items": [{**_enrol_body(), "enrolled_at": (NOW - timedelta(days=3)).isoformat()}]
        },
        ("POST", "/v1/purchases/batch"): lambda: {"items": [_purchase_body(m)]},
        ("PUT", "/v1/policy"): lambda: copy.deepcopy(policy),
        ("POST", "/v1/policy/simulate"): lambda: {"policy": copy.deepcopy(policy)},
        ("POST", "/v1/members/{member_id}/tier/override"): lambda: {
            "to_tier": "gold",
            "reason": "bad input test",
            "until": (NOW + timedelta(days=30)).isoformat(),
        },
        ("PUT", "/v1/members/{member_id}/preferences"): lambda: {
            "channels": ["sms", "webhook"],
            "locale": "en",
            "quiet_hours": {"start": "22:00", "end": "08:00"},
        },
        ("POST", "/v1/keys"): lambda: {
            "name": "bad-input-made",
            "scopes": ["pos"],
            "clinic_id": "clinic-1",
            "expires_at": (NOW + timedelta(days=1)).isoformat(),
        },
    }


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def _generate(doc: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> Any:
    schema = _resolve(doc, schema)
    for alt in ("anyOf", "oneOf"):
        if alt in schema:
            options = [s for s in schema[alt] if _resolve(doc, s).get("type") != "null"]
            return _generate(doc, options[0], depth) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema and schema.get("type") != "object":
        return schema["default"]
    t = schema.get("type")
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        out = {}
        for name, sub in props.items():
            resolved = _resolve(doc, sub)
            leafy = {s.get("format") for s in [resolved, *resolved.get("anyOf", [])]} | {
                s.get("type") for s in [resolved, *resolved.get("anyOf", [])]
            }
            if name in required or leafy & {"date", "date-time", "integer"}:
                out[name] = _generate(doc, sub, depth + 1)
        return out
    if t == "array":
        return [_generate(doc, schema.get("items", {}), depth + 1)] if depth < 4 else []
    if t == "integer":
        return max(1, schema.get("minimum", 1))
    if t == "number":
        return 1
    if t == "boolean":
        return False
    if schema.get("format") == "date-time":
        return (NOW - timedelta(minutes=1)).isoformat()
    if schema.get("format") == "date":
        return "2000-01-01"
    return "x"


# ---- mutations ----------------------------------------------------------------------------------


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path, value


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    out = copy.deepcopy(value)
    target = out
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = new
    return out


def _bad_values(leaf: Any) -> list[Any]:
    if isinstance(leaf, bool):
        return []
    if isinstance(leaf, int):
        return HUGE
    if isinstance(leaf, str):
        if len(leaf) == 10 and leaf[4] == "-" and leaf[7] == "-":
            return [*DATES, leaf + "\x00"]
        if "T" in leaf and leaf[:4].isdigit():
            return INSTANTS
        return [leaf + "\x00", NUL]
    return []


def _query_values(schema: dict[str, Any]) -> list[Any]:
    formats = {schema.get("format")} | {s.get("format") for s in schema.get("anyOf", [])}
    types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
    values: list[Any] = [NUL]
    if "date-time" in formats:
        values += INSTANTS
    if "integer" in types:
        values += [str(v) for v in HUGE]
    return values


def _path_values(schema: dict[str, Any]) -> list[str]:
    return (
        [NUL, "99999999999", str(2**64), "0001-01-01", "%ff%fe"]
        if schema.get("type") != "integer"
        else [
            "99999999999",
            str(2**64),
            "-1",
            NUL,
        ]
    )


def _attack(
    send: Any,
    world: dict[str, Any],
    doc: dict[str, Any],
    service: str,
    method: str,
    template: str,
    op: dict[str, Any],
    example: Any,
) -> None:
    """Every bad value in every parameter and body field of one operation, the rest of the request valid."""
    params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
    path_params = {p["name"]: p for p in params if p["in"] == "path"}
    query_params = [p for p in params if p["in"] == "query"]
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")

    def path_of(overrides: dict[str, str]) -> str:
        out = template
        for name in path_params:
            value = overrides.get(name, str(world.get(name, "x")))
            out = out.replace("{" + name + "}", quote(value, safe="%"))
        return out

    def body() -> Any:
        if example is not None:
            return example()
        return _generate(doc, body_schema) if body_schema else None

    for name, p in path_params.items():
        for bad in _path_values(_resolve(doc, p.get("schema", {}))):
            send(service, method, path_of({name: bad}), {}, body())
    for p in query_params:
        for bad in _query_values(_resolve(doc, p.get("schema", {}))):
            send(service, method, path_of({}), {p["name"]: bad}, body())
    if body_schema is not None:
        for leaf_path, leaf in list(_leaves(body())):
            for bad in _bad_values(leaf):
                send(service, method, path_of({}), {}, _set(body(), leaf_path, bad))


def test_no_input_gives_a_5xx_on_any_route_of_any_service(
    api: Api, world: dict[str, Any], keys: dict[str, str]
) -> None:
    http = httpx.Client(timeout=60.0)
    headers = {"Authorization": f"Bearer {keys['ops']}"}
    examples = _examples(world)
    failures: list[str] = []
    sent = 0

    def send(service: str, method: str, path: str, params: dict[str, Any], body: Any) -> None:
        nonlocal sent
        sent += 1
        url = api.urls[service] + path
        kw: dict[str, Any] = {"params": params, "headers": headers}
        if body is not None:
            kw["json"] = body
        try:
            r = http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            failures.append(f"{service} {method} {path} {params} {body!r:.200}: {exc!r}")
            return
        if r.status_code >= 500 or r.status_code == 429:
            failures.append(f"{service} {method} {path} {params!r:.100} {body!r:.300} -> {r.status_code} {r.text:.300}")

    for service in SERVICES:
        doc = http.get(api.urls[service] + "/openapi.json").json()
        for template, operations in doc["paths"].items():
            for method, op in operations.items():
                method = method.upper()
                if template.startswith("/v1/chains") or (method == "DELETE" and "{key_id}" in template):
                    continue  # platform scope (ops is refused before any input is read); revoking the spare key
                _attack(send, world, doc, service, method, template, op, examples.get((method, template)))
    assert sent > 300
    assert not failures, f"{len(failures)} of {sent} requests failed:\n" + "\n".join(failures[:60])


def test_the_reported_cases(api: Api, world: dict[str, Any], keys: dict[str, str]) -> None:
    ops = keys["ops"]
    m = world["member_id"]
    assert api.get("tiering", "/v1/policy/versions/99999999999", key=ops).status_code == 422
    for service, path in [
        ("enrollment", "/v1/members/{}"),
        ("points", "/v1/members/{}/points"),
        ("tiering", "/v1/members/{}/tier"),
        ("benefits", "/v1/members/{}/benefits"),
        ("notify", "/v1/members/{}/notifications"),
    ]:
        r = api.get(service, path.format("m%00x"), key=ops)
        assert r.status_code == 422 and "NUL" in r.json()["detail"], (service, r.text)
    r = api.get("tiering", f"/v1/members/{m}/tier/explain", key=ops, params={"as_of": "9999-12-31T23:59:59+00:00"})
    assert r.status_code == 422, r.text
    late = {**_purchase_body(m), "occurred_at": "0001-01-01T00:00:00+00:00"}
    assert api.post("enrollment", "/v1/purchases", late, key=ops).status_code == 422
