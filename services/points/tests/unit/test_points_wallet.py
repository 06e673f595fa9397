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


# ---- the property ---------------------------------------------------------------------------

earn = st.tuples(st.just("earn"), st.integers(1, 5_000))
refund = st.tuples(st.just("refund"), st.integers(0, 50), st.integers(1, 100))  # (which purchase, % refunded)
redeem = st.tuples(st.just("redeem"), st.integers(1, 6_000))
adjust = st.tuples(st.just("adjust"), st.integers(-3_000, 3_000).filter(bool))
expire = st.tuples(st.just("expire"))
wait = st.tuples(st.just("wait"), st.integers(1, 400))  # days
operations = st.lists(st.one_of(earn, refund, redeem, adjust, wait, expire), max_size=60)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_ledger_and_lots_stay_consistent_for_any_sequence_of_changes(ops: list[tuple]) -> None:
    wallet = domain.Wallet(0, [], SHANGHAI)
    deltas: list[int] = []
    purchases: list[dict] = []  # what each purchase earned and how much was refunded/reversed
    now = START
    for n, op in enumerate(ops):
        kind = op[0]
        if kind == "wait":
            now += timedelta(days=op[1])
        elif kind == "earn":
            lot_id = f"lot{n}"
            wallet.credit(lot(lot_id, op[1], now, purchase_id=f"p{n}"))
            purchases.append({"lot": lot_id, "earned": op[1], "amount": op[1] * 100, "refunded": 0, "reversed": 0})
            deltas.append(op[1])
        elif kind == "refund" and purchases:
            p = purchases[op[1] % len(purchases)]
            fen = min(p["amount"] - p["refunded"], p["amount"] * op[2] // 100)
            points = domain.reversal_points(earned=p["earned"], amount_fen=p["amount"],
                                            refunded_before_fen=p["refunded"], refund_fen=fen,
                                            reversed_before=p["reversed"])
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
            deltas.append(-op[1])
        elif kind == "adjust":
            if op[1] > 0:
                wallet.credit(domain.new_lot(f"adj{n}", op[1], now, DEFAULT_POLICY, SHANGHAI, qualifying=False,
                                             pending=False))
            else:
                wallet.debit(-op[1])
            deltas.append(op[1])
        elif kind == "expire":
            taken = wallet.expire(now)
            assert all(lot.is_expired(now, SHANGHAI) for lot, _ in taken)
            if taken:
                deltas.append(-sum(n for _, n in taken))
        assert wallet.balance == sum(deltas)
        assert all(lot.remaining >= 0 for lot in wallet.lots)
        assert all(lot.remaining <= lot.points for lot in wallet.lots)
        assert sum(lot.remaining for lot in wallet.lots) == max(wallet.balance, 0)
        assert wallet.available(now) <= wallet.balance


def test_add_months_clamps_to_the_end_of_a_shorter_month() -> None:
    assert domain.add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert domain.add_months(date(2024, 11, 30), 3) == date(2025, 2, 28)
