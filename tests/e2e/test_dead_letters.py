"""Dead letters an operator can act on: a poison event is parked in the consumer's schema, listed,
re-driven once its cause is fixed and applied exactly once; another chain sees none of it; and a
schema behind the code (a rolling upgrade) is waited out, not dead-lettered."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from shared.events import ActivityRecorded, MemberEnrolled, PurchaseItem, PurchaseRecorded, new_event
from tests.helpers import APP, OPS, Api, eventually, publish_events

pytestmark = pytest.mark.e2e

CHAIN = "demo-chain"


def _purchase(member_id: str, amount_fen: int) -> Any:
    return new_event(
        PurchaseRecorded(
            purchase_id=str(uuid.uuid4()),
            pos_txn_id=uuid.uuid4().hex,
            clinic_id="clinic-1",
            member_id=member_id,
            amount_fen=amount_fen,
            occurred_at=datetime.now(UTC),
            items=[PurchaseItem(sku="s", category="injectables", amount_fen=amount_fen, qty=1)],
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )


def _enrolled(member_id: str) -> Any:
    now = datetime.now(UTC)
    return new_event(
        MemberEnrolled(
            member_id=member_id,
            member_no="M" + member_id[:8],
            home_clinic_id="clinic-1",
            source="app",
            birthday=datetime(1990, 5, 5).date(),
            enrolled_at=now,
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )


def _parked(api: Api, event_id: str, key: str = OPS) -> dict[str, Any] | None:
    r = api.get("points", "/v1/dead-letters", key=key, params={"status": "parked", "type": "PurchaseRecorded"})
    assert r.status_code == 200, r.text
    return next((d for d in r.json()["items"] if d["event_id"] == event_id), None)


def test_a_poison_event_is_parked_listed_redriven_after_the_fix_and_applied_once(
    api: Api, stack: Any, other_chain_key: str
) -> None:
    member_id = str(uuid.uuid4())
    purchase = _purchase(member_id, 30_000)  # points does not know the member: the handler fails
    publish_events(stack.broker.bootstrap, [purchase])
    parked = eventually(lambda: _parked(api, purchase.id), timeout=60)
    assert parked["topic"] == "membership.enrollment" and parked["attempts"] >= 1
    assert "unknown in chain" in parked["error"]

    # another chain's operator sees nothing of it, and cannot act on it
    assert _parked(api, purchase.id, key=other_chain_key) is None
    r = api.post("points", f"/v1/dead-letters/{parked['dead_letter_id']}/redrive", key=other_chain_key)
    assert r.status_code == 404 and purchase.id not in r.text
    # nor can a key without ops
    assert api.get("points", "/v1/dead-letters", key=APP).status_code == 403

    # re-driven before the cause is fixed: it fails again, stays parked, nothing applied
    r = api.post("points", f"/v1/dead-letters/{parked['dead_letter_id']}/redrive", key=OPS)
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    assert _parked(api, purchase.id)["attempts"] == parked["attempts"] + 1

    # the cause fixed (points learns the member), the re-drive applies it once
    publish_events(stack.broker.bootstrap, [_enrolled(member_id)])
    eventually(lambda: api.get("points", f"/v1/members/{member_id}/points", key=APP).status_code == 200)
    r = api.post("points", f"/v1/dead-letters/{parked['dead_letter_id']}/redrive", key=OPS)
    assert r.status_code == 200, r.text
    assert r.json() == {"dead_letter_id": parked["dead_letter_id"], "status": "redriven", "applied": True}
    assert api.get("points", f"/v1/members/{member_id}/points", key=APP).json()["balance"] == 600

    again = api.post("points", f"/v1/dead-letters/{parked['dead_letter_id']}/redrive", key=OPS)
    assert again.status_code == 409
    bulk = api.post("points", "/v1/dead-letters/redrive", {"type": "PurchaseRecorded"}, key=OPS)
    assert bulk.status_code == 200 and parked["dead_letter_id"] not in bulk.json()["still_failing"]
    ledger = api.get("points", f"/v1/members/{member_id}/points/ledger", key=APP).json()["items"]
    assert [e["delta"] for e in ledger] == [600]

    # the re-drive is in points' audit log, with the operator's key
    audit = api.get("points", "/v1/audit", key=OPS, params={"action": "dead_letter.redrive"}).json()["items"]
    [entry] = [a for a in audit if a["target"] == f"dead_letter:{parked['dead_letter_id']}"]
    assert entry["actor_name"] == "demo-ops" and entry["actor_key_id"].startswith("key_")
    assert entry["before"]["event_id"] == purchase.id and entry["after"] == {"status": "redriven", "applied": True}
    assert api.get("points", "/v1/audit", key=other_chain_key).json()["items"] == []


def test_a_dead_letter_can_be_discarded_once(api: Api, stack: Any) -> None:
    purchase = _purchase(str(uuid.uuid4()), 10_000)
    publish_events(stack.broker.bootstrap, [purchase])
    parked = eventually(lambda: _parked(api, purchase.id), timeout=60)
    r = api.post("points", f"/v1/dead-letters/{parked['dead_letter_id']}/discard", key=OPS)
    assert r.status_code == 200 and r.json()["status"] == "discarded" and r.json()["resolved_by"]
    assert api.post("points", f"/v1/dead-letters/{parked['dead_letter_id']}/discard", key=OPS).status_code == 409
    assert api.post("points", f"/v1/dead-letters/{parked['dead_letter_id']}/redrive", key=OPS).status_code == 409


def test_a_bad_cursor_is_a_422_problem(api: Api) -> None:
    r = api.get("points", "/v1/dead-letters", key=OPS, params={"cursor": "not-a-cursor"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


def test_a_schema_behind_the_code_is_retried_not_dead_lettered(api: Api, stack: Any) -> None:
    """A rolling upgrade: the worker runs before its migration, a table it needs is missing. The error
    (UndefinedTable) is transient: the event waits and is applied once the table is there."""
    mid = api.enrol()["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points", key=APP).status_code == 200)
    dsn = stack.settings().asyncpg_dsn

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(sql("ALTER TABLE points.behaviour_months RENAME TO behaviour_months_upgrading"))
    try:
        activity = new_event(
            ActivityRecorded(
                activity_id=str(uuid.uuid4()),
                kind="lecture",
                clinic_id="clinic-1",
                occurred_at=datetime.now(UTC),
                member_id=mid,
            ),
            member_id=mid,
            chain_id=CHAIN,
        )
        publish_events(stack.broker.bootstrap, [activity])

        async def attempts_seen() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM points.inbox WHERE event_id = $1", activity.id))
            finally:
                await conn.close()

        # long enough for several attempts: with dead-lettering after 3, it would be parked by now
        asyncio.run(asyncio.sleep(4))
        assert asyncio.run(attempts_seen()) == 0
        r = api.get("points", "/v1/dead-letters", key=OPS, params={"type": "ActivityRecorded"})
        assert all(d["event_id"] != activity.id for d in r.json()["items"])
    finally:
        asyncio.run(sql("ALTER TABLE points.behaviour_months_upgrading RENAME TO behaviour_months"))
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points", key=APP).json()["balance"] > 0, timeout=60)
    r = api.get("points", "/v1/dead-letters", key=OPS, params={"type": "ActivityRecorded"})
    assert all(d["event_id"] != activity.id for d in r.json()["items"])
