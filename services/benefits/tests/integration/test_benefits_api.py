"""Benefits through its HTTP API and its consumer, against the real PostgreSQL and broker.

Members are enrolled through enrollment; tier changes and referrals are put straight on the
broker, as tiering's and enrollment's relays would, so benefits is tested on its own.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.stack import Stack
from shared.events import ReferralCompleted, TierChanged, new_event
from tests.helpers import APP, POS, Api, eventually, is_problem, publish_events

# this service's consumers on their own (with enrollment's intake): other services' reactions to the
# same events would otherwise change what is asserted. The e2e tests run all five together.
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "benefits")]
CHAIN = "demo-chain"


def benefits(api: Api, member_id: str, **params: Any) -> list[dict[str, Any]]:
    r = api.get("benefits", f"/v1/members/{member_id}/benefits", key=POS, params=params or None)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def active(api: Api, member_id: str) -> dict[str, dict[str, Any]]:
    """The member's active benefits by code (at most one active per code)."""
    items = benefits(api, member_id, status="active")
    by_code = {b["code"]: b for b in items}
    assert len(by_code) == len(items), items
    return by_code


def enrolled(api: Api) -> str:
    member_id = api.enrol()["member_id"]
    eventually(lambda: "priority_booking" in active(api, member_id))
    return member_id


def tier_changed(member_id: str, from_tier: str, to_tier: str, at: datetime) -> Any:
    direction = (
        "up"
        if ["member", "silver", "gold", "diamond"].index(to_tier)
        > ["member", "silver", "gold", "diamond"].index(from_tier)
        else "down"
    )
    return new_event(
        TierChanged(
            from_tier=from_tier,
            to_tier=to_tier,
            direction=direction,
            reason="qualified" if direction == "up" else "review",
            policy_version=1,
            effective_at=at,
            review_at=at + timedelta(days=365),
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )


def redeem(api: Api, member_id: str, benefit_id: str, key: str | None = None, clinic_id: str = "clinic-1") -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return api.post(
        "benefits",
        f"/v1/members/{member_id}/benefits/{benefit_id}/redemptions",
        {"clinic_id": clinic_id},
        key=APP,
        headers=headers,
    )


def discount(api: Api, member_id: str) -> dict[str, Any]:
    r = api.get("benefits", f"/v1/members/{member_id}/discount", key=APP)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_enrolled_member_gets_priority_booking_and_pays_full_price(api: Api) -> None:
    member_id = api.enrol()["member_id"]
    held = eventually(lambda: active(api, member_id) if "priority_booking" in active(api, member_id) else None)
    assert set(held) == {"priority_booking", "discount_percent"}
    assert held["priority_booking"]["remaining_uses"] is None and held["priority_booking"]["valid_until"] is None
    assert held["discount_percent"]["percent"] == 100
    assert discount(api, member_id) == {"discount_percent": 100, "tier": "member"}


def test_tier_changes_grant_the_new_tiers_benefits_and_a_downgrade_revokes_the_rest(api: Api, stack: Stack) -> None:
    member_id = enrolled(api)
    booking_id = active(api, member_id)["priority_booking"]["benefit_id"]
    t = datetime.now(UTC)
    publish_events(stack.broker.bootstrap, [tier_changed(member_id, "member", "silver", t)])
    eventually(lambda: "annual_skin_check" in active(api, member_id))
    assert discount(api, member_id) == {"discount_percent": 95, "tier": "silver"}
    silver = active(api, member_id)
    assert silver["priority_booking"]["benefit_id"] == booking_id  # kept, not granted again
    assert silver["annual_skin_check"]["remaining_uses"] == 1

    publish_events(stack.broker.bootstrap, [tier_changed(member_id, "silver", "gold", t + timedelta(seconds=1))])
    eventually(lambda: "dedicated_doctor" in active(api, member_id))
    assert discount(api, member_id)["discount_percent"] == 85
    doctor_id = active(api, member_id)["dedicated_doctor"]["benefit_id"]

    publish_events(stack.broker.bootstrap, [tier_changed(member_id, "gold", "silver", t + timedelta(seconds=2))])
    eventually(lambda: "dedicated_doctor" not in active(api, member_id))
    assert {b["benefit_id"]: b["status"] for b in benefits(api, member_id)}[doctor_id] == "revoked"
    assert set(active(api, member_id)) == {"priority_booking", "discount_percent", "annual_skin_check"}
    assert active(api, member_id)["annual_skin_check"]["benefit_id"] == silver["annual_skin_check"]["benefit_id"]
    assert discount(api, member_id) == {"discount_percent": 95, "tier": "silver"}
    is_problem(redeem(api, member_id, doctor_id), 409)

    skin_id = silver["annual_skin_check"]["benefit_id"]
    first = redeem(api, member_id, skin_id)
    assert first.status_code == 201, first.text
    assert first.json()["benefit_id"] == skin_id and first.json()["code"] == "annual_skin_check"
    assert first.json()["remaining_uses"] == 0
    assert is_problem(redeem(api, member_id, skin_id), 409)["benefit_status"] == "used"
    assert {b["benefit_id"]: b["status"] for b in benefits(api, member_id)}[skin_id] == "used"


def test_the_same_tier_change_delivered_twice_grants_once(api: Api, stack: Stack) -> None:
    member_id = enrolled(api)
    t = datetime.now(UTC)
    upgrade = tier_changed(member_id, "member", "silver", t)
    publish_events(stack.broker.bootstrap, [upgrade, upgrade])
    # the same facts again under a new event id (a replay upstream) grant nothing either
    replay = new_event(upgrade.data, member_id=member_id, chain_id=CHAIN)
    publish_events(
        stack.broker.bootstrap, [upgrade, replay, tier_changed(member_id, "silver", "gold", t + timedelta(seconds=1))]
    )
    eventually(lambda: "dedicated_doctor" in active(api, member_id))  # same partition: everything before is applied
    assert [b["code"] for b in benefits(api, member_id)].count("annual_skin_check") == 1


def test_an_unlimited_benefit_is_redeemed_repeatedly_and_an_idempotency_key_replays_the_first(api: Api) -> None:
    member_id = enrolled(api)
    booking_id = active(api, member_id)["priority_booking"]["benefit_id"]
    key = str(uuid.uuid4())
    first, again = redeem(api, member_id, booking_id, key), redeem(api, member_id, booking_id, key)
    assert first.status_code == again.status_code == 201, first.text
    assert first.json()["redemption_id"] == again.json()["redemption_id"]
    assert first.json()["remaining_uses"] is None
    other = redeem(api, member_id, booking_id)
    assert other.status_code == 201 and other.json()["redemption_id"] != first.json()["redemption_id"]
    is_problem(redeem(api, member_id, booking_id, key, clinic_id="clinic-2"), 409)
    assert active(api, member_id)["priority_booking"]["status"] == "active"


def test_referrals_reward_the_referrer_with_a_voucher_and_the_third_with_the_milestone_one(
    api: Api, stack: Stack
) -> None:
    referrer = enrolled(api)
    referees = [enrolled(api) for _ in range(3)]
    now = datetime.now(UTC)
    publish_events(
        stack.broker.bootstrap,
        [
            new_event(
                ReferralCompleted(
                    referrer_id=referrer,
                    referee_id=referee,
                    purchase_id=str(uuid.uuid4()),
                    completed_at=now,
                    referral_count=n,
                ),
                member_id=referrer,
                chain_id=CHAIN,
            )
            for n, referee in enumerate(referees, start=1)
        ],
    )

    def vouchers() -> list[dict[str, Any]]:
        found = [b for b in benefits(api, referrer) if b["code"] == "referral_voucher"]
        assert len(found) == 3
        return found

    found = eventually(vouchers)
    assert sorted(v["value_fen"] for v in found) == [50_000, 50_000, 100_000]
    assert all(v["remaining_uses"] == 1 and v["tier"] is None and v["status"] == "active" for v in found)
    welcome = eventually(lambda: active(api, referees[2])["welcome_skin_check"])
    assert welcome["remaining_uses"] == 1

    # vouchers are not tier-bound: an upgrade and a downgrade leave them alone
    publish_events(
        stack.broker.bootstrap,
        [
            tier_changed(referrer, "member", "gold", now),
            tier_changed(referrer, "gold", "member", now + timedelta(seconds=1)),
        ],
    )
    eventually(
        lambda: (
            discount(api, referrer)["tier"] == "member"
            and "dedicated_doctor" in {b["code"] for b in benefits(api, referrer, status="revoked")}
        )
    )
    assert len([b for b in benefits(api, referrer, status="active") if b["code"] == "referral_voucher"]) == 3


def test_another_members_benefit_or_an_unknown_member_is_not_found(api: Api) -> None:
    alice, bob = enrolled(api), enrolled(api)
    alices_booking = active(api, alice)["priority_booking"]["benefit_id"]
    is_problem(redeem(api, bob, alices_booking), 404)
    is_problem(redeem(api, alice, str(uuid.uuid4())), 404)
    is_problem(api.get("benefits", f"/v1/members/{uuid.uuid4()}/benefits", key=POS), 404)
    is_problem(api.get("benefits", f"/v1/members/{uuid.uuid4()}/discount", key=APP), 404)


def test_another_chains_key_sees_no_member(api: Api, stack: Stack) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.platform import add_api_key, upsert_chain

    member_id = enrolled(api)
    booking_id = active(api, member_id)["priority_booking"]["benefit_id"]

    async def other_chain_key() -> str:
        engine = create_async_engine(stack.settings().database_url)
        try:
            await upsert_chain(engine, "other-chain", "Other Clinics")
            return await add_api_key(engine, "other-chain", ["app", "pos"], name="benefits-test")
        finally:
            await engine.dispose()

    other = asyncio.run(other_chain_key())
    is_problem(api.get("benefits", f"/v1/members/{member_id}/benefits", key=other), 404)
    is_problem(api.get("benefits", f"/v1/members/{member_id}/discount", key=other), 404)
    is_problem(
        api.post(
            "benefits", f"/v1/members/{member_id}/benefits/{booking_id}/redemptions", {"clinic_id": "c"}, key=other
        ),
        404,
    )


def test_bad_requests_are_problems_and_change_nothing(api: Api) -> None:
    member_id = enrolled(api)
    booking_id = active(api, member_id)["priority_booking"]["benefit_id"]
    path = f"/v1/members/{member_id}/benefits/{booking_id}/redemptions"
    is_problem(api.post("benefits", path, {"clinic_id": "c", "extra": 1}, key=APP), 422)
    is_problem(api.post("benefits", path, {}, key=APP), 422)
    is_problem(api.get("benefits", f"/v1/members/{member_id}/benefits", key=POS, params={"status": "gone"}), 422)
    is_problem(api.get("benefits", f"/v1/members/{member_id}/benefits", key=None), 401)
    is_problem(api.post("benefits", path, {"clinic_id": "c"}, key="not-a-key"), 401)


def test_a_benefit_past_its_validity_is_expired_cannot_be_redeemed_and_is_swept(api: Api, stack: Stack) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    referrer, referee = enrolled(api), enrolled(api)
    long_ago = datetime.now(UTC) - timedelta(days=366)
    publish_events(
        stack.broker.bootstrap,
        [
            new_event(
                ReferralCompleted(
                    referrer_id=referrer,
                    referee_id=referee,
                    purchase_id=str(uuid.uuid4()),
                    completed_at=long_ago,
                    referral_count=1,
                ),
                member_id=referrer,
                chain_id=CHAIN,
            )
        ],
    )
    welcome = eventually(lambda: next((b for b in benefits(api, referee) if b["code"] == "welcome_skin_check"), None))
    assert welcome["status"] == "expired"
    assert "welcome_skin_check" not in active(api, referee)
    assert is_problem(redeem(api, referee, welcome["benefit_id"]), 409)["benefit_status"] == "expired"

    async def stored_status() -> str:
        engine = create_async_engine(stack.settings().database_url)
        try:
            async with engine.connect() as conn:
                return str(
                    await conn.scalar(
                        text("SELECT status FROM benefits.entitlements WHERE benefit_id = :b"),
                        {"b": welcome["benefit_id"]},
                    )
                )
        finally:
            await engine.dispose()

    eventually(lambda: asyncio.run(stored_status()) == "expired")  # the worker's sweep, every second in tests
