"""Tiering's programme operations through the API and the broker: reviews and downgrades, overrides,
policy changes (PolicyChanged, simulation, recalculation) and the explanation of a tier.

Each test runs in a chain of its own (reviews, policy changes and recalculations act on a whole
chain) and puts enrolments and purchases straight on the broker, as enrollment would publish
them, with backdated or future ``occurred_at`` where the story needs it. Reviews are run through
``POST /v1/reviews/run`` with an ``as_of`` instead of moving clocks.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import create_async_engine

from shared.events import CloudEvent, MemberEnrolled, PurchaseItem, PurchaseRecorded, decode, new_event, topic_of
from shared.platform import add_api_key, upsert_chain
from shared.policy import DEFAULT_POLICY
from tests.helpers import APP, Api, eventually, is_problem, publish_events
from tiering.domain import add_months

# this service's consumers on their own (with enrollment's intake): other services' reactions to the
# same events would otherwise change what is asserted. The e2e tests run all five together.
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "tiering")]

SILVER, GOLD, DIAMOND = 5_000_000, 15_000_000, 30_000_000


@dataclass(frozen=True)
class Chain:
    chain_id: str
    ops: str
    app: str


def new_chain(stack: Any) -> Chain:
    """A fresh chain with an ops and an app key: whole-chain operations there disturb no other test."""
    chain_id = f"tier-{uuid.uuid4().hex[:10]}"

    async def go() -> Chain:
        engine = create_async_engine(stack.settings().database_url)
        try:
            await upsert_chain(engine, chain_id, "Tier programme test chain", timezone="Asia/Shanghai")
            ops = await add_api_key(engine, chain_id, ["ops"], name=f"{chain_id}-ops")
            app = await add_api_key(engine, chain_id, ["app"], name=f"{chain_id}-app")
            return Chain(chain_id, ops, app)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.fixture
def chain(stack: Any) -> Chain:
    return new_chain(stack)


def now() -> datetime:
    return datetime.now(UTC)


def enrolment(chain: Chain, member_id: str, enrolled_at: datetime | None = None) -> CloudEvent:
    return new_event(
        MemberEnrolled(
            member_id=member_id,
            member_no=f"M-{member_id[:6]}",
            home_clinic_id="clinic-1",
            source="walk_in",
            birthday="1990-06-15",
            enrolled_at=enrolled_at or now(),
        ),
        member_id=member_id,
        chain_id=chain.chain_id,
    )


def purchase(chain: Chain, member_id: str, amount_fen: int, occurred_at: datetime | None = None) -> CloudEvent:
    return new_event(
        PurchaseRecorded(
            purchase_id=str(uuid.uuid4()),
            pos_txn_id=f"txn-{uuid.uuid4()}",
            clinic_id="clinic-1",
            member_id=member_id,
            amount_fen=amount_fen,
            occurred_at=occurred_at or now(),
            items=[PurchaseItem(sku="thermage", category="skin_care", amount_fen=amount_fen, qty=1)],
        ),
        member_id=member_id,
        chain_id=chain.chain_id,
    )


def tier(api: Api, chain: Chain, member_id: str) -> dict[str, Any]:
    r = api.get("tiering", f"/v1/members/{member_id}/tier", key=chain.app)
    assert r.status_code == 200, r.text
    return r.json()


def tier_when(api: Api, chain: Chain, member_id: str, code: str, spend_fen: int | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        doc = tier(api, chain, member_id)
        assert doc["code"] == code, doc
        assert spend_fen is None or doc["progress"]["spend_fen"] == spend_fen, doc
        return doc

    return eventually(check, timeout=20)


def history(api: Api, chain: Chain, member_id: str) -> list[dict[str, Any]]:
    r = api.get("tiering", f"/v1/members/{member_id}/tier/history", key=chain.app)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def member_with_spend(
    api: Api, stack: Any, chain: Chain, spend_fen: int, code: str, occurred_at: datetime | None = None
) -> str:
    """A member of ``chain`` who spent ``spend_fen`` (at ``occurred_at``) and now holds ``code``."""
    member_id = str(uuid.uuid4())
    events = [enrolment(chain, member_id)]
    if spend_fen:
        events.append(purchase(chain, member_id, spend_fen, occurred_at))
    publish_events(stack.broker.bootstrap, events)
    tier_when(api, chain, member_id, code, spend_fen)
    return member_id


def run_reviews(api: Api, chain: Chain, as_of: datetime) -> dict[str, Any]:
    r = api.post("tiering", "/v1/reviews/run", {"as_of": as_of.isoformat()}, key=chain.ops)
    assert r.status_code == 200, r.text
    return r.json()


def counts(run: dict[str, Any]) -> tuple[int, int, int, int]:
    return run["reviewed"], run["moved_up"], run["moved_down"], run["unchanged"]


def published(bootstrap: str, subject: str, event_type: str) -> list[CloudEvent]:
    """Everything tiering published about ``subject`` of one type so far, read from the topic's start."""

    async def read() -> list[CloudEvent]:
        consumer = AIOKafkaConsumer(
            topic_of("tiering"),
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            found: list[CloudEvent] = []
            while batch := await consumer.getmany(timeout_ms=1_000):
                found += [decode(r.value) for rs in batch.values() for r in rs if r.key == subject.encode()]
            return [e for e in found if e.type == event_type]
        finally:
            await consumer.stop()

    return asyncio.run(read())


def at(doc: dict[str, Any], key: str = "review_at") -> datetime:
    return datetime.fromisoformat(doc[key])


def explain(api: Api, chain: Chain, member_id: str, as_of: datetime | None = None) -> Any:
    params = {"as_of": as_of.isoformat()} if as_of else None
    return api.get("tiering", f"/v1/members/{member_id}/tier/explain", key=chain.app, params=params)


def counted_by(api: Api, chain: Chain, member_id: str, as_of: datetime, spend_fen: int) -> None:
    """Wait until tiering has recorded the member's facts: ``spend_fen`` in the window ending at ``as_of``."""

    def check() -> bool:
        r = explain(api, chain, member_id, as_of)
        assert r.status_code == 200 and r.json()["evidence"]["spend_fen"] == spend_fen, r.text
        return True

    eventually(check, timeout=20)


# ---- reviews ------------------------------------------------------------------------------------


def test_a_review_drops_a_diamond_member_who_qualifies_for_nothing_only_to_gold_and_the_next_one_to_silver(
    api: Api, stack: Any, chain: Chain
) -> None:
    member_id = member_with_spend(api, stack, chain, DIAMOND, "diamond")
    first_review = at(tier(api, chain, member_id))

    # a year on, the purchase has left the 365-day window: the member qualifies for nothing
    run = run_reviews(api, chain, first_review + timedelta(minutes=1))
    assert counts(run) == (1, 0, 1, 0)
    after = tier(api, chain, member_id)
    assert (after["code"], at(after)) == ("gold", add_months(first_review, 12))
    last = history(api, chain, member_id)[-1]
    assert (last["from_tier"], last["to_tier"], last["direction"], last["reason"]) == (
        "diamond",
        "gold",
        "down",
        "review",
    )

    run = run_reviews(api, chain, at(after) + timedelta(minutes=1))
    assert counts(run) == (1, 0, 1, 0)
    assert tier(api, chain, member_id)["code"] == "silver"
    assert [(h["to_tier"], h["reason"]) for h in history(api, chain, member_id)] == [
        ("diamond", "qualified"),
        ("gold", "review"),
        ("silver", "review"),
    ]


def test_a_review_with_no_change_moves_review_at_and_publishes_tier_changed_with_direction_none(
    api: Api, stack: Any, chain: Chain
) -> None:
    member_id = member_with_spend(api, stack, chain, SILVER, "silver")
    review = at(tier(api, chain, member_id))
    # the member keeps spending: as of the review they still qualify for silver
    publish_events(stack.broker.bootstrap, [purchase(chain, member_id, SILVER, review - timedelta(days=10))])
    counted_by(api, chain, member_id, review, SILVER)  # the first purchase has left the window

    run = run_reviews(api, chain, review + timedelta(minutes=1))
    assert counts(run) == (1, 0, 0, 1)
    after = tier(api, chain, member_id)
    assert (after["code"], at(after)) == ("silver", add_months(review, 12))
    last = history(api, chain, member_id)[-1]
    assert (last["from_tier"], last["to_tier"], last["direction"], last["reason"]) == (
        "silver",
        "silver",
        "none",
        "review",
    )

    def reviews_published() -> list[CloudEvent]:
        return [e for e in published(stack.broker.bootstrap, member_id, "TierChanged") if e.data.reason == "review"]  # type: ignore[attr-defined]

    # an empty topic at first is the relay's lag, not a failure (a bare unpacking would raise ValueError,
    # which eventually does not retry); exactly one once everything is published
    eventually(lambda: reviews_published() or None, timeout=20)
    stack.wait_settled()
    [event] = reviews_published()
    assert (event.data.direction, event.data.to_tier, event.data.review_at) == (  # type: ignore[attr-defined]
        "none",
        "silver",
        add_months(review, 12),
    )


def test_reviews_are_not_run_before_review_at(api: Api, stack: Any, chain: Chain) -> None:
    member_id = member_with_spend(api, stack, chain, GOLD, "gold")
    before = tier(api, chain, member_id)
    run = run_reviews(api, chain, at(before) - timedelta(minutes=1))
    assert counts(run) == (0, 0, 0, 0)
    assert tier(api, chain, member_id) == before
    assert len(history(api, chain, member_id)) == 1


def test_reviews_run_only_for_the_callers_chain_and_only_ops_may_run_them(api: Api, stack: Any, chain: Chain) -> None:
    member_id = member_with_spend(api, stack, chain, SILVER, "silver")
    is_problem(api.post("tiering", "/v1/reviews/run", {}, key=chain.app), 403)
    is_problem(api.post("tiering", "/v1/reviews/run", {"as_of": "2027-01-01T00:00:00"}, key=chain.ops), 422)
    elsewhere = new_chain(stack)
    far = at(tier(api, chain, member_id)) + timedelta(days=1)
    assert counts(run_reviews(api, elsewhere, far)) == (0, 0, 0, 0)
    assert tier(api, chain, member_id)["code"] == "silver"
    assert len(history(api, chain, member_id)) == 1
    assert counts(run_reviews(api, chain, far)) == (1, 0, 1, 0)


# ---- overrides ----------------------------------------------------------------------------------


def override(api: Api, chain: Chain, member_id: str, body: dict[str, Any]) -> Any:
    return api.post("tiering", f"/v1/members/{member_id}/tier/override", body, key=chain.ops)


def test_an_override_with_until_holds_through_a_review_and_afterwards_the_member_returns_to_the_qualified_tier(
    api: Api, stack: Any, chain: Chain
) -> None:
    member_id = member_with_spend(api, stack, chain, 0, "member")
    until = now() + timedelta(days=400)
    r = override(api, chain, member_id, {"to_tier": "gold", "reason": "complaint settled", "until": until.isoformat()})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["code"], doc["override"]["tier"], at(doc["override"], "until")) == ("gold", "gold", until)
    review = at(doc)
    [change] = history(api, chain, member_id)
    assert (change["from_tier"], change["to_tier"], change["direction"], change["reason"], change["note"]) == (
        "member",
        "gold",
        "up",
        "override",
        "complaint settled",
    )
    # by the time the override ends, the member has spent enough for silver
    publish_events(stack.broker.bootstrap, [purchase(chain, member_id, SILVER, until - timedelta(days=20))])
    counted_by(api, chain, member_id, until, SILVER)

    during = run_reviews(api, chain, review + timedelta(minutes=1))  # qualifies for nothing, but the override holds
    assert counts(during) == (1, 0, 0, 1)
    assert tier(api, chain, member_id)["code"] == "gold"

    after = run_reviews(api, chain, until + timedelta(minutes=1))
    assert counts(after) == (1, 0, 1, 0)
    doc = tier(api, chain, member_id)
    assert (doc["code"], doc["override"]) == ("silver", None)
    last = history(api, chain, member_id)[-1]
    assert (last["from_tier"], last["to_tier"], last["direction"], last["reason"]) == (
        "gold",
        "silver",
        "down",
        "review",
    )
    assert counts(run_reviews(api, chain, until + timedelta(minutes=2))) == (0, 0, 0, 0)


def test_an_override_without_until_or_qualifying_history_lasts_until_the_next_review_only(
    api: Api, stack: Any, chain: Chain
) -> None:
    member_id = member_with_spend(api, stack, chain, 0, "member")
    r = override(api, chain, member_id, {"to_tier": "diamond", "reason": "founding patron"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["code"] == "diamond" and at(doc["override"], "until") == at(doc)
    # `or None`: an empty topic (the relay's lag) is retried, where [0] would raise IndexError at once
    event = eventually(lambda: published(stack.broker.bootstrap, member_id, "TierChanged") or None, timeout=20)[0]
    assert (event.data.reason, event.data.direction, event.data.to_tier) == (  # type: ignore[attr-defined]
        "override",
        "up",
        "diamond",
    )

    run = run_reviews(api, chain, at(doc) + timedelta(minutes=1))  # no floor any more: one step down
    assert counts(run) == (1, 0, 1, 0)
    assert tier(api, chain, member_id)["code"] == "gold"


def test_an_override_needs_a_known_tier_a_reason_and_a_future_until(api: Api, stack: Any, chain: Chain) -> None:
    member_id = member_with_spend(api, stack, chain, 0, "member")
    is_problem(override(api, chain, member_id, {"to_tier": "platinum", "reason": "vip"}), 422)
    is_problem(override(api, chain, member_id, {"to_tier": "gold", "reason": "  "}), 422)
    is_problem(override(api, chain, member_id, {"to_tier": "gold"}), 422)
    past = (now() - timedelta(days=1)).isoformat()
    is_problem(override(api, chain, member_id, {"to_tier": "gold", "reason": "vip", "until": past}), 422)
    is_problem(
        api.post(
            "tiering", f"/v1/members/{member_id}/tier/override", {"to_tier": "gold", "reason": "vip"}, key=chain.app
        ),
        403,
    )
    is_problem(override(api, chain, str(uuid.uuid4()), {"to_tier": "gold", "reason": "vip"}), 404)
    assert tier(api, chain, member_id)["code"] == "member"
    assert history(api, chain, member_id) == []


# ---- policy changes -----------------------------------------------------------------------------


def policy(api: Api, chain: Chain) -> dict[str, Any]:
    r = api.get("tiering", "/v1/policy", key=chain.ops)
    assert r.status_code == 200, r.text
    return r.json()


def with_thresholds(doc: dict[str, Any], **spend_fen: int) -> dict[str, Any]:
    return {**doc, "tiers": [{**t, "spend_fen": spend_fen.get(t["code"], t["spend_fen"])} for t in doc["tiers"]]}


def test_a_policy_put_publishes_policy_changed_for_the_chain(api: Api, stack: Any, chain: Chain) -> None:
    changed = {**policy(api, chain), "review_months": 6}
    r = api.put("tiering", "/v1/policy", changed, key=chain.ops)
    assert r.status_code == 200, r.text

    def policy_changed() -> list[CloudEvent]:
        return published(stack.broker.bootstrap, f"chain:{chain.chain_id}", "PolicyChanged")

    # an empty topic at first is the relay's lag, not a failure (a bare unpacking would raise ValueError,
    # which eventually does not retry); exactly one once everything is published
    eventually(lambda: policy_changed() or None, timeout=20)
    stack.wait_settled()
    [event] = policy_changed()
    assert (event.chainid, event.data.version, event.data.policy["review_months"]) == (  # type: ignore[attr-defined]
        chain.chain_id,
        2,
        6,
    )
    assert api.get("tiering", "/v1/policy/versions/1", key=chain.ops).json()["review_months"] == 12


def test_a_policy_put_with_thresholds_out_of_order_is_rejected_and_publishes_nothing(
    api: Api, stack: Any, chain: Chain
) -> None:
    before = policy(api, chain)
    is_problem(api.put("tiering", "/v1/policy", with_thresholds(before, gold=SILVER - 1), key=chain.ops), 422)
    assert policy(api, chain) == before
    stack.wait_settled()  # anything the rejected PUT might have put in the outbox is on the topic
    assert published(stack.broker.bootstrap, f"chain:{chain.chain_id}", "PolicyChanged") == []


def known_members(api: Api, stack: Any, chain: Chain) -> dict[str, str]:
    return {
        "silver": member_with_spend(api, stack, chain, 6_000_000, "silver"),
        "member": member_with_spend(api, stack, chain, 1_000_000, "member"),
        "gold": member_with_spend(api, stack, chain, 16_000_000, "gold"),
    }


def test_simulate_counts_a_known_set_of_members_and_changes_nothing(api: Api, stack: Any, chain: Chain) -> None:
    members = known_members(api, stack, chain)
    current = policy(api, chain)
    before = {m: (tier(api, chain, m), history(api, chain, m)) for m in members.values()}
    proposal = with_thresholds(current, silver=7_000_000)  # above the silver member's 60,000 yuan
    r = api.post("tiering", "/v1/policy/simulate", {"policy": proposal}, key=chain.ops)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["members"] == 3
    assert doc["current"] == {"member": 1, "silver": 1, "gold": 1, "diamond": 0}
    assert doc["proposed"] == {"member": 2, "silver": 0, "gold": 1, "diamond": 0}
    assert doc["moves"] == {"up": 0, "down": 1, "unchanged": 2}
    # three birthday vouchers, plus 5% of 60,000 yuan (silver) and 15% of 160,000 yuan (gold)
    assert doc["yearly_benefit_cost_fen"] == {"current": 300_000 + 300_000 + 2_400_000, "proposed": 300_000 + 2_400_000}
    assert policy(api, chain) == current
    assert {m: (tier(api, chain, m), history(api, chain, m)) for m in members.values()} == before
    is_problem(
        api.post("tiering", "/v1/policy/simulate", {"policy": with_thresholds(current, gold=1)}, key=chain.ops), 422
    )
    is_problem(api.post("tiering", "/v1/policy/simulate", {"policy": proposal}, key=chain.app), 403)


def test_recalculate_moves_exactly_the_members_the_new_policy_qualifies_differently_and_reports_progress(
    api: Api, stack: Any, chain: Chain
) -> None:
    members = {
        **known_members(api, stack, chain),
        "member_to_silver": member_with_spend(api, stack, chain, 3_000_000, "member"),
        "diamond": member_with_spend(api, stack, chain, 31_000_000, "diamond"),
    }
    new = with_thresholds(policy(api, chain), silver=2_500_000, gold=40_000_000, diamond=100_000_000)
    r = api.put("tiering", "/v1/policy", new, key=chain.ops)
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    # the PUT alone moves nobody
    assert {k: tier(api, chain, m)["code"] for k, m in members.items()} == {
        "silver": "silver",
        "member": "member",
        "gold": "gold",
        "member_to_silver": "member",
        "diamond": "diamond",
    }

    r = api.post("tiering", "/v1/policy/recalculate", key=chain.ops)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["status"] == "running"

    def done() -> dict[str, Any]:
        job = api.get("tiering", f"/v1/policy/recalculations/{job_id}", key=chain.ops).json()
        assert job["status"] == "done", job
        return job

    job = eventually(done, timeout=30)
    assert (job["total"], job["processed"], job["moved"], job["policy_version"]) == (5, 5, 3, version)
    assert job["finished_at"] is not None
    # no one-step limit: the new policy applies exactly as written
    assert {k: tier(api, chain, m)["code"] for k, m in members.items()} == {
        "silver": "silver",
        "member": "member",
        "gold": "silver",
        "member_to_silver": "silver",
        "diamond": "silver",
    }
    for key in ("gold", "member_to_silver", "diamond"):
        last = history(api, chain, members[key])[-1]
        assert (last["reason"], last["to_tier"], last["policy_version"]) == ("recalculation", "silver", version)
    for key in ("silver", "member"):
        assert [h["reason"] for h in history(api, chain, members[key])] in ([], ["qualified"])
    assert {tier(api, chain, m)["policy_version"] for m in members.values()} == {version}
    is_problem(api.get("tiering", f"/v1/policy/recalculations/{job_id}", key=chain.app), 403)
    is_problem(api.get("tiering", f"/v1/policy/recalculations/{uuid.uuid4()}", key=chain.ops), 404)


# ---- explain ------------------------------------------------------------------------------------


def test_explain_before_and_after_an_upgrade_shows_the_tier_and_the_evidence_of_that_time(
    api: Api, stack: Any, chain: Chain
) -> None:
    member_id = str(uuid.uuid4())
    publish_events(
        stack.broker.bootstrap,
        [
            enrolment(chain, member_id, now() - timedelta(days=30)),
            purchase(chain, member_id, 3_000_000, now() - timedelta(days=10)),
        ],
    )
    tier_when(api, chain, member_id, "member", 3_000_000)
    publish_events(stack.broker.bootstrap, [purchase(chain, member_id, 2_000_000, now() - timedelta(days=5))])
    upgraded = tier_when(api, chain, member_id, "silver", 5_000_000)

    r = explain(api, chain, member_id, now() - timedelta(days=7))
    assert r.status_code == 200, r.text
    before = r.json()
    assert (before["tier"]["code"], before["qualifies_for"], before["last_change"], before["policy_version"]) == (
        "member",
        "member",
        None,
        1,
    )
    assert (before["evidence"]["spend_fen"], before["evidence"]["points"]) == (3_000_000, 0)
    assert [(t["code"], t["spend_fen"]) for t in before["thresholds"]] == [
        (t.code, t.spend_fen) for t in DEFAULT_POLICY.tiers
    ]
    assert at(before["evidence"], "window_end") - at(before["evidence"], "window_start") == timedelta(days=365)

    after = explain(api, chain, member_id).json()
    assert (after["tier"], after["qualifies_for"]) == ({"code": "silver", "name": "银卡会员"}, "silver")
    assert (after["evidence"]["spend_fen"], at(after)) == (5_000_000, at(upgraded))
    assert {k: after["last_change"][k] for k in ("from_tier", "to_tier", "reason")} == {
        "from_tier": "member",
        "to_tier": "silver",
        "reason": "qualified",
    }
    assert at(after["last_change"], "effective_at") == at(upgraded, "since")

    is_problem(explain(api, chain, member_id, now() - timedelta(days=40)), 422)
    is_problem(
        api.get("tiering", f"/v1/members/{member_id}/tier/explain", key=chain.app, params={"as_of": "yesterday"}), 422
    )
    is_problem(api.get("tiering", f"/v1/members/{member_id}/tier/explain", key=APP), 404)
