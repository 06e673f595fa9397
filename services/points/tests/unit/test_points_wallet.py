"""Lots and the wallet: which lots a redemption or a reversal takes, and the ledger's invariants."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from points import domain
from shared.policy import DEFAULT_POLICY

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2025, 1, 1, 4, tzinfo=UTC)


def lot(lot_id: str, points: int, earned_at: datetime, purchase_id: str | None = None) -> domain.Lot:
    return domain.new_lot(lot_id, points, earned_at, DEFAULT_POLICY, SHANGHAI, purchase_id=purchase_id)


def test_a_redemption_spends_the_oldest_available_lots_and_skips_pending_ones() -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("old", 100, START))
    wallet.credit(lot("mid", 100, START + timedelta(days=1)))
    wallet.credit(lot("new", 100, START + timedelta(days=20)))  # still pending
    now = START + timedelta(days=21)
    assert (wallet.available(now), wallet.pending(now)) == (200, 100)
    taken = wallet.redeem(150, now)
    assert [(lot.lot_id, n) for lot, n in taken] == [("old", 100), ("mid", 50)]
    with pytest.raises(domain.InsufficientPoints):
        wallet.redeem(51, now)
    assert wallet.balance == 150


def test_a_redemption_never_spends_expired_lots() -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("ancient", 100, START))
    after_expiry = datetime.combine(wallet.lots[0].expires_on + timedelta(days=1), datetime.min.time(), SHANGHAI)
    assert wallet.available(after_expiry) == 0
    with pytest.raises(domain.InsufficientPoints):
        wallet.redeem(1, after_expiry)


def test_a_reversal_takes_the_purchase_lot_first_then_the_oldest_and_then_goes_negative() -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("a", 50, START))
    wallet.credit(lot("b", 100, START + timedelta(days=1), purchase_id="p"))
    taken = wallet.debit(180, first_lot_id="b")
    assert [(lot.lot_id, n) for lot, n in taken] == [("b", 100), ("a", 50)]
    assert wallet.balance == -30
    assert wallet.available(START + timedelta(days=30)) == -30


def test_a_negative_balance_blocks_redemption_and_is_repaid_by_the_next_credit() -> None:
    wallet = domain.Wallet(-30, [], SHANGHAI)
    with pytest.raises(domain.NegativeBalance):
        wallet.redeem(1, START)
    new = wallet.credit(lot("c", 100, START))
    assert (wallet.balance, new.remaining) == (70, 70)


def test_expired_lots_are_taken_away_and_announced_only_before_they_expire() -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("jan", 100, datetime(2025, 1, 10, tzinfo=UTC)))  # expires 2027-01-31
    wallet.credit(lot("feb", 40, datetime(2025, 2, 10, tzinfo=UTC)))  # expires 2027-02-28
    on_jan_5 = datetime(2027, 1, 5, 4, tzinfo=UTC)
    assert [lot.lot_id for lot in wallet.expiring_soon(on_jan_5, 30)] == ["jan"]
    assert wallet.expire(on_jan_5) == []
    last_day_in_shanghai = datetime(2027, 1, 31, 15, 59, tzinfo=UTC)
    assert wallet.expire(last_day_in_shanghai) == []
    first_day_after = datetime(2027, 1, 31, 16, 1, tzinfo=UTC)  # 2027-02-01 00:01 in Shanghai
    assert [(lot.lot_id, n) for lot, n in wallet.expire(first_day_after)] == [("jan", 100)]
    assert wallet.balance == 40
    assert [lot.lot_id for lot in wallet.expiring_soon(first_day_after, 30)] == ["feb"]


def test_a_redemption_spends_the_soonest_expiring_lot_first_even_if_it_was_earned_later() -> None:
    short_lived = DEFAULT_POLICY.model_copy(update={"expiry_months": 3})
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("long", 100, START))  # expires 2027-01-31
    wallet.credit(domain.new_lot("short", 100, START + timedelta(days=1), short_lived, SHANGHAI))  # 2025-04-30
    taken = wallet.redeem(150, START + timedelta(days=10))
    assert [(lot.lot_id, n) for lot, n in taken] == [("short", 100), ("long", 50)]


def test_a_lot_on_its_last_day_can_be_redeemed_and_only_its_remainder_expires() -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("old", 100, datetime(2025, 1, 10, tzinfo=UTC)))  # expires 2027-01-31
    wallet.credit(lot("spent", 60, datetime(2025, 1, 12, tzinfo=UTC)))  # expires 2027-01-31 too
    wallet.credit(lot("new", 40, datetime(2025, 2, 10, tzinfo=UTC)))  # expires 2027-02-28
    last_evening = datetime(2027, 1, 31, 15, 30, tzinfo=UTC)  # 23:30 on the last day in Shanghai
    assert [(lot.lot_id, n) for lot, n in wallet.redeem(130, last_evening)] == [("old", 100), ("spent", 30)]
    assert [(g.expires_on, g.points) for g in wallet.expiring(last_evening)] == [
        (date(2027, 1, 31), 30),
        (date(2027, 2, 28), 40),
    ]
    next_morning = datetime(2027, 1, 31, 16, 30, tzinfo=UTC)
    assert [(lot.lot_id, n) for lot, n in wallet.expire(next_morning)] == [("spent", 30)]
    assert wallet.balance == 40
    assert wallet.expire(next_morning) == []  # nothing expires twice


def test_a_fully_redeemed_lot_is_neither_announced_nor_expired() -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("jan", 100, datetime(2025, 1, 10, tzinfo=UTC)))  # expires 2027-01-31
    wallet.redeem(100, datetime(2027, 1, 1, tzinfo=UTC))
    assert wallet.expiring_soon(datetime(2027, 1, 5, tzinfo=UTC), 30) == []
    assert wallet.expire(datetime(2027, 2, 2, tzinfo=UTC)) == []
    assert wallet.expiring(datetime(2027, 1, 5, tzinfo=UTC)) == []


def test_points_already_expired_when_their_purchase_arrives_are_not_awarded() -> None:
    now = datetime(2027, 3, 15, 4, tzinfo=UTC)
    twenty_five_months_ago = datetime(2025, 2, 15, 4, tzinfo=UTC)  # expired 2027-02-28
    twenty_four_months_ago = datetime(2025, 3, 1, 4, tzinfo=UTC)  # expires 2027-03-31: still usable
    assert domain.expired_on_arrival(twenty_five_months_ago, now, SHANGHAI, 24)
    assert not domain.expired_on_arrival(twenty_four_months_ago, now, SHANGHAI, 24)
    last_day_in_shanghai = datetime(2027, 2, 28, 15, 59, tzinfo=UTC)
    assert not domain.expired_on_arrival(twenty_five_months_ago, last_day_in_shanghai, SHANGHAI, 24)


def test_a_late_purchase_earns_a_lot_dated_when_it_happened() -> None:
    occurred = datetime(2025, 3, 1, 4, tzinfo=UTC)
    late = lot("late", 100, occurred)
    assert (late.earned_at, late.available_at, late.expires_on) == (
        occurred,
        occurred + timedelta(days=7),
        date(2027, 3, 31),
    )
    assert late.is_available(datetime(2027, 3, 15, tzinfo=UTC), SHANGHAI)  # its return window passed long ago


def test_the_expiring_points_are_grouped_by_day_soonest_first_and_leave_out_lapsed_lots() -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    wallet.credit(lot("a", 10, datetime(2025, 3, 2, tzinfo=UTC)))
    wallet.credit(lot("b", 20, datetime(2025, 1, 2, tzinfo=UTC)))
    wallet.credit(lot("c", 30, datetime(2025, 3, 20, tzinfo=UTC)))
    groups = wallet.expiring(datetime(2025, 4, 1, tzinfo=UTC))
    assert [(g.expires_on, g.points) for g in groups] == [(date(2027, 1, 31), 20), (date(2027, 3, 31), 40)]
    assert [(g.expires_on, g.points) for g in wallet.expiring(datetime(2027, 2, 15, tzinfo=UTC))] == [
        (date(2027, 3, 31), 40)
    ]


def test_the_warning_window_runs_from_the_local_today_for_the_notice_days() -> None:
    evening_utc = datetime(2027, 1, 1, 17, tzinfo=UTC)  # already January 2nd in Shanghai
    assert domain.warning_window(evening_utc, SHANGHAI, 30) == (date(2027, 1, 2), date(2027, 2, 1))


def test_redeemed_points_are_worth_the_policy_rate() -> None:
    assert domain.redemption_value_fen(250, DEFAULT_POLICY) == 250  # 100 points = 1 yuan = 100 fen
    dearer = DEFAULT_POLICY.model_copy(update={"redemption_points_per_yuan": 200})
    assert domain.redemption_value_fen(250, dearer) == 125


# ---- the property ---------------------------------------------------------------------------

# (points, days before "now" it happened: late-arriving purchases, some already expired, and
# which expiry policy it was earned under: a policy change makes later lots expire sooner)
earn = st.tuples(st.just("earn"), st.integers(1, 5_000), st.integers(0, 900), st.sampled_from([24, 3, 36]))
refund = st.tuples(st.just("refund"), st.integers(0, 50), st.integers(1, 100))  # (which purchase, % refunded)
redeem = st.tuples(st.just("redeem"), st.integers(1, 6_000))
adjust = st.tuples(st.just("adjust"), st.integers(-3_000, 3_000).filter(bool))
expire = st.tuples(st.just("expire"))
wait = st.tuples(st.just("wait"), st.integers(1, 400))  # days: the expiry runs' as_of moves forward
operations = st.lists(st.one_of(earn, refund, redeem, adjust, wait, expire), max_size=60)


@settings(max_examples=400, deadline=None)
@given(operations)
def test_the_ledger_and_lots_stay_consistent_for_any_sequence_of_changes(ops: list[tuple]) -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    deltas: list[int] = []
    purchases: list[dict] = []  # what each purchase earned and how much was refunded/reversed
    expired_from: dict[str, int] = {}  # lot id -> points expiry took from it
    now = START
    for n, op in enumerate(ops):
        kind = op[0]
        if kind == "wait":
            now += timedelta(days=op[1])
        elif kind == "earn":
            points, days_late, months = op[1:]
            occurred = now - timedelta(days=days_late)
            policy = DEFAULT_POLICY.model_copy(update={"expiry_months": months})
            if domain.expired_on_arrival(occurred, now, SHANGHAI, months):
                purchases.append({"lot": None, "earned": 0, "amount": points * 100, "refunded": 0, "reversed": 0})
                continue  # no lot, nothing to reverse later
            lot_id = f"lot{n}"
            wallet.credit(domain.new_lot(lot_id, points, occurred, policy, SHANGHAI, purchase_id=f"p{n}"))
            purchases.append({"lot": lot_id, "earned": points, "amount": points * 100, "refunded": 0, "reversed": 0})
            deltas.append(points)
        elif kind == "refund" and purchases:
            p = purchases[op[1] % len(purchases)]
            fen = min(p["amount"] - p["refunded"], p["amount"] * op[2] // 100)
            points = domain.reversal_points(
                earned=p["earned"],
                amount_fen=p["amount"],
                refunded_before_fen=p["refunded"],
                refund_fen=fen,
                reversed_before=p["reversed"],
            )
            p["refunded"] += fen
            p["reversed"] += points
            assert p["reversed"] <= p["earned"]
            if points:
                wallet.debit(points, first_lot_id=p["lot"])
                deltas.append(-points)
        elif kind == "redeem":
            usable = {lot.lot_id for lot in wallet.lots if lot.is_available(now, SHANGHAI)}
            try:
                taken = wallet.redeem(op[1], now)
            except domain.PointsUnavailable:
                continue
            assert all(lot.lot_id in usable for lot, _ in taken), "spent a pending or expired lot"
            assert sum(n for _, n in taken) == op[1]
            # soonest-expiring first: every available lot still holding points sorts after all it took
            left = [lot for lot in wallet.lots if lot.lot_id in usable and lot.remaining > 0]
            assert all(t.expires_on <= lot.expires_on for t, _ in taken for lot in left), (
                "skipped a sooner-expiring lot"
            )
            deltas.append(-op[1])
        elif kind == "adjust":
            if op[1] > 0:
                wallet.credit(
                    domain.new_lot(f"adj{n}", op[1], now, DEFAULT_POLICY, SHANGHAI, qualifying=False, pending=False)
                )
            else:
                wallet.debit(-op[1])
            deltas.append(op[1])
        elif kind == "expire":
            remaining_before = {lot.lot_id: lot.remaining for lot in wallet.lots}
            taken = wallet.expire(now)
            for lot, points in taken:
                assert lot.is_expired(now, SHANGHAI)
                assert points == remaining_before[lot.lot_id], "expired more or less than remained"
                assert lot.lot_id not in expired_from, "a lot expired twice"
                expired_from[lot.lot_id] = points
            assert not [lot for lot in wallet.lots if lot.remaining > 0 and lot.is_expired(now, SHANGHAI)]
            if taken:
                deltas.append(-sum(n for _, n in taken))
        assert wallet.balance == sum(deltas)
        assert all(0 <= lot.remaining <= lot.points for lot in wallet.lots)
        assert all(expired_from.get(lot.lot_id, 0) <= lot.points for lot in wallet.lots)
        assert sum(lot.remaining for lot in wallet.lots) == max(wallet.balance, 0)
        assert sum(g.points for g in wallet.expiring(now)) <= max(wallet.balance, 0)
        assert wallet.available(now) <= wallet.balance
        # the release schedule the status view keeps adds up to the pending points, all still ahead,
        # and once they are all released the view's arithmetic gives what the wallet will then say
        schedule = wallet.pending_until(now)
        assert sum(n for _, n in schedule) == wallet.pending(now) and all(at > now for at, _ in schedule)
        if schedule:
            later = schedule[-1][0]
            unexpired = [
                lot for lot in wallet.lots if lot.is_pending(now, SHANGHAI) and not lot.is_expired(later, SHANGHAI)
            ]
            if len(unexpired) == len([lot for lot in wallet.lots if lot.is_pending(now, SHANGHAI)]):
                assert wallet.available(later) == wallet.available(now) + wallet.pending(now) - sum(
                    lot.remaining
                    for lot in wallet.lots
                    if lot.is_available(now, SHANGHAI) and lot.is_expired(later, SHANGHAI)
                )


def test_add_months_clamps_to_the_end_of_a_shorter_month() -> None:
    assert domain.add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert domain.add_months(date(2024, 11, 30), 3) == date(2025, 2, 28)
