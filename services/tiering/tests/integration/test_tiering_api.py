"""Tiering through its HTTP API and the real broker: qualification, upgrades, history, policy versions.

Purchases go through the enrollment API; points and refunds are put straight on the broker,
as the points service and enrollment would publish them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from shared.events import MemberEnrolled, PointsChanged, PurchaseRefunded, new_event
from shared.platform import add_api_key, upsert_chain
from shared.policy import DEFAULT_POLICY
from tests.helpers import APP, OPS, POS, Api, eventually, is_problem, publish_events
from tiering.domain import review_at

# this service's consumers on their own (with enrollment's intake): other services' reactions to the
# same events would otherwise change what is asserted. The e2e tests run all five together.
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "tiering")]

CHAIN = "demo-chain"
OTHER_CHAIN = "tiering-test-chain"


@pytest.fixture(scope="module")
def other_ops(stack: Any) -> str:
    """An ops key of a second chain: policy changes there cannot disturb the demo chain's tests."""

    async def go() -> str:
        engine = create_async_engine(stack.settings().database_url)
        try:
            await upsert_chain(engine, OTHER_CHAIN, "Tiering test chain", timezone="Asia/Shanghai")
            return await add_api_key(engine, OTHER_CHAIN, ["ops"], name="tiering-test-ops")
        finally:
            await engine.dispose()

    return asyncio.run(go())


def tier(api: Api, member_id: str, key: str = APP) -> dict[str, Any]:
    r = api.get("tiering", f"/v1/members/{member_id}/tier", key=key)
    assert r.status_code == 200, r.text
    return r.json()


def history(api: Api, member_id: str) -> list[dict[str, Any]]:
    r = api.get("tiering", f"/v1/members/{member_id}/tier/history", key=APP)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def tier_when(api: Api, member_id: str, **expected: Any) -> dict[str, Any]:
    """Poll the member's tier until the top-level or progress fields have the expected values."""

    def check() -> dict[str, Any]:
        doc = tier(api, member_id)
        seen = {k: doc["progress"][k] if k in doc["progress"] else doc[k] for k in expected}
        assert seen == expected, doc
        return doc

    return eventually(check, timeout=20)


def enrolled(api: Api) -> str:
    member_id = api.enrol()["member_id"]
    tier_when(api, member_id, code="member")
    return member_id


def points_changed(
    member_id: str,
    delta: int,
    *,
    qualifying: bool = True,
    entry_type: str = "earn",
    occurred_at: datetime | None = None,
) -> Any:
    return new_event(
        PointsChanged(
            entry_id=str(uuid.uuid4()),
            delta=delta,
            balance=delta,
            entry_type=entry_type,  # type: ignore[arg-type]
            reason="test",
            qualifying=qualifying,
            occurred_at=occurred_at or datetime.now(UTC),
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )


def test_spend_crossing_50000_yuan_upgrades_to_silver_with_a_review_a_year_later(api: Api) -> None:
    member_id = enrolled(api)
    api.purchase(member_id, 3_000_000)
    tier_when(api, member_id, code="member", spend_fen=3_000_000, spend_needed_fen=2_000_000)
    api.purchase(member_id, 2_000_000)
    doc = tier_when(api, member_id, code="silver", next_tier="gold", spend_needed_fen=10_000_000)
    since, review = datetime.fromisoformat(doc["since"]), datetime.fromisoformat(doc["review_at"])
    assert review == review_at(since, 12)
    assert 365 <= (review - since).days <= 366
    assert doc["name"] == "银卡会员"
    policy_version = api.get("tiering", "/v1/policy", key=OPS).json()["version"]
    assert doc["policy_version"] == policy_version
    [change] = history(api, member_id)
    assert {k: change[k] for k in ("from_tier", "to_tier", "direction", "reason", "policy_version")} == {
        "from_tier": "member",
        "to_tier": "silver",
        "direction": "up",
        "reason": "qualified",
        "policy_version": policy_version,
    }
    assert datetime.fromisoformat(change["effective_at"]) == since

    def status_shows_silver() -> bool:  # TierChanged and TierProgressChanged reached the status view
        status = api.get("enrollment", f"/v1/members/{member_id}/status", key=APP).json()
        assert (status["tier"]["code"], status["progress"]["next_tier"], status["progress"]["spend_fen"]) == (
            "silver",
            "gold",
            5_000_000,
        )
        return True

    eventually(status_shows_silver, timeout=20)


def test_spend_reaching_gold_at_once_skips_silver_in_one_change(api: Api) -> None:
    member_id = enrolled(api)
    api.purchase(member_id, 15_000_000)
    tier_when(api, member_id, code="gold", next_tier="diamond")
    assert [(h["from_tier"], h["to_tier"]) for h in history(api, member_id)] == [("member", "gold")]


def test_qualifying_points_crossing_50000_upgrade_to_silver(api: Api, stack: Any) -> None:
    member_id = enrolled(api)
    publish_events(stack.broker.bootstrap, [points_changed(member_id, 30_000), points_changed(member_id, 20_000)])
    tier_when(api, member_id, code="silver", points=50_000)
    assert [(h["to_tier"], h["reason"]) for h in history(api, member_id)] == [("silver", "qualified")]


def test_adjustments_and_other_non_qualifying_points_do_not_count(api: Api, stack: Any) -> None:
    member_id = enrolled(api)
    publish_events(
        stack.broker.bootstrap,
        [
            points_changed(member_id, 60_000, qualifying=False, entry_type="adjust"),
            points_changed(member_id, 10),  # same partition, after the adjustment: seen once it is counted
        ],
    )
    tier_when(api, member_id, code="member", points=10, points_needed=49_990)
    assert history(api, member_id) == []


def test_a_redelivered_points_event_counts_once(api: Api, stack: Any) -> None:
    member_id = enrolled(api)
    event = points_changed(member_id, 40_000)
    publish_events(stack.broker.bootstrap, [event, event, points_changed(member_id, 5)])
    tier_when(api, member_id, points=40_005)
    publish_events(stack.broker.bootstrap, [event, points_changed(member_id, 7)])
    tier_when(api, member_id, code="member", points=40_012)


def test_a_purchase_400_days_ago_is_outside_the_qualification_window(api: Api) -> None:
    member_id = enrolled(api)
    api.purchase(member_id, 6_000_000, occurred_at=datetime.now(UTC) - timedelta(days=400))
    api.purchase(member_id, 100)
    tier_when(api, member_id, code="member", spend_fen=100)
    assert history(api, member_id) == []


def test_points_earned_400_days_ago_are_outside_the_qualification_window(api: Api, stack: Any) -> None:
    member_id = enrolled(api)
    publish_events(
        stack.broker.bootstrap,
        [
            points_changed(member_id, 80_000, occurred_at=datetime.now(UTC) - timedelta(days=400)),
            points_changed(member_id, 3),
        ],
    )
    tier_when(api, member_id, code="member", points=3)


def test_a_refund_below_the_threshold_does_not_downgrade(api: Api, stack: Any) -> None:
    member_id = enrolled(api)
    purchase_id = api.purchase(member_id, 5_000_000)["purchase_id"]
    tier_when(api, member_id, code="silver")
    publish_events(
        stack.broker.bootstrap,
        [
            new_event(
                PurchaseRefunded(
                    purchase_id=purchase_id,
                    refund_id="r-1",
                    amount_fen=1_000_000,
                    occurred_at=datetime.now(UTC),
                    member_id=member_id,
                ),
                member_id=member_id,
                chain_id=CHAIN,
            )
        ],
    )
    tier_when(api, member_id, code="silver", spend_fen=4_000_000, spend_needed_fen=11_000_000)
    assert len(history(api, member_id)) == 1


def test_points_arriving_before_the_enrolment_still_upgrade_and_the_enrolment_keeps_the_tier(
    api: Api, stack: Any
) -> None:
    member_id = str(uuid.uuid4())
    publish_events(stack.broker.bootstrap, [points_changed(member_id, 50_000)])
    tier_when(api, member_id, code="silver")
    publish_events(
        stack.broker.bootstrap,
        [
            new_event(
                MemberEnrolled(
                    member_id=member_id,
                    member_no="M-late",
                    home_clinic_id="clinic-1",
                    source="walk_in",
                    birthday="1990-01-01",
                    enrolled_at=datetime.now(UTC),
                ),
                member_id=member_id,
                chain_id=CHAIN,
            )
        ],
    )
    publish_events(stack.broker.bootstrap, [points_changed(member_id, 1)])
    # the enrolment is on enrollment's topic, the marker on points': the marker being counted says
    # nothing of the enrolment. Only once both are consumed does "keeps the tier" mean anything.
    stack.wait_settled()
    tier_when(api, member_id, code="silver", points=50_001)
    assert len(history(api, member_id)) == 1


def test_policy_starts_at_the_default_and_a_valid_change_is_a_new_version(api: Api, other_ops: str) -> None:
    first = api.get("tiering", "/v1/policy", key=other_ops)
    assert first.status_code == 200, first.text
    assert first.json() == DEFAULT_POLICY.model_dump(mode="json")
    changed = {**first.json(), "version": 42, "review_months": 6}
    r = api.put("tiering", "/v1/policy", changed, key=other_ops)
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["review_months"]) == (2, 6)
    again = api.get("tiering", "/v1/policy", key=other_ops).json()
    assert (again["version"], again["review_months"]) == (2, 6)


def test_a_policy_with_thresholds_out_of_order_is_rejected_and_the_version_stays(api: Api, other_ops: str) -> None:
    before = api.get("tiering", "/v1/policy", key=other_ops).json()
    tiers = [dict(t) for t in before["tiers"]]
    tiers[2]["spend_fen"] = tiers[1]["spend_fen"] - 1  # gold below silver
    doc = is_problem(api.put("tiering", "/v1/policy", {**before, "tiers": tiers}, key=other_ops), 422)
    assert doc["errors"] and "thresholds must increase" in str(doc["errors"])
    bad_benefit = {**before, "benefits": {**before["benefits"], "gold": [{"code": "free_car"}]}}
    doc = is_problem(api.put("tiering", "/v1/policy", bad_benefit, key=other_ops), 422)
    assert "unknown benefit code" in str(doc["errors"])
    is_problem(api.put("tiering", "/v1/policy", {}, key=other_ops), 422)
    assert api.get("tiering", "/v1/policy", key=other_ops).json() == before


def test_a_policy_dropping_a_tier_members_hold_is_a_conflict(api: Api) -> None:
    enrolled(api)  # someone in the demo chain holds "member"
    current = api.get("tiering", "/v1/policy", key=OPS).json()
    renamed = {
        **current,
        "tiers": [{**current["tiers"][0], "code": "basic"}, *current["tiers"][1:]],
        "benefits": {("basic" if k == "member" else k): v for k, v in current["benefits"].items()},
    }
    is_problem(api.put("tiering", "/v1/policy", renamed, key=OPS), 409)
    assert api.get("tiering", "/v1/policy", key=OPS).json()["version"] == current["version"]


def test_only_ops_may_read_or_change_the_policy(api: Api) -> None:
    body = DEFAULT_POLICY.model_dump(mode="json")
    is_problem(api.put("tiering", "/v1/policy", body, key=POS), 403)
    is_problem(api.put("tiering", "/v1/policy", body, key=APP), 403)
    is_problem(api.get("tiering", "/v1/policy", key=APP), 403)
    is_problem(api.put("tiering", "/v1/policy", body, key=None), 401)


def test_an_unknown_or_another_chains_member_is_not_found(api: Api, other_ops: str) -> None:
    is_problem(api.get("tiering", f"/v1/members/{uuid.uuid4()}/tier", key=APP), 404)
    is_problem(api.get("tiering", f"/v1/members/{uuid.uuid4()}/tier/history", key=APP), 404)
    member_id = enrolled(api)
    assert tier(api, member_id, key=POS)["code"] == "member"
    is_problem(api.get("tiering", f"/v1/members/{member_id}/tier", key=other_ops), 404)
    is_problem(api.get("tiering", f"/v1/members/{member_id}/tier/history", key=other_ops), 404)


@pytest.mark.parametrize("version", ["56909544181476320", "2147483648", "0", "-1"])
def test_a_policy_version_out_of_range_is_a_422_not_a_500(api: Api, version: str) -> None:
    """Found by fuzzing (tests/e2e/test_fuzz.py): a version beyond PostgreSQL's integer overflowed the
    query's parameter and answered 500."""
    doc = is_problem(api.get("tiering", f"/v1/policy/versions/{version}", key=OPS), 422)
    assert doc["errors"][0]["location"] == ["path", "version"]
    is_problem(api.get("tiering", "/v1/policy/versions/2147483647", key=OPS), 404)
