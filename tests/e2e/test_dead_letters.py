"""Dead letters an operator can act on: a poison event is parked in the consumer's schema, listed,
re-driven once its cause is fixed and applied exactly once; another chain sees none of it; and a
schema behind the code (a rolling upgrade) is waited out, not dead-lettered."""

from __future__ import annotations

import asyncio
import json
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


#: a rolling upgrade's two ways of being behind: a table the code reads is not there yet (SQLSTATE 42P01),
#: a column it reads is not there yet (42703); each with the SQL that makes it so, the SQL that brings
#: the schema up to date, and what PostgreSQL says meanwhile
SCHEMA_BEHIND = {
    "missing table (42P01)": (
        "ALTER TABLE points.behaviour_months RENAME TO behaviour_months_upgrading",
        "ALTER TABLE points.behaviour_months_upgrading RENAME TO behaviour_months",
        'relation "points.behaviour_months" does not exist',
    ),
    "missing column (42703)": (
        "ALTER TABLE points.behaviour_months RENAME COLUMN awarded TO awarded_upgrading",
        "ALTER TABLE points.behaviour_months RENAME COLUMN awarded_upgrading TO awarded",
        "column behaviour_months.awarded does not exist",
    ),
}


@pytest.mark.parametrize("case", list(SCHEMA_BEHIND))
def test_a_schema_behind_the_code_is_retried_not_dead_lettered(api: Api, stack: Any, case: str) -> None:
    """A rolling upgrade: the worker runs before its migration, a table or column it needs is missing.
    The error (42P01/42703, shared.consumer.TRANSIENT_SQLSTATES) is transient: the worker keeps trying
    (more often than the dead-lettering threshold, as its log shows), nothing is dead-lettered or
    recorded in the inbox meanwhile, and once the schema is up to date the event is applied once."""
    behind, restore, says = SCHEMA_BEHIND[case]
    mid = api.enrol()["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points", key=APP).status_code == 200)
    dsn = stack.settings().asyncpg_dsn
    worker_log = stack.log_dir / "points-worker.log"

    async def sql(statement: str, *args: Any) -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(statement, *args)
        finally:
            await conn.close()

    def count(table: str, event_id: str) -> int:
        return int(asyncio.run(sql(f"SELECT count(*) FROM points.{table} WHERE event_id = $1", event_id)))

    def retries_since(offset: int) -> int:
        """The worker's log lines (JSON) since ``offset`` that retry a batch for the schema's lag."""
        with open(worker_log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        logged = [json.loads(line) for line in lines if line.startswith("{")]
        return sum(
            1 for r in logged if r.get("msg") == "transient failure applying a batch; retrying" and says in r["error"]
        )

    max_attempts = stack.settings().consumer_max_attempts
    ledger_before = api.get("points", f"/v1/members/{mid}/points/ledger", key=APP).json()["items"]
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
    asyncio.run(sql(behind))
    try:
        offset = worker_log.stat().st_size
        publish_events(stack.broker.bootstrap, [activity])
        # the worker met the missing table/column, more times than it would try a failing event before
        # dead-lettering it; all the while the event is neither applied, nor in the inbox, nor parked
        eventually(lambda: retries_since(offset) > max_attempts, timeout=60)
        assert count("inbox", activity.id) == 0
        assert count("dead_letters", activity.id) == 0
        ledger = api.get("points", f"/v1/members/{mid}/points/ledger", key=APP).json()["items"]
        assert ledger == ledger_before
    finally:
        asyncio.run(sql(restore))

    # the schema is up to date: the same delivery goes through, once
    def ledger_moved() -> bool:
        return api.get("points", f"/v1/members/{mid}/points/ledger", key=APP).json()["items"] != ledger_before

    eventually(ledger_moved, timeout=60)
    stack.wait_settled()
    ledger = api.get("points", f"/v1/members/{mid}/points/ledger", key=APP).json()["items"]
    new = [e for e in ledger if e not in ledger_before]
    assert len(new) == 1 and new[0]["delta"] > 0, ledger
    assert count("inbox", activity.id) == 1 and count("dead_letters", activity.id) == 0
    awarded = asyncio.run(sql("SELECT sum(awarded) FROM points.behaviour_months WHERE member_id = $1", mid))
    assert awarded == new[0]["delta"]  # the month's behaviour points counted once
    balance = api.get("points", f"/v1/members/{mid}/points", key=APP).json()["balance"]
    assert balance == sum(e["delta"] for e in ledger)
