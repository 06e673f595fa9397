"""Every route of every service, asked by every kind of caller, about its own chain and another's.

The routes come from the services' own route tables (:func:`shared.service.service_routers`), with the
scopes each declares (:data:`shared.api.REQUIRED_SCOPES`); a route added later is in the matrix at
once. Where SPEC §5/§7 names a route's scopes, the declaration must say the same (:data:`CONTRACT`).
Each cell is one request against the running stack:

* no key, or a revoked one: 401;
* a key whose scopes the route does not accept: 403;
* an accepted key, about its own chain's resource: neither 401 nor 403 (the request reaches the route);
* an accepted key, about another chain's resource named in the path: 404 (a platform key may see other
  chains and their keys, nothing else of them); named in the body (a purchase's member): 422, the
  member does not exist in the caller's chain;
* and no answer is a 5xx, and no refused answer holds any of the other chain's data (its members' ids,
  names, phones, member numbers, referral codes, purchases, benefits, keys, jobs, its name) beyond what
  the request itself named.

Writes about one's own chain send a body with an unknown field, so they stop at validation (422) and
change nothing; the few body-less writes (a recalculation, a key's revocation, a dead letter's re-drive,
a member's erasure) act on throwaway resources.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from shared.api import REQUIRED_SCOPES
from shared.events import PurchaseItem, PurchaseRecorded, new_event
from shared.platform import Principal
from shared.service import service_routers
from shared.settings import SERVICES
from tests.helpers import APP, OPS, POS, Api, eventually, publish_events, purchase_body

pytestmark = pytest.mark.e2e

OWN, OTHER = "demo-chain", "other-chain"
CALLERS = ("none", "revoked", "pos", "app", "ops", "platform")

#: the scopes SPEC §5 and §7 give routes (any of them; ``ops`` and ``platform`` may do more)
CONTRACT: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/members"): {"app"},
    ("POST", "/v1/purchases"): {"pos"},
    ("POST", "/v1/purchases/{purchase_id}/refunds"): {"pos"},
    ("POST", "/v1/activities"): {"pos"},
    ("GET", "/v1/members"): {"pos", "app"},
    ("POST", "/v1/members/{member_id}/points/redemptions"): {"app"},
    ("POST", "/v1/members/{member_id}/points/adjustments"): {"ops"},
    ("GET", "/v1/policy"): {"ops"},
    ("PUT", "/v1/policy"): {"ops"},
    ("POST", "/v1/policy/simulate"): {"ops"},
    ("POST", "/v1/members/{member_id}/tier/override"): {"ops"},
    ("POST", "/v1/reviews/run"): {"ops"},
    ("POST", "/v1/chains"): {"platform"},
    ("PATCH", "/v1/chains/{chain_id}"): {"platform"},
    ("POST", "/v1/keys"): {"ops"},
    ("GET", "/v1/keys"): {"ops"},
    ("POST", "/v1/keys/{key_id}/rotate"): {"ops"},
    ("DELETE", "/v1/keys/{key_id}"): {"ops"},
    ("GET", "/v1/audit"): {"ops"},
    ("GET", "/v1/dead-letters"): {"ops"},
    ("POST", "/v1/dead-letters/redrive"): {"ops"},
    ("POST", "/v1/dead-letters/{dead_letter_id}/redrive"): {"ops"},
    ("POST", "/v1/dead-letters/{dead_letter_id}/discard"): {"ops"},
    ("GET", "/v1/members/{member_id}/export"): {"ops"},  # SPEC §8
    ("DELETE", "/v1/members/{member_id}"): {"ops"},
}
#: body-less writes that would destroy the world's member act on a throwaway one (an erasure)
THROWAWAY_MEMBER = {("DELETE", "/v1/members/{member_id}")}
#: path parameters naming a chain's resource: another chain's is a 404
RESOURCES = {"member_id", "purchase_id", "benefit_id", "key_id", "chain_id", "job_id", "dead_letter_id"}
#: what a platform key may see and do of another chain (SPEC §7: chains and their keys)
PLATFORM_REACH = {"chain_id", "key_id"}
KEYS = {("POST", "/v1/keys"), ("GET", "/v1/keys")}  # another chain named by ``chain_id``
BODY_MEMBER = {("POST", "/v1/purchases"), ("POST", "/v1/activities")}  # another chain's member in the body


@dataclass(frozen=True)
class Route:
    service: str
    method: str
    path: str
    scopes: tuple[str, ...]
    has_body: bool

    @property
    def params(self) -> set[str]:
        return set(re.findall(r"{(\w+)}", self.path))

    def __str__(self) -> str:
        return f"{self.service} {self.method} {self.path}"


def _dependencies(dep: Any) -> Iterator[Any]:
    yield dep
    for d in dep.dependencies:
        yield from _dependencies(d)


def route_table() -> list[Route]:
    routes = []
    for name in SERVICES:
        for router in service_routers(importlib.import_module(f"{name}.service").SERVICE):
            for r in router.routes:
                assert isinstance(r, APIRoute), f"{name}: a route the matrix cannot read: {r}"
                scopes = [REQUIRED_SCOPES[d.call] for d in _dependencies(r.dependant) if d.call in REQUIRED_SCOPES]
                assert len(scopes) == 1, f"{name} {r.path}: every /v1 route declares its scopes once ({scopes})"
                for method in sorted(r.methods):
                    routes.append(Route(name, method, r.path, scopes[0], r.body_field is not None))
    return routes


ROUTES = route_table()


def test_the_route_table_declares_the_scopes_the_contract_gives() -> None:
    assert len(ROUTES) > 60 and all(r.path.startswith("/v1/") for r in ROUTES)
    for r in ROUTES:
        if (r.method, r.path) in CONTRACT:
            assert set(r.scopes) == CONTRACT[(r.method, r.path)], (str(r), r.scopes)
    assert set(CONTRACT) <= {(r.method, r.path) for r in ROUTES}


# ---- the two chains' resources ----------------------------------------------------------------


@dataclass
class Chain:
    chain_id: str
    member_id: str
    phone: str
    purchase_id: str
    benefit_id: str
    key_id: str  # a throwaway key of the chain
    job_id: str
    dead_letter_id: str
    secrets: set[str]  # what of the chain must never reach another chain's caller
    erasable_member_id: str = ""  # a throwaway member of the chain, for the erasure


@dataclass
class World:
    own: Chain
    other: Chain
    keys: dict[str, str | None]  # the own chain's caller keys, by CALLERS


def _key(api: Api, key: str, name: str, scopes: list[str]) -> dict[str, Any]:
    r = api.post("enrollment", "/v1/keys", {"name": name, "scopes": scopes}, key=key)
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _chain(api: Api, stack: Any, chain_id: str, *, pos: str, app: str, ops: str) -> Chain:
    phone = "136" + str(uuid.uuid4().int)[:8]
    name = f"成员{uuid.uuid4().hex[:6]}"
    body = {
        "phone": phone,
        "name": name,
        "birthday": "1988-03-03",
        "home_clinic_id": "clinic-1",
        "source": "walk_in",
        "consents": {"marketing": True, "sms": True, "email": False},
    }
    r = api.post("enrollment", "/v1/members", body, key=app)
    assert r.status_code == 201, r.text
    enrolled = r.json()
    member_id = enrolled["member_id"]
    bought = api.post("enrollment", "/v1/purchases", purchase_body(member_id, 6_000_000), key=pos)
    assert bought.status_code == 202, bought.text
    benefits = eventually(
        lambda: api.get("benefits", f"/v1/members/{member_id}/benefits", key=app).json()["items"] or None
    )
    eventually(lambda: api.get("points", f"/v1/members/{member_id}/points", key=app).status_code == 200)
    eventually(lambda: api.get("notify", f"/v1/members/{member_id}/notifications", key=app).status_code == 200)
    eventually(lambda: api.get("enrollment", f"/v1/members/{member_id}/status", key=app).status_code == 200)
    throwaway = _key(api, ops, f"throwaway-{chain_id}", ["pos"])
    erasable = api.post("enrollment", "/v1/members", {**body, "phone": "135" + str(uuid.uuid4().int)[:8]}, key=app)
    assert erasable.status_code == 201, erasable.text
    job = api.post("tiering", "/v1/policy/recalculate", {}, key=ops)
    assert job.status_code == 202, job.text
    # a dead letter of the chain: a purchase of a member points never saw
    poison = new_event(
        PurchaseRecorded(
            purchase_id=str(uuid.uuid4()),
            pos_txn_id=uuid.uuid4().hex,
            clinic_id="clinic-1",
            member_id=str(uuid.uuid4()),
            amount_fen=1_000,
            occurred_at=datetime.now(UTC),
            items=[PurchaseItem(sku="s", category="skin_care", amount_fen=1_000, qty=1)],
        ),
        member_id=str(uuid.uuid4()),
        chain_id=chain_id,
    )
    publish_events(stack.broker.bootstrap, [poison])
    letter = eventually(
        lambda: next(
            (d for d in api.get("points", "/v1/dead-letters", key=ops).json()["items"] if d["event_id"] == poison.id),
            None,
        ),
        timeout=60,
    )
    profile = api.get("enrollment", f"/v1/members/{member_id}", key=ops).json()
    return Chain(
        chain_id=chain_id,
        member_id=member_id,
        erasable_member_id=erasable.json()["member_id"],
        phone=phone,
        purchase_id=bought.json()["purchase_id"],
        benefit_id=benefits[0]["benefit_id"],
        key_id=throwaway["key_id"],
        job_id=job.json()["job_id"],
        dead_letter_id=letter["dead_letter_id"],
        secrets={
            member_id,
            phone,
            phone[:3] + "****" + phone[-4:],
            name,
            profile["member_no"],
            enrolled["referral_code"],
            bought.json()["purchase_id"],
            *(b["benefit_id"] for b in benefits),
            throwaway["key_id"],
            job.json()["job_id"],
            letter["dead_letter_id"],
            poison.id,
            erasable.json()["member_id"],
        },
    )


@pytest.fixture(scope="module")
def world(api: Api, stack: Any, other_chain_key: str) -> World:
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.platform import add_api_key

    async def platform_key() -> str:
        engine = create_async_engine(stack.postgres.url)
        try:
            return await add_api_key(engine, OWN, ["platform"], name="matrix-platform")
        finally:
            await engine.dispose()

    own = _chain(api, stack, OWN, pos=POS, app=APP, ops=OPS)
    other = _chain(api, stack, OTHER, pos=other_chain_key, app=other_chain_key, ops=other_chain_key)
    other.secrets.add("Other Clinics")
    revoked = _key(api, OPS, "matrix-revoked", ["ops"])
    assert api.call("DELETE", "enrollment", f"/v1/keys/{revoked['key_id']}", key=OPS).status_code == 204
    keys = {
        "none": None,
        "revoked": revoked["key"],
        "pos": POS,
        "app": APP,
        "ops": OPS,
        "platform": asyncio.run(platform_key()),
    }
    return World(own, other, keys)


# ---- one request per cell -------------------------------------------------------------------------


def _valid_body(route: Route, chain: Chain) -> Any:
    """A body that passes validation, naming ``chain``'s resources: the request reaches the chain check."""
    now = datetime.now(UTC).isoformat()
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/purchases"): purchase_body(chain.member_id, 10_000),
        ("POST", "/v1/activities"): {
            "activity_id": uuid.uuid4().hex,
            "member_id": chain.member_id,
            "clinic_id": "clinic-1",
            "kind": "lecture",
            "occurred_at": now,
        },
        ("POST", "/v1/purchases/{purchase_id}/refunds"): {
            "refund_id": uuid.uuid4().hex,
            "amount_fen": 100,
            "occurred_at": now,
        },
        ("PATCH", "/v1/members/{member_id}"): {"name": "改名"},
        ("POST", "/v1/members/{member_id}/points/redemptions"): {"points": 1, "reason": "matrix"},
        ("POST", "/v1/members/{member_id}/points/adjustments"): {"delta": 1, "reason": "matrix"},
        ("POST", "/v1/members/{member_id}/tier/override"): {"to_tier": "diamond", "reason": "matrix"},
        ("POST", "/v1/members/{member_id}/benefits/{benefit_id}/redemptions"): {"clinic_id": "clinic-1"},
        ("PUT", "/v1/members/{member_id}/preferences"): {"channels": ["sms"], "locale": "en"},
        ("PATCH", "/v1/chains/{chain_id}"): {"name": "Other Clinics"},
        ("POST", "/v1/keys"): {"name": "matrix", "scopes": ["pos"], "chain_id": chain.chain_id},
        ("POST", "/v1/keys/{key_id}/rotate"): {"grace_seconds": 0},
    }
    return bodies.get((route.method, route.path), {"matrix_probe": 1})


def _request(api: Api, route: Route, chain: Chain, own: bool, key: str | None) -> tuple[httpx.Response, str]:
    path = route.path
    for param in route.params:
        value = {"version": "1"}.get(param) or str(getattr(chain, param))
        if (route.method, route.path) in THROWAWAY_MEMBER and param == "member_id":
            value = chain.erasable_member_id
        path = path.replace("{" + param + "}", value)
    params = {"phone": chain.phone} if (route.method, route.path) == ("GET", "/v1/members") else None
    if route.path == "/v1/keys" and route.method == "GET" and not own:
        params = {"chain_id": chain.chain_id}
    body = None
    if route.has_body:
        # about one's own chain: a body that fails validation, so nothing changes; about another's: a
        # valid one, so the request gets as far as the chain check
        body = {"matrix_probe": 1} if own else _valid_body(route, chain)
    r = api.call(route.method, route.service, path, key=key, json_body=body, params=params)
    return r, path + json.dumps(body) + json.dumps(params)


def _allowed(route: Route, caller: str) -> bool:
    principal = Principal(OWN, frozenset({caller}), "matrix")
    return any(principal.allows(s) for s in route.scopes)


def _platform_reach(route: Route) -> bool:
    return bool(route.params & PLATFORM_REACH) or (route.method, route.path) in KEYS


def _leaks(r: httpx.Response, chain: Chain, asked: str) -> list[str]:
    try:
        doc = r.json()
    except ValueError:
        doc = r.text
    if isinstance(doc, dict):
        doc.pop("instance", None)  # the request's own path, echoed
    text = json.dumps(doc, ensure_ascii=False)
    return [s for s in chain.secrets if s and s not in asked and s in text]


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_every_caller_gets_what_the_contract_says_and_nothing_of_another_chain(
    world: World, api: Api, route: Route
) -> None:
    failures = []
    for caller in CALLERS:
        key = world.keys[caller]
        for own in (True, False):
            chain = world.own if own else world.other
            r, asked = _request(api, route, chain, own, key)
            cell = f"{caller} {'own' if own else 'other'}: {r.status_code} {r.text[:200]}"
            if r.status_code >= 500:
                failures.append(f"5xx {cell}")
                continue
            if caller in ("none", "revoked"):
                expected: set[int] | None = {401}
            elif not _allowed(route, caller):
                expected = {403}
            elif own:
                expected = None
                if r.status_code in (401, 403) or (route.method == "GET" and r.status_code != 200):
                    failures.append(f"refused its own chain {cell}")
            elif caller == "platform" and _platform_reach(route):
                expected = None  # a platform key administers every chain and its keys
            elif route.params & RESOURCES or (route.method, route.path) in KEYS:
                expected = {404}  # another chain's resource (or chain) does not exist for the caller
            elif (route.method, route.path) in BODY_MEMBER:
                expected = {422}  # the member the body names does not exist in the caller's chain
            else:
                expected = None  # not about a resource: the caller's own chain's answer, checked for leaks below
            if expected is not None and r.status_code not in expected:
                failures.append(f"expected {sorted(expected)}: {cell}")
            if expected is not None and not r.headers.get("content-type", "").startswith("application/problem+json"):
                failures.append(f"not a problem document: {cell}")
            trusted = caller == "platform" and _platform_reach(route)
            if not own and not trusted:
                leaked = _leaks(r, chain, asked)
                if leaked:
                    failures.append(f"leaks {leaked}: {cell}")
    assert not failures, f"{route}:\n" + "\n".join(failures)
