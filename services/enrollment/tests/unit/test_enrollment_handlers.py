"""The status view's event handlers on an in-memory store: no database, microseconds each."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from enrollment.domain import StatusDocument
from enrollment.handlers import (
    HANDLERS,
    on_benefit_granted,
    on_benefit_redeemed,
    on_benefit_revoked,
    on_benefits_snapshot,
    on_points_changed,
    on_points_snapshot,
    on_tier_changed,
    on_tier_progress_changed,
    on_tier_snapshot,
    prepare,
)
from enrollment.store import EnrollmentStore
from enrollment.tables import policies
from services.enrollment.tests.unit.memory_store import InMemoryStore
from shared.consumer import MemberOfAnotherChain
from shared.events import (
    BenefitGranted,
    BenefitRedeemed,
    BenefitRevoked,
    BenefitsSnapshot,
    EventData,
    ExpiringPoints,
    HeldBenefit,
    PendingPoints,
    PointsChanged,
    PointsSnapshot,
    PolicyChanged,
    TierChanged,
    TierProgressChanged,
    TierSnapshot,
)
from shared.testing import FakeUnitOfWork, event, handle

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def fresh(*rows: tuple[str, StatusDocument]) -> tuple[FakeUnitOfWork, InMemoryStore]:
    uow = FakeUnitOfWork()
    store = InMemoryStore(rows=dict(rows), now=uow.now)
    uow.provide(EnrollmentStore, store)
    return uow, store


def points(balance: int, **kw: object) -> PointsChanged:
    return PointsChanged(
        entry_id=f"e-{balance}", delta=balance, balance=balance, entry_type="earn", reason="purchase", **kw
    )


def granted(benefit_id: str, code: str = "priority_booking", uses: int | None = 2) -> BenefitGranted:
    return BenefitGranted(benefit_id=benefit_id, code=code, remaining_uses=uses, valid_until=None)


async def test_points_changed_becomes_the_members_points_document() -> None:
    uow, store = fresh()
    data = points(
        1_200,
        available=1_000,
        pending=200,
        expiring=[ExpiringPoints(points=300, expires_on=date(2026, 1, 31))],
        pending_until=[PendingPoints(points=200, available_at=AT)],
    )
    await handle(on_points_changed, event(data, member_id="m1"), uow)
    assert store.rows["m1"].points == {
        "balance": 1_200,
        "available": 1_000,
        "pending": 200,
        "expiring": [{"points": 300, "expires_on": "2026-01-31"}],
        "pending_until": [{"points": 200, "available_at": "2025-06-01T12:00:00Z"}],
    }
    assert uow.events == []  # the view publishes nothing


async def test_a_batch_writes_only_each_members_newest_snapshots_in_one_write() -> None:
    uow, store = fresh()
    for balance in (100, 250, 175):
        await on_points_changed(event(points(balance), member_id="m1"), uow)
    await on_points_changed(event(points(40), member_id="m2"), uow)
    assert store.rows == {}  # nothing is written before the unit of work ends
    await uow.commit()
    assert len(store.snapshot_writes) == 1
    assert {m: docs["points"]["balance"] for m, docs in store.snapshot_writes[0].items()} == {"m1": 175, "m2": 40}
    assert store.rows["m1"].points is not None and store.rows["m1"].points["balance"] == 175


async def test_snapshots_of_one_member_from_different_events_are_written_together() -> None:
    uow, store = fresh()
    await on_points_changed(event(points(100), member_id="m1"), uow)
    await on_tier_changed(event(tier_change("silver", "银卡"), member_id="m1"), uow)
    await uow.commit()
    assert [sorted(docs["m1"]) for docs in store.snapshot_writes] == [["points", "tier"]]
    assert store.rows["m1"].tier is not None and store.rows["m1"].tier["code"] == "silver"


def tier_change(to_tier: str, name: str | None, review_at: datetime | None = None) -> TierChanged:
    return TierChanged(
        from_tier="member",
        to_tier=to_tier,
        direction="up",
        reason="qualified",
        policy_version=1,
        effective_at=AT,
        review_at=review_at,
        to_tier_name=name,
    )


async def test_a_tier_change_shows_the_policys_name_and_review_date() -> None:
    uow, store = fresh()
    review = datetime(2026, 6, 1, tzinfo=UTC)
    await handle(on_tier_changed, event(tier_change("gold", "黄金卡", review), member_id="m1"), uow)
    assert store.rows["m1"].tier == {
        "code": "gold",
        "name": "黄金卡",
        "since": AT.isoformat(),
        "review_at": review.isoformat(),
    }


async def test_a_tier_change_without_a_name_shows_the_default_name_of_the_tier() -> None:
    uow, store = fresh()
    await handle(on_tier_changed, event(tier_change("diamond", None), member_id="m1"), uow)
    await handle(on_tier_changed, event(tier_change("platinum", None), member_id="m2"), uow)
    assert store.rows["m1"].tier is not None and store.rows["m1"].tier["name"] == "钻石会员"
    assert store.rows["m2"].tier is not None and store.rows["m2"].tier["name"] == "platinum"


async def test_tier_progress_is_kept_as_tiering_announced_it() -> None:
    uow, store = fresh(("m1", StatusDocument(points={"balance": 5})))
    data = TierProgressChanged(
        tier="silver",
        next_tier="gold",
        spend_fen=6_000_000,
        spend_needed_fen=9_000_000,
        points=100,
        points_needed=149_900,
        policy_version=3,
    )
    await handle(on_tier_progress_changed, event(data, member_id="m1"), uow)
    assert store.rows["m1"].progress == data.model_dump(mode="json")
    assert store.rows["m1"].points == {"balance": 5}  # the other documents are left alone


async def test_a_granted_benefit_is_listed_and_a_redemption_updates_its_remaining_uses() -> None:
    uow, store = fresh()
    await handle(on_benefit_granted, event(granted("b1", uses=2), member_id="m1"), uow)
    assert store.rows["m1"].benefits == {
        "b1": {"benefit_id": "b1", "code": "priority_booking", "remaining_uses": 2, "valid_until": None}
    }
    redeemed = BenefitRedeemed(benefit_id="b1", code="priority_booking", remaining_uses=1, clinic_id="c1")
    await handle(on_benefit_redeemed, event(redeemed, member_id="m1"), uow)
    assert store.rows["m1"].benefits["b1"]["remaining_uses"] == 1
    assert uow.events == []


async def test_a_revoked_benefit_leaves_the_view_and_the_others_stay() -> None:
    uow, store = fresh()
    await handle(on_benefit_granted, event(granted("b1"), member_id="m1"), uow)
    await handle(on_benefit_granted, event(granted("b2", code="care_pack"), member_id="m1"), uow)
    await handle(
        on_benefit_revoked, event(BenefitRevoked(benefit_id="b1", code="priority_booking"), member_id="m1"), uow
    )
    assert list(store.rows["m1"].benefits) == ["b2"]


async def test_a_revocation_for_a_member_without_a_view_gives_them_an_empty_one() -> None:
    uow, store = fresh()
    await handle(on_benefit_revoked, event(BenefitRevoked(benefit_id="b9", code="care_pack"), member_id="m3"), uow)
    assert store.rows["m3"] == StatusDocument()


def test_the_consumer_takes_the_view_events_and_the_programme_versions() -> None:
    expected: set[type[EventData]] = {
        PointsChanged,
        TierChanged,
        TierProgressChanged,
        BenefitGranted,
        BenefitRedeemed,
        BenefitRevoked,
        PointsSnapshot,
        TierSnapshot,
        BenefitsSnapshot,
        PolicyChanged,
    }
    assert set(HANDLERS) == expected
    assert HANDLERS[PolicyChanged] == policies.on_policy_changed  # the shared store keeps the versions


# ---- a rebuild: the owners' snapshots replace the view's parts ------------------------------------


def points_snapshot(
    balance: int,
    *,
    available: int | None = None,
    pending: int = 0,
    expiring: list[ExpiringPoints] | None = None,
    pending_until: list[PendingPoints] | None = None,
) -> PointsSnapshot:
    return PointsSnapshot(
        balance=balance,
        available=balance if available is None else available,
        pending=pending,
        expiring=expiring or [],
        pending_until=pending_until or [],
    )


def tier_snapshot(tier: str = "gold", name: str | None = "金卡会员", review_at: datetime | None = None) -> TierSnapshot:
    return TierSnapshot(
        tier=tier,
        tier_name=name,
        since=AT,
        review_at=review_at,
        next_tier="diamond",
        spend_fen=16_000_000,
        spend_needed_fen=14_000_000,
        points=160_000,
        points_needed=140_000,
        policy_version=2,
    )


async def test_a_points_snapshot_sets_the_document_a_points_change_with_the_same_numbers_sets() -> None:
    expiring = [ExpiringPoints(points=300, expires_on=date(2026, 1, 31))]
    pending_until = [PendingPoints(points=200, available_at=AT)]
    uow, store = fresh(("m1", StatusDocument(points={"balance": 999_999, "available": 1})))
    snap = points_snapshot(1_200, available=1_000, pending=200, expiring=expiring, pending_until=pending_until)
    await handle(on_points_snapshot, event(snap, member_id="m1"), uow)
    live_uow, live = fresh()
    change = points(1_200, available=1_000, pending=200, expiring=expiring, pending_until=pending_until)
    await handle(on_points_changed, event(change, member_id="m1"), live_uow)
    assert store.rows["m1"].points == live.rows["m1"].points
    assert store.rows["m1"].points is not None and store.rows["m1"].points["balance"] == 1_200
    assert uow.events == []  # the view publishes nothing


async def test_a_tier_snapshot_sets_the_tier_and_progress_that_tier_events_about_the_same_state_set() -> None:
    review = datetime(2026, 6, 1, tzinfo=UTC)
    wrong = StatusDocument(tier={"code": "member"}, progress={"tier": "member"}, points={"balance": 7})
    uow, store = fresh(("m1", wrong))
    await handle(on_tier_snapshot, event(tier_snapshot(review_at=review), member_id="m1"), uow)
    live_uow, live = fresh()
    await handle(on_tier_changed, event(tier_change("gold", "金卡会员", review), member_id="m1"), live_uow)
    progress = TierProgressChanged(
        tier="gold",
        tier_name="金卡会员",
        next_tier="diamond",
        spend_fen=16_000_000,
        spend_needed_fen=14_000_000,
        points=160_000,
        points_needed=140_000,
        review_at=review,
        policy_version=2,
    )
    await handle(on_tier_progress_changed, event(progress, member_id="m1"), live_uow)
    assert store.rows["m1"].tier == live.rows["m1"].tier
    assert store.rows["m1"].progress == live.rows["m1"].progress
    assert store.rows["m1"].points == {"balance": 7}  # the points are not tiering's to replace


async def test_a_tier_snapshot_without_a_name_shows_the_default_name() -> None:
    uow, store = fresh()
    await handle(on_tier_snapshot, event(tier_snapshot("silver", None), member_id="m1"), uow)
    assert store.rows["m1"].tier is not None and store.rows["m1"].tier["name"] == "银卡会员"


async def test_a_snapshot_and_a_later_change_in_one_batch_leave_the_later_one() -> None:
    uow, store = fresh()
    await on_points_snapshot(event(points_snapshot(100), member_id="m1"), uow)
    await on_points_changed(event(points(150), member_id="m1"), uow)
    await on_tier_changed(event(tier_change("silver", "银卡"), member_id="m2"), uow)
    await on_tier_snapshot(event(tier_snapshot("gold"), member_id="m2"), uow)
    await uow.commit()
    assert len(store.snapshot_writes) == 1  # still one write for the batch
    assert store.rows["m1"].points is not None and store.rows["m1"].points["balance"] == 150
    assert store.rows["m2"].tier is not None and store.rows["m2"].tier["code"] == "gold"


async def test_a_benefits_snapshot_replaces_every_entry_bogus_ones_go_and_missing_ones_come_back() -> None:
    bogus = {"benefit_id": "bogus", "code": "dedicated_doctor", "remaining_uses": None, "valid_until": None}
    uow, store = fresh(("m1", StatusDocument(points={"balance": 3}, benefits={"bogus": bogus})))
    until = datetime(2026, 6, 1, tzinfo=UTC)
    snap = BenefitsSnapshot(
        benefits=[
            HeldBenefit(benefit_id="b1", code="priority_booking", remaining_uses=None, valid_until=None),
            HeldBenefit(benefit_id="b2", code="annual_skin_check", remaining_uses=1, valid_until=until),
        ]
    )
    await handle(on_benefits_snapshot, event(snap, member_id="m1"), uow)
    assert store.rows["m1"].benefits == {
        "b1": {"benefit_id": "b1", "code": "priority_booking", "remaining_uses": None, "valid_until": None},
        "b2": {
            "benefit_id": "b2",
            "code": "annual_skin_check",
            "remaining_uses": 1,
            "valid_until": until.isoformat(),
        },
    }
    assert store.rows["m1"].points == {"balance": 3}
    # the entries are those grants of the same entitlements would have made
    live_uow, live = fresh()
    await handle(
        on_benefit_granted,
        event(BenefitGranted(benefit_id="b2", code="annual_skin_check", remaining_uses=1, valid_until=until)),
        live_uow,
    )
    assert live.rows["member-1"].benefits["b2"] == store.rows["m1"].benefits["b2"]


async def test_an_empty_benefits_snapshot_empties_the_view_and_gives_a_member_without_a_row_one() -> None:
    uow, store = fresh(("m1", StatusDocument(benefits={"b1": {"benefit_id": "b1", "code": "x"}})))
    await handle(on_benefits_snapshot, event(BenefitsSnapshot(benefits=[]), member_id="m1"), uow)
    await handle(on_benefits_snapshot, event(BenefitsSnapshot(benefits=[]), member_id="m9"), uow)
    assert store.rows["m1"].benefits == {} and store.rows["m9"] == StatusDocument()


async def test_a_benefits_snapshot_keeps_its_place_among_grants_and_revocations_of_a_batch() -> None:
    uow, store = fresh()
    await on_benefit_granted(event(granted("b1"), member_id="m1"), uow)
    await on_benefits_snapshot(
        event(BenefitsSnapshot(benefits=[HeldBenefit(benefit_id="b2", code="care_pack")]), member_id="m1"), uow
    )
    await on_benefit_granted(event(granted("b3"), member_id="m1"), uow)
    await on_benefit_revoked(event(BenefitRevoked(benefit_id="b2", code="care_pack"), member_id="m1"), uow)
    await uow.commit()
    assert list(store.rows["m1"].benefits) == ["b3"]


# ---- events naming another chain's member (forged or misrouted) ---------------------------------

VIEW_EVENTS: list[tuple[Any, EventData]] = [
    (on_points_changed, points(999_999)),
    (
        on_tier_changed,
        TierChanged(
            from_tier="member", to_tier="diamond", direction="up", reason="qualified", policy_version=1, effective_at=AT
        ),
    ),
    (
        on_tier_progress_changed,
        TierProgressChanged(
            tier="diamond", next_tier=None, spend_fen=1, spend_needed_fen=0, points=1, points_needed=0, policy_version=1
        ),
    ),
    (on_benefit_granted, granted("b-forged")),
    (
        on_benefit_redeemed,
        BenefitRedeemed(benefit_id="b-1", code="priority_booking", remaining_uses=0, valid_until=None),
    ),
    (on_benefit_revoked, BenefitRevoked(benefit_id="b-1", code="priority_booking", remaining_uses=0, valid_until=None)),
    (on_points_snapshot, points_snapshot(999_999)),
    (on_tier_snapshot, tier_snapshot("diamond")),
    (on_benefits_snapshot, BenefitsSnapshot(benefits=[])),
]


@pytest.mark.parametrize(("handler", "data"), VIEW_EVENTS, ids=lambda v: getattr(v, "__name__", ""))
async def test_a_view_event_naming_a_member_of_another_chain_is_refused_and_changes_nothing(
    handler: Any, data: EventData
) -> None:
    uow, store = fresh(("m-1", StatusDocument(benefits={"b-1": {"benefit_id": "b-1", "code": "priority_booking"}})))
    store.member_chains["m-1"] = "chain-1"
    before = dict(store.rows)

    with pytest.raises(MemberOfAnotherChain) as refused:
        await handle(handler, event(data, member_id="m-1", chain_id="chain-forger"), uow)

    assert store.rows == before and store.snapshot_writes in ([], [{}])
    assert "chain-1" not in str(refused.value)


async def test_a_batch_reads_the_chains_of_its_members_once_and_refuses_a_forged_event() -> None:
    uow, store = fresh()
    store.member_chains.update({"m-1": "chain-1", "m-2": "chain-1"})
    batch = [
        event(points(10), member_id="m-1", chain_id="chain-1"),
        event(points(20), member_id="m-2", chain_id="chain-1"),
    ]
    await prepare(batch, uow)
    for e in batch:
        await HANDLERS[type(e.data)](e, uow)
    await uow.commit()
    assert store.chain_lookups == [["m-1", "m-2"]]
    assert store.rows["m-2"].points is not None

    forged = event(points(30), member_id="m-1", chain_id="chain-2")
    uow2, _ = fresh()
    uow2.provide(EnrollmentStore, store)
    await prepare([forged], uow2)
    with pytest.raises(MemberOfAnotherChain):
        await HANDLERS[type(forged.data)](forged, uow2)


async def test_an_event_about_a_member_not_enrolled_here_still_builds_the_view() -> None:
    uow, store = fresh()
    await handle(on_points_changed, event(points(5), member_id="m-new", chain_id="chain-9"), uow)
    assert store.rows["m-new"].points is not None  # as before: the view does not wait for the member
