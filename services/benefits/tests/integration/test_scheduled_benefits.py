"""Scheduled and per-purchase benefits, and per-chain policies, through the API and the real broker.

Birthday vouchers are granted by the ops run at a chosen instant in a future year, for members
born in a month the worker's real-time schedule leaves alone. Tier changes and policy changes
are put straight on the broker, as tiering's relay would; purchases go through enrollment.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.stack import Stack
from shared.events import PolicyChanged, TierChanged, new_event
from shared.policy import DEFAULT_POLICY, BenefitRule
from tests.helpers import APP, OPS, POS, Api, eventually, is_problem, publish_events

# this service's consumers on their own (with enrollment's intake): other services' reactions to the
# same events would otherwise change what is asserted. The e2e tests run all five together.
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "benefits")]
CHAIN = "demo-chain"
SHANGHAI = ZoneInfo("Asia/Shanghai")
RANK = ["member", "silver", "gold", "diamond"]


def items(api: Api, member_id: str, code: str | None = None) -> list[dict[str, Any]]:
    r = api.get("benefits", f"/v1/members/{member_id}/benefits", key=POS)
    assert r.status_code == 200, r.text
    return [b for b in r.json()["items"] if code is None or b["code"] == code]


def active_codes(api: Api, member_id: str) -> set[str]:
    return {b["code"] for b in items(api, member_id) if b["status"] == "active"}


def discount(api: Api, member_id: str) -> dict[str, Any]:
    r = api.get("benefits", f"/v1/members/{member_id}/discount", key=APP)
    assert r.status_code == 200, r.text
    return r.json()


def enrolled(api: Api, birthday: str = "1990-06-15") -> str:
    member_id = api.enrol(birthday=birthday)["member_id"]
    eventually(lambda: "priority_booking" in active_codes(api, member_id))
    return member_id


def tier_changed(member_id: str, from_tier: str, to_tier: str, at: datetime, *, reason: str | None = None) -> Any:
    step = RANK.index(to_tier) - RANK.index(from_tier)
    direction = "up" if step > 0 else "down" if step < 0 else "none"
    return new_event(
        TierChanged(
            from_tier=from_tier,
            to_tier=to_tier,
            direction=direction,
            reason=reason or ("qualified" if direction == "up" else "review"),
            policy_version=1,
            effective_at=at,
            review_at=at + timedelta(days=365),
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )


def promoted(api: Api, stack: Stack, member_id: str, tier: str, at: datetime | None = None) -> None:
    publish_events(stack.broker.bootstrap, [tier_changed(member_id, "member", tier, at or datetime.now(UTC))])
    eventually(lambda: discount(api, member_id)["tier"] == tier)


def run_birthdays(api: Api, as_of: datetime) -> dict[str, Any]:
    r = api.post("benefits", "/v1/benefits/schedules/run", {"as_of": as_of.isoformat()}, key=OPS)
    assert r.status_code == 200, r.text
    return r.json()


def quiet_birth_month() -> int:
    """A birth month neither the worker's real-time schedule (this month and last) nor the other tests'
    June birthdays touch, with a following month that is quiet too (for the member born in another month)."""
    now = datetime.now(SHANGHAI)
    busy = {now.month, (now.month - 2) % 12 + 1, 6, 7}
    return next(m for m in range(1, 13) if {(m - 2) % 12 + 1, m, m % 12 + 1}.isdisjoint(busy))


def sql_scalar(stack: Stack, query: str, **params: Any) -> Any:
    async def go() -> Any:
        engine = create_async_engine(stack.settings().database_url)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(text(query), params)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def purchase_applied(stack: Stack, purchase_id: str) -> bool:
    """Whether benefits' consumer has applied enrollment's PurchaseRecorded of this purchase."""
    return bool(
        sql_scalar(
            stack,
            """
        SELECT count(*) FROM benefits.inbox i JOIN enrollment.outbox o ON o.event_id = i.event_id
        WHERE o.event_type = 'PurchaseRecorded' AND (o.payload::jsonb) -> 'data' ->> 'purchase_id' = :p""",
            p=purchase_id,
        )
    )


# ---- birthday vouchers --------------------------------------------------------------------------


def test_the_ops_run_grants_one_birthday_voucher_however_often_and_concurrently_it_runs(api: Api) -> None:
    month = quiet_birth_month()
    born_now = enrolled(api, birthday=date(1991, month, 10).isoformat())
    born_later = enrolled(api, birthday=date(1991, month % 12 + 1, 10).isoformat())
    as_of = datetime(2030, month, 10, 4, 0, tzinfo=UTC)  # the 10th, local noon: a late grant

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: run_birthdays(Api(api.urls), as_of), range(2)))
    assert sorted(r["granted"] for r in runs)[0] == 0 and sum(r["granted"] for r in runs) >= 1
    assert datetime.fromisoformat(runs[0]["as_of"]) == as_of
    assert run_birthdays(api, as_of)["granted"] == 0
    assert run_birthdays(api, as_of + timedelta(days=5))["granted"] == 0  # later in the month: still one a year

    [voucher] = items(api, born_now, "birthday_voucher")
    assert (voucher["period"], voucher["value_fen"], voucher["remaining_uses"], voucher["kind"], voucher["tier"]) == (
        "2030",
        DEFAULT_POLICY.birthday_voucher_fen,
        1,
        "voucher",
        None,
    )
    assert datetime.fromisoformat(voucher["valid_from"]) == as_of
    assert datetime.fromisoformat(voucher["valid_until"]) == as_of + timedelta(days=31)
    assert items(api, born_later, "birthday_voucher") == []


def test_the_schedule_run_needs_an_ops_key_and_a_valid_instant(api: Api) -> None:
    is_problem(api.post("benefits", "/v1/benefits/schedules/run", {}, key=APP), 403)
    is_problem(api.post("benefits", "/v1/benefits/schedules/run", {"as_of": "2030-01-01T00:00:00"}, key=OPS), 422)
    is_problem(api.post("benefits", "/v1/benefits/schedules/run", {"as_of": "soon"}, key=OPS), 422)
    r = api.post("benefits", "/v1/benefits/schedules/run", None, key=OPS)
    assert r.status_code == 200 and r.json()["granted"] >= 0, r.text


# ---- care packs ---------------------------------------------------------------------------------


def test_a_gold_members_5000_yuan_purchase_earns_a_care_pack_and_a_4999_yuan_one_does_not(
    api: Api, stack: Stack
) -> None:
    member_id = enrolled(api)
    promoted(api, stack, member_id, "gold")
    small = api.purchase(member_id, 499_900)["purchase_id"]
    large = api.purchase(member_id, 500_000)["purchase_id"]
    [pack] = eventually(lambda: items(api, member_id, "care_pack") or None)
    # one partition per member: the smaller purchase was applied before the larger one
    assert purchase_applied(stack, small)
    assert (pack["period"], pack["remaining_uses"], pack["tier"], pack["status"]) == (large, 1, "gold", "active")
    assert datetime.fromisoformat(pack["valid_until"]) - datetime.fromisoformat(pack["valid_from"]) == timedelta(
        days=90
    )
    assert len(items(api, member_id, "care_pack")) == 1


def test_a_silver_members_5000_yuan_purchase_earns_no_care_pack(api: Api, stack: Stack) -> None:
    member_id = enrolled(api)
    promoted(api, stack, member_id, "silver")
    purchase_id = api.purchase(member_id, 1_000_000)["purchase_id"]
    eventually(lambda: purchase_applied(stack, purchase_id))
    assert items(api, member_id, "care_pack") == []


def test_a_care_pack_depends_on_the_tier_held_when_the_purchase_was_made_not_on_which_event_came_first(
    api: Api, stack: Stack
) -> None:
    # the upgrade arrives after a purchase made under it: the purchase is judged again and earns a pack
    late = enrolled(api)
    upgraded_at = datetime.now(UTC)
    purchase_id = api.purchase(late, 600_000)["purchase_id"]
    eventually(lambda: purchase_applied(stack, purchase_id))
    assert items(api, late, "care_pack") == []  # benefits knew no gold yet
    promoted(api, stack, late, "gold", at=upgraded_at)
    [pack] = eventually(lambda: items(api, late, "care_pack") or None)
    assert (pack["period"], pack["tier"]) == (purchase_id, "gold")
    # the upgrade arrives first but took effect after the purchase was made: that purchase earns none
    early = enrolled(api)
    bought_at = datetime.now(UTC)
    promoted(api, stack, early, "gold", at=bought_at + timedelta(milliseconds=1))
    before = api.purchase(early, 600_000, occurred_at=bought_at)["purchase_id"]
    after = api.purchase(early, 600_000)["purchase_id"]
    eventually(lambda: purchase_applied(stack, before) and purchase_applied(stack, after))
    stack.wait_settled()
    assert [p["period"] for p in items(api, early, "care_pack")] == [after]
    # a replay of the upgrade changes nothing
    publish_events(stack.broker.bootstrap, [tier_changed(late, "member", "gold", upgraded_at)])
    stack.wait_settled()
    assert len(items(api, late, "care_pack")) == 1


# ---- tier-years ---------------------------------------------------------------------------------


def test_a_review_that_keeps_silver_grants_the_next_tier_years_skin_check_exactly_once(api: Api, stack: Stack) -> None:
    member_id = enrolled(api)
    now = datetime.now(UTC)  # the member was just enrolled: an earlier tier change would be stale
    promoted(api, stack, member_id, "silver", now)
    [first] = eventually(lambda: items(api, member_id, "annual_skin_check") or None)
    review_at = now + timedelta(days=2)  # another local day than the tier-year before, whatever the hour
    review = tier_changed(member_id, "silver", "silver", review_at, reason="review")
    replay = new_event(review.data, member_id=member_id, chain_id=CHAIN)  # the same facts, a new event id
    # the gold upgrade after them, on the same partition, shows when everything before it was applied
    publish_events(
        stack.broker.bootstrap,
        [review, review, replay, tier_changed(member_id, "silver", "gold", review_at + timedelta(hours=1))],
    )
    eventually(lambda: "dedicated_doctor" in active_codes(api, member_id))

    checks = {b["benefit_id"]: b for b in items(api, member_id, "annual_skin_check")}
    assert len(checks) == 2, checks
    assert checks[first["benefit_id"]]["status"] == "expired"  # last tier-year's, unused: replaced
    [fresh] = [b for b in checks.values() if b["benefit_id"] != first["benefit_id"]]
    assert fresh["status"] == "active" and fresh["remaining_uses"] == 1
    assert fresh["period"] == review_at.astimezone(SHANGHAI).date().isoformat()
    assert datetime.fromisoformat(fresh["valid_from"]) == review_at


def test_a_chain_in_los_angeles_begins_its_tier_years_on_its_own_local_day(api: Api, stack: Stack) -> None:
    from shared.platform import add_api_key, upsert_chain

    chain_id = f"la-{uuid.uuid4().hex[:8]}"

    async def la_chain_key() -> str:
        engine = create_async_engine(stack.settings().database_url)
        try:
            await upsert_chain(engine, chain_id, "Los Angeles Clinics", timezone="America/Los_Angeles")
            return await add_api_key(engine, chain_id, ["app", "pos"], name=f"{chain_id}-app")
        finally:
            await engine.dispose()

    key = asyncio.run(la_chain_key())

    def la_items(member_id: str, code: str | None = None) -> list[dict[str, Any]]:
        r = api.get("benefits", f"/v1/members/{member_id}/benefits", key=key)
        assert r.status_code == 200, r.text
        return [b for b in r.json()["items"] if code is None or b["code"] == code]

    body = {"phone": "139" + str(uuid.uuid4().int)[:8], "name": "LA", "birthday": "1990-06-15"}
    r = api.post("enrollment", "/v1/members", {**body, "home_clinic_id": "la-1", "source": "walk_in"}, key=key)
    assert r.status_code == 201, r.text
    member_id = r.json()["member_id"]
    eventually(lambda: la_items(member_id, "priority_booking") or None)
    # 02:00 UTC tomorrow (after the enrolment, so not stale): 19:00 the day before in Los Angeles,
    # 10:00 in Shanghai: the tier-year's first local day is the Los Angeles one
    at = (datetime.now(UTC) + timedelta(days=1)).replace(hour=2, minute=0, second=0, microsecond=0)
    la_day = at.astimezone(ZoneInfo("America/Los_Angeles")).date()
    assert la_day != at.astimezone(SHANGHAI).date()
    upgrade = tier_changed(member_id, "member", "silver", at)
    publish_events(stack.broker.bootstrap, [new_event(upgrade.data, member_id=member_id, chain_id=chain_id)])

    [check] = eventually(lambda: la_items(member_id, "annual_skin_check") or None)
    assert check["period"] == la_day.isoformat()
    assert check["status"] == "active" and check["remaining_uses"] == 1 and check["tier"] == "silver"
    assert datetime.fromisoformat(check["valid_from"]) == at
    assert datetime.fromisoformat(check["valid_until"]) == at + timedelta(days=365)
    # the chain's key sees its member; the demo chain's does not
    is_problem(api.get("benefits", f"/v1/members/{member_id}/benefits", key=POS), 404)


# ---- per-chain policy (last: it changes the chain's programme for a moment) ----------------------


def policy_event(version: int, *, silver_percent: int, birthday_voucher_fen: int) -> Any:
    silver = [
        BenefitRule(code="discount_percent", kind="discount", percent=silver_percent) if r.kind == "discount" else r
        for r in DEFAULT_POLICY.benefits["silver"]
    ]
    policy = DEFAULT_POLICY.model_copy(
        update={
            "version": version,
            "birthday_voucher_fen": birthday_voucher_fen,
            "benefits": {**DEFAULT_POLICY.benefits, "silver": silver},
        }
    )
    return new_event(
        PolicyChanged(version=version, policy=policy.model_dump(mode="json"), changed_at=datetime.now(UTC)),
        member_id=f"chain:{CHAIN}",
        chain_id=CHAIN,
    )


def test_a_policy_change_sets_the_silver_discount_and_the_birthday_vouchers_value(api: Api, stack: Stack) -> None:
    month = quiet_birth_month()
    member_id = enrolled(api, birthday=date(1988, month, 20).isoformat())
    promoted(api, stack, member_id, "silver")
    assert discount(api, member_id) == {"discount_percent": 95, "tier": "silver"}
    version = 1_000 + uuid.uuid4().int % 1_000_000
    publish_events(stack.broker.bootstrap, [policy_event(version, silver_percent=90, birthday_voucher_fen=66_600)])
    try:
        eventually(lambda: discount(api, member_id) == {"discount_percent": 90, "tier": "silver"})
        as_of = datetime(2031, month, 1, 0, 0, tzinfo=SHANGHAI)
        assert run_birthdays(api, as_of)["granted"] >= 1
        [voucher] = items(api, member_id, "birthday_voucher")
        assert (voucher["period"], voucher["value_fen"]) == ("2031", 66_600)
        # on time (the first local day of the month): valid to the end of the birth month
        end = datetime(2031 + month // 12, month % 12 + 1, 1, tzinfo=SHANGHAI)
        assert datetime.fromisoformat(voucher["valid_until"]) == end
    finally:
        publish_events(
            stack.broker.bootstrap,
            [policy_event(version + 1, silver_percent=95, birthday_voucher_fen=DEFAULT_POLICY.birthday_voucher_fen)],
        )
        eventually(lambda: discount(api, member_id)["discount_percent"] == 95)
