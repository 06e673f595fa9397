"""Rebuilding enrollment's member status view from the services that own its parts (SPEC §7):
``membershipctl rebuild status-view`` run as a command against the suite's running platform.

The view is corrupted on purpose in the database (a wrong balance, a wrong tier, a benefit removed,
a bogus one added, a member's row deleted); after the command the view of every member says what
points, tiering and benefits say. A rebuild with another chain's key touches only that chain's members.
The snapshot endpoints it pages through are attacked directly: keys without ``ops``, bad bodies.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.e2e.test_membershipctl import ctl
from tests.helpers import APP, OPS, POS, Api, eventually, is_problem

pytestmark = pytest.mark.e2e

OWNERS = {"points": "PointsSnapshot", "tiering": "TierSnapshot", "benefits": "BenefitsSnapshot"}
SILVER_FEN = 6_000_000  # 60,000 yuan: silver (50,000 needed), not gold


def sql(stack: Any, statement: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stack.settings().asyncpg_dsn)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def owners_say(api: Api, member_id: str, key: str) -> dict[str, Any]:
    """What the status view should show of the member: the owners' answers, in the view's shape."""
    points = api.get("points", f"/v1/members/{member_id}/points", key=key).json()
    tier = api.get("tiering", f"/v1/members/{member_id}/tier", key=key).json()
    items = api.get("benefits", f"/v1/members/{member_id}/benefits", key=key).json()["items"]
    now = datetime.now(UTC)
    horizon = (now + timedelta(days=90)).date()
    return {
        "tier": {
            "code": tier["code"],
            "name": tier["name"],
            "since": at(tier["since"]),
            "review_at": at(tier["review_at"]),
        },
        "progress": tier["progress"],
        "points": {
            "balance": points["balance"],
            "available": points["available"],
            "pending": points["pending"],
            "expiring": [e for e in points["expiring"] if date.fromisoformat(e["expires_on"]) <= horizon],
        },
        "benefits": sorted(
            (b["benefit_id"], b["code"], b["remaining_uses"], at(b["valid_until"])) for b in items if shown(b, now)
        ),
    }


def shown(benefit: dict[str, Any], now: datetime) -> bool:
    """Granted and not ended: an active benefit, or a used-up one until its validity ends."""
    until = at(benefit["valid_until"])
    return benefit["status"] == "active" or (benefit["status"] == "used" and (until is None or until > now))


def view_says(api: Api, member_id: str, key: str) -> dict[str, Any]:
    view = api.get("enrollment", f"/v1/members/{member_id}/status", key=key).json()
    t = view["tier"]
    return {
        "tier": {"code": t["code"], "name": t["name"], "since": at(t["since"]), "review_at": at(t["review_at"])},
        "progress": view["progress"],
        "points": view["points"],
        "benefits": sorted(
            (b["benefit_id"], b["code"], b["remaining_uses"], at(b["valid_until"])) for b in view["benefits"]
        ),
    }


def agrees(api: Api, member_id: str, key: str = OPS) -> bool:
    view, owners = view_says(api, member_id, key), owners_say(api, member_id, key)
    assert view == owners, f"{member_id}: the view says {view}, the owners say {owners}"
    return True


def stored_row(stack: Any, member_id: str) -> dict[str, Any] | None:
    rows = sql(
        stack, "SELECT tier, progress, points, benefits FROM enrollment.member_status WHERE member_id = $1", member_id
    )
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in rows[0].items()} if rows else None


def snapshots_of(stack: Any, member_id: str) -> dict[str, int]:
    """How many snapshot events each owner's outbox ever held for the member."""
    return {
        s: int(sql(stack, f"SELECT count(*) FROM {s}.outbox WHERE event_type = $1 AND key = $2", t, member_id)[0][0])
        for s, t in OWNERS.items()
    }


def member_with_history(api: Api, amount_fen: int, *, key: str = APP, pos: str = POS) -> str:
    member_id = api.enrol()["member_id"] if key == APP else _enrol(api, key)
    r = api.post("enrollment", "/v1/purchases", _purchase(member_id, amount_fen), key=pos)
    assert r.status_code == 202, r.text
    return member_id


def _enrol(api: Api, key: str) -> str:
    body = {
        "phone": "137" + str(uuid.uuid4().int)[:8],
        "name": "另一会员",
        "birthday": "1991-03-04",
        "home_clinic_id": "clinic-1",
        "source": "walk_in",
        "consents": {"marketing": False, "sms": False, "email": False},
    }
    r = api.post("enrollment", "/v1/members", body, key=key)
    assert r.status_code == 201, r.text
    return str(r.json()["member_id"])


def _purchase(member_id: str, amount_fen: int) -> dict[str, Any]:
    return {
        "pos_txn_id": f"txn-{uuid.uuid4()}",
        "clinic_id": "clinic-1",
        "member_id": member_id,
        "amount_fen": amount_fen,
        "currency": "CNY",
        "occurred_at": datetime.now(UTC).isoformat(),
        "items": [{"sku": "thermage", "category": "skin_care", "amount_fen": amount_fen, "qty": 1}],
    }


def corrupt(stack: Any, statement: str, member_id: str) -> None:
    sql(stack, statement, member_id)


def test_a_corrupted_view_is_rebuilt_to_what_the_owners_say(api: Api, stack: Any) -> None:
    silver = member_with_history(api, SILVER_FEN)  # silver: its benefits, and one of them used up
    plain = member_with_history(api, 30_000)
    deleted = member_with_history(api, 45_600)
    eventually(lambda: api.get("tiering", f"/v1/members/{silver}/tier", key=APP).json()["code"] == "silver")

    def skin_check() -> dict[str, Any]:
        items = api.get("benefits", f"/v1/members/{silver}/benefits", key=APP).json()["items"]
        found = [b for b in items if b["code"] == "annual_skin_check"]
        assert found, items
        return found[0]

    skin = eventually(skin_check, timeout=60)
    r = api.post(
        "benefits",
        f"/v1/members/{silver}/benefits/{skin['benefit_id']}/redemptions",
        {"clinic_id": "clinic-1"},
        key=POS,
    )
    assert r.status_code == 201, r.text
    members = (silver, plain, deleted)
    # the live events built a view that agrees with the owners (used-up benefits included)
    for m in members:
        eventually(lambda m=m: agrees(api, m), timeout=60)

    corrupt(
        stack,
        "UPDATE enrollment.member_status SET points = jsonb_set(points, '{balance}', '999999') WHERE member_id = $1",
        silver,
    )
    # a benefit removed: the used-up skin check; one bogus benefit added to another member
    sql(
        stack,
        "UPDATE enrollment.member_status SET benefits = benefits - $2::text WHERE member_id = $1",
        silver,
        skin["benefit_id"],
    )
    corrupt(
        stack,
        """UPDATE enrollment.member_status SET benefits = benefits || '{"bogus": {"benefit_id": "bogus",
        "code": "dedicated_doctor", "remaining_uses": null, "valid_until": null}}',
        tier = '{"code": "diamond", "name": "钻石会员", "since": "2020-01-01T00:00:00+00:00", "review_at": null}'
        WHERE member_id = $1""",
        plain,
    )
    corrupt(stack, "DELETE FROM enrollment.member_status WHERE member_id = $1", deleted)
    wrong = {m: view_says(api, m, OPS) for m in members}
    assert wrong[silver]["points"]["balance"] == 999_999
    assert skin["benefit_id"] not in {b[0] for b in wrong[silver]["benefits"]}
    assert wrong[plain]["tier"]["code"] == "diamond" and "bogus" in {b[0] for b in wrong[plain]["benefits"]}
    assert stored_row(stack, deleted) is None and wrong[deleted]["points"]["balance"] == 0

    done = ctl(stack, "--json", "rebuild", "status-view", "--page-size", "7", "--timeout", "120")
    assert done.returncode == 0, done.stderr + done.stdout
    summary = json.loads(done.stdout)
    assert summary["applied"] is True
    for s in OWNERS:
        run = summary["services"][s]
        assert run["published"] >= len(members) and run["pages"] >= 1 and run["published"] == run["total"]
    assert summary["published"] == sum(r["published"] for r in summary["services"].values())
    # the command returned once enrollment had applied the snapshots: no waiting here
    for m in members:
        agrees(api, m)
    assert stored_row(stack, deleted) is not None
    for m in members:
        assert snapshots_of(stack, m) == dict.fromkeys(OWNERS, 1)

    # each page of each owner left an audit entry
    for s in OWNERS:
        entries = api.get(s, "/v1/audit", key=OPS, params={"action": "status_view.rebuild", "limit": 500}).json()[
            "items"
        ]
        assert sum(e["after"]["published"] for e in entries) >= summary["services"][s]["published"]
        assert {e["after"]["event_type"] for e in entries} == {OWNERS[s]}
        assert all(e["target"] == "chain:demo-chain" for e in entries)

    # the human form: a table and a line, and run again it changes nothing the owners would not say
    again = ctl(stack, "rebuild", "status-view")
    assert again.returncode == 0, again.stderr
    assert "snapshots published" in again.stdout and "applied by enrollment" in again.stdout
    for m in members:
        agrees(api, m)


def test_a_rebuild_with_another_chains_key_leaves_this_chains_views_alone(
    api: Api, stack: Any, other_chain_key: str
) -> None:
    ours = member_with_history(api, SILVER_FEN)
    theirs = member_with_history(api, SILVER_FEN, key=other_chain_key, pos=other_chain_key)
    eventually(lambda: agrees(api, ours), timeout=60)
    eventually(lambda: agrees(api, theirs, other_chain_key), timeout=60)
    broken = "UPDATE enrollment.member_status SET points = jsonb_set(points, '{balance}', '-7') WHERE member_id = $1"
    corrupt(stack, broken, ours)
    corrupt(stack, broken, theirs)
    ours_before = stored_row(stack, ours)

    done = ctl(stack, "--json", "rebuild", "status-view", key=other_chain_key)
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["applied"] is True
    agrees(api, theirs, other_chain_key)
    # nothing was published about this chain's member, and its (corrupted) view is as it was
    assert snapshots_of(stack, ours) == dict.fromkeys(OWNERS, 0)
    assert stored_row(stack, ours) == ours_before
    assert view_says(api, ours, OPS)["points"]["balance"] == -7
    # every snapshot the other chain's run published is of the other chain
    for s, t in OWNERS.items():
        chains = sql(
            stack,
            f"SELECT DISTINCT payload::jsonb->>'chainid' FROM {s}.outbox WHERE event_type = $1 AND key = $2",
            t,
            theirs,
        )
        assert [r[0] for r in chains] == ["other-chain"]
    # this chain's audit shows no rebuild by the other chain
    for s in OWNERS:
        entries = api.get(s, "/v1/audit", key=other_chain_key, params={"action": "status_view.rebuild"}).json()["items"]
        assert entries and all(e["target"] == "chain:other-chain" and e["chain_id"] == "other-chain" for e in entries)


@pytest.mark.parametrize("service", list(OWNERS))
def test_the_snapshot_endpoint_refuses_keys_without_ops_and_bad_bodies_and_publishes_nothing(
    api: Api, stack: Any, service: str
) -> None:
    def published() -> int:
        return int(sql(stack, f"SELECT count(*) FROM {service}.outbox WHERE event_type = $1", OWNERS[service])[0][0])

    def audited() -> int:
        return len(api.get(service, "/v1/audit", key=OPS, params={"action": "status_view.rebuild"}).json()["items"])

    before = (published(), audited())
    path = "/v1/ops/snapshots"
    is_problem(api.post(service, path, {}, key=None), 401)
    is_problem(api.post(service, path, {}, key="not-a-key-at-all"), 401)
    is_problem(api.post(service, path, {}, key=POS), 403)
    is_problem(api.post(service, path, {}, key=APP), 403)
    for body in (
        {"limit": 0},
        {"limit": 1001},
        {"limit": -5},
        {"limit": "all"},
        {"limit": 2**70},
        {"after": ""},
        {"after": "   "},
        {"after": "x" * 201},
        {"after": "m\u0000"},
        {"after": "line\nbreak"},
        {"after": 42},
        {"after": ["a"]},
        {"chain_id": "other-chain"},  # the chain is the key's: not a field a caller may give
        [],
        "after",
    ):
        doc = is_problem(api.post(service, path, body, key=OPS), 422)
        assert doc["errors"], doc
    r = api.http.post(
        api.urls[service] + path,
        content=b"{not json",
        headers={"Authorization": f"Bearer {OPS}", "Content-Type": "application/json"},
    )
    is_problem(r, 422)
    assert (published(), audited()) == before


@pytest.mark.parametrize("service", list(OWNERS))
def test_the_snapshot_endpoint_pages_by_member_id_and_takes_any_after_as_a_cursor(
    api: Api, stack: Any, service: str
) -> None:
    for _ in range(2):
        api.enrol()
    path = "/v1/ops/snapshots"
    first = api.post(service, path, {"limit": 1}, key=OPS).json()
    assert first["published"] == 1 and first["next_after"] and first["total"] >= 2
    second = api.post(service, path, {"after": first["next_after"], "limit": 1}, key=OPS).json()
    assert second["published"] == 1 and second["next_after"] > first["next_after"] and second["total"] is None
    # past the last member: nothing, and no next page; an odd cursor is only a string to compare with
    assert api.post(service, path, {"after": "zzzzzzzz"}, key=OPS).json() == {
        "published": 0,
        "next_after": None,
        "total": None,
    }
    odd = api.post(service, path, {"after": "' OR '1'='1' --", "limit": 3}, key=OPS)
    assert odd.status_code == 200 and odd.json()["published"] == 3


#: what a change in flight holds, per owner, that its snapshot of the member must wait for
IN_FLIGHT = {
    "points": "SELECT 1 FROM points.members WHERE member_id = $1 FOR UPDATE",
    "tiering": "SELECT 1 FROM tiering.members WHERE member_id = $1 FOR UPDATE",
    "benefits": "UPDATE benefits.entitlements SET remaining_uses = 0 WHERE member_id = $1 "
    "AND code = 'annual_skin_check'",
}


@pytest.mark.parametrize("service", list(OWNERS))
def test_a_snapshot_waits_for_a_change_of_the_member_in_flight_and_carries_what_it_committed(
    api: Api, stack: Any, service: str
) -> None:
    """The race a snapshot must not lose: a change of the member is committing (its event already in the
    outbox, ahead) while the snapshot reads. The snapshot must wait for it and publish the state after
    it; reading the state before it would put an older state behind a newer event."""
    member = member_with_history(api, SILVER_FEN)
    eventually(lambda: agrees(api, member), timeout=60)
    previous = sql(
        stack,
        f"SELECT max(member_id) FROM {service}.members WHERE chain_id = 'demo-chain' AND member_id < $1",
        member,
    )[0][0]
    body = {"limit": 1, **({"after": previous} if previous else {})}
    answers: list[Any] = []

    async def race() -> None:
        conn = await asyncpg.connect(stack.settings().asyncpg_dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute(IN_FLIGHT[service], member)
            call = asyncio.create_task(asyncio.to_thread(api.post, service, "/v1/ops/snapshots", body, key=OPS))
            await asyncio.sleep(1.5)
            assert not call.done(), "the snapshot did not wait for the change in flight"
            await tx.commit()
            answers.append(await asyncio.wait_for(call, 30))
        finally:
            await conn.close()

    asyncio.run(race())
    [r] = answers
    assert r.status_code == 200 and r.json()["published"] == 1, r.text
    [payload] = [
        json.loads(row[0])
        for row in sql(
            stack,
            f"SELECT payload FROM {service}.outbox WHERE event_type = $1 AND key = $2",
            OWNERS[service],
            member,
        )
    ]
    if service == "benefits":  # the committed change is in the snapshot
        [skin] = [b for b in payload["data"]["benefits"] if b["code"] == "annual_skin_check"]
        assert skin["remaining_uses"] == 0
