"""Chains are isolated: another chain's key sees none of a member's data in any service, and an event
naming another chain's member is dead-lettered by every consumer, changing nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest

from shared.api import request_hash
from shared.events import (
    BenefitGranted,
    MemberEnrolled,
    PointsChanged,
    PurchaseItem,
    PurchaseRecorded,
    TierChanged,
    new_event,
)
from tests.helpers import APP, OPS, Api, eventually, is_problem, publish_events

pytestmark = pytest.mark.e2e


READS = [
    ("enrollment", "/v1/members/{m}"),
    ("enrollment", "/v1/members/{m}/status"),
    ("points", "/v1/members/{m}/points"),
    ("points", "/v1/members/{m}/points/ledger"),
    ("tiering", "/v1/members/{m}/tier"),
    ("tiering", "/v1/members/{m}/tier/history"),
    ("benefits", "/v1/members/{m}/benefits"),
    ("benefits", "/v1/members/{m}/discount"),
    ("notify", "/v1/members/{m}/notifications"),
]


def test_another_chains_key_gets_404_from_every_service(api: Api, other_chain_key: str) -> None:
    mid = api.enrol()["member_id"]
    # wait until every service knows the member, so a 404 is isolation and not lag
    for service, path in READS:
        eventually(lambda s=service, p=path: api.get(s, p.format(m=mid)).status_code == 200)
    for service, path in READS:
        r = api.get(service, path.format(m=mid), key=other_chain_key)
        assert set(is_problem(r, 404)) <= {"type", "title", "status", "detail", "instance"}
    r = api.post("points", f"/v1/members/{mid}/points/redemptions", {"points": 1, "reason": "x"}, key=other_chain_key)
    is_problem(r, 404)
    found = api.get("enrollment", "/v1/members", key=other_chain_key, params={"phone": "139" + "0" * 8})
    assert found.status_code == 200 and found.json()["items"] == []


def _forged_events(member_id: str, forger: str) -> dict[str, Any]:
    """Events about ``member_id`` (the demo chain's) that name the forger's chain, one per type the
    consumers take."""
    now = datetime.now(UTC)
    data: dict[str, Any] = {
        "PurchaseRecorded": PurchaseRecorded(
            purchase_id=str(uuid.uuid4()),
            pos_txn_id=uuid.uuid4().hex,
            clinic_id="clinic-1",
            member_id=member_id,
            amount_fen=40_000_000,
            occurred_at=now,
            items=[PurchaseItem(sku="s", category="injectables", amount_fen=40_000_000, qty=1)],
        ),
        "MemberEnrolled": MemberEnrolled(
            member_id=member_id,
            member_no="M-forged",
            home_clinic_id="clinic-1",
            source="app",
            birthday=date(1990, 5, 5),
            enrolled_at=now,
        ),
        "TierChanged": TierChanged(
            from_tier="member",
            to_tier="diamond",
            direction="up",
            reason="qualified",
            policy_version=1,
            effective_at=now,
        ),
        "PointsChanged": PointsChanged(
            entry_id=str(uuid.uuid4()),
            delta=900_000,
            balance=900_000,
            entry_type="earn",
            reason="purchase",
            qualifying=True,
        ),
        "BenefitGranted": BenefitGranted(
            benefit_id=str(uuid.uuid4()), code="private_plan", remaining_uses=None, valid_until=None
        ),
    }
    return {name: new_event(d, member_id=member_id, chain_id=forger) for name, d in data.items()}


#: which consumer takes which of the forged types (README's table)
TAKEN_BY = {
    "points": ["PurchaseRecorded", "MemberEnrolled"],
    "tiering": ["PurchaseRecorded", "MemberEnrolled", "PointsChanged"],
    "benefits": ["PurchaseRecorded", "MemberEnrolled", "TierChanged"],
    "enrollment": ["TierChanged", "PointsChanged", "BenefitGranted"],
    "notify": ["MemberEnrolled", "TierChanged", "BenefitGranted"],
}


def _what_the_chain_sees(api: Api, member_id: str) -> dict[str, Any]:
    status = api.get("enrollment", f"/v1/members/{member_id}/status").json()
    return {
        "points": api.get("points", f"/v1/members/{member_id}/points").json()["balance"],
        "ledger": [e["entry_id"] for e in api.get("points", f"/v1/members/{member_id}/points/ledger").json()["items"]],
        "tier": api.get("tiering", f"/v1/members/{member_id}/tier").json()["code"],
        "history": api.get("tiering", f"/v1/members/{member_id}/tier/history").json()["items"],
        "benefits": sorted(
            b["benefit_id"] for b in api.get("benefits", f"/v1/members/{member_id}/benefits").json()["items"]
        ),
        "status": {k: status[k] for k in ("tier", "points", "benefits") if k in status},
        "notifications": sorted(
            (n["notification_id"], n["kind"])
            for n in api.get("notify", f"/v1/members/{member_id}/notifications").json()["items"]
        ),
        "profile": api.get("enrollment", f"/v1/members/{member_id}", key=OPS).json(),
    }


def _dead_lettered(api: Api, service: str, key: str) -> dict[str, dict[str, Any]]:
    r = api.get(service, "/v1/dead-letters", key=key, params={"limit": 200})
    assert r.status_code == 200, r.text
    return {d["event_id"]: d for d in r.json()["items"]}


def test_a_forged_event_naming_another_chains_member_is_dead_lettered_by_every_consumer_and_changes_nothing(
    api: Api, stack: Any, other_chain_key: str
) -> None:
    mid = api.enrol()["member_id"]
    api.purchase(mid, 600_000)
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points").json()["balance"] > 0)
    eventually(lambda: api.get("enrollment", f"/v1/members/{mid}/status").json()["points"] is not None)
    eventually(lambda: api.get("notify", f"/v1/members/{mid}/notifications").json()["items"] != [])
    eventually(lambda: api.get("benefits", f"/v1/members/{mid}/benefits").json()["items"] != [])
    before = _what_the_chain_sees(api, mid)

    forged = _forged_events(mid, "other-chain")
    publish_events(stack.broker.bootstrap, list(forged.values()))

    for service, types in TAKEN_BY.items():
        expected = {forged[t].id for t in types}
        eventually(lambda s=service, e=expected: e <= _dead_lettered(api, s, other_chain_key).keys(), timeout=60)
        letters = _dead_lettered(api, service, other_chain_key)
        for event_id in expected:
            # the error names the forger's chain only: nothing of the victim's chain or data
            assert (
                "demo-chain" not in letters[event_id]["error"]
                and before["profile"]["phone"] not in letters[event_id]["error"]
            )
        # the victim chain's operators see none of it
        assert not expected & _dead_lettered(api, service, OPS).keys()

    assert _what_the_chain_sees(api, mid) == before


def _redeem(api: Api, member_id: str, key: str, idempotency_key: str) -> Any:
    return api.post(
        "points",
        f"/v1/members/{member_id}/points/redemptions",
        {"points": 1, "reason": "same key"},
        key=key,
        headers={"Idempotency-Key": idempotency_key},
    )


def test_two_keys_of_one_chain_never_see_each_others_idempotent_responses(api: Api, stack: Any) -> None:
    mid = api.enrol()["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points").status_code == 200)
    r = api.post("points", f"/v1/members/{mid}/points/adjustments", {"delta": 100, "reason": "to redeem"}, key=OPS)
    assert r.status_code == 201, r.text
    created = api.post("enrollment", "/v1/keys", {"name": "second-app", "scopes": ["app"]}, key=OPS)
    assert created.status_code == 201, created.text
    second = created.json()["key"]

    first = _redeem(api, mid, APP, "shared-idem-key")
    assert first.status_code == 201, first.text
    # the other key of the chain, the same Idempotency-Key and body: a request of its own, run once for it,
    # never the first key's response (its entry id, its balance)
    theirs = _redeem(api, mid, second, "shared-idem-key")
    assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers, theirs.text
    assert theirs.json()["entry_id"] != first.json()["entry_id"]
    assert first.json()["entry_id"] not in theirs.text
    # each key's own retry is still a replay of its own response
    again = _redeem(api, mid, APP, "shared-idem-key")
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == first.json()
    theirs_again = _redeem(api, mid, second, "shared-idem-key")
    assert theirs_again.headers.get("idempotent-replayed") == "true" and theirs_again.json() == theirs.json()
    # another body under the key: a conflict for that key only
    other_body = api.post(
        "points",
        f"/v1/members/{mid}/points/redemptions",
        {"points": 2, "reason": "same key"},
        key=second,
        headers={"Idempotency-Key": "shared-idem-key"},
    )
    is_problem(other_body, 409)
    assert first.json()["entry_id"] not in other_body.text
    ledger = api.get("points", f"/v1/members/{mid}/points/ledger").json()["items"]
    assert sum(1 for e in ledger if e["entry_type"] == "redeem") == 2


def test_a_response_stored_before_keys_were_told_apart_still_answers_a_retry(api: Api, stack: Any) -> None:
    """A row from before migration "idempotency keys per API key" (key_id '') is replayed, not run again."""
    import asyncpg

    mid = api.enrol()["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points").status_code == 200)
    body = {"points": 1, "reason": "legacy"}
    stored = {"entry_id": "legacy-entry", "balance": 7}

    async def insert_legacy_row() -> None:
        conn = await asyncpg.connect(stack.settings().asyncpg_dsn)
        try:
            await conn.execute(
                "INSERT INTO points.idempotency_keys"
                " (chain_id, key_id, scope, key, request_hash, status_code, response)"
                " VALUES ($1, '', $2, $3, $4, 201, $5::jsonb)",
                "demo-chain",
                "POST /v1/members/{member_id}/points/redemptions",
                "legacy-idem-key",
                request_hash({"member_id": mid, **body}),
                json.dumps(stored),
            )
        finally:
            await conn.close()

    asyncio.run(insert_legacy_row())
    r = api.post(
        "points",
        f"/v1/members/{mid}/points/redemptions",
        body,
        key=APP,
        headers={"Idempotency-Key": "legacy-idem-key"},
    )
    assert r.status_code == 201 and r.headers.get("idempotent-replayed") == "true" and r.json() == stored
