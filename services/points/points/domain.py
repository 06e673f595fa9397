"""The points programme as plain code (SPEC §4): earning, lots, expiry, reversal, redemption.

Every number comes from a :class:`shared.policy.Policy`; nothing here touches the
database, HTTP or Kafka. A member's points live in *lots* (one per positive credit);
the :class:`Wallet` is the member's balance plus the lots still holding points, and
every change goes through it so that one invariant always holds::

    sum(lot.remaining) == max(balance, 0)

A negative balance (a refund reversed points already spent) is a debt: it is repaid
out of the next credit before that credit's lot holds anything.

Lots are spent soonest-expiring first (for lots earned under one policy that is the
oldest first), so a redemption never leaves points to expire that it could have used.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.policy import Earning, Policy

# A purchase keyed in at the till a moment "before" the enrolment (the POS clock runs a little
# behind ours) is still the new member's first purchase.
ENROLMENT_CLOCK_SKEW = timedelta(minutes=5)


# ---- earning ------------------------------------------------------------------------------------


def in_new_member_window(occurred_at: datetime, enrolled_at: datetime, earning: Earning) -> bool:
    """新客 double points: a purchase made less than ``new_member_days`` after enrolment."""
    return enrolled_at - ENROLMENT_CLOCK_SKEW <= occurred_at < enrolled_at + timedelta(days=earning.new_member_days)


def purchase_points(amount_fen: int, occurred_at: datetime, enrolled_at: datetime, earning: Earning) -> int:
    """Points per whole yuan spent (floor), multiplied in the new-member window."""
    points = (amount_fen // 100) * earning.points_per_yuan
    if in_new_member_window(occurred_at, enrolled_at, earning):
        points *= earning.new_member_multiplier
    return points


def behaviour_points(kind: str, earning: Earning) -> int:
    """Points for an attended activity; an activity the programme does not reward earns 0."""
    return earning.behaviour_points.get(kind, 0)


def before_enrolment(occurred_at: datetime, enrolled_at: datetime) -> bool:
    """An activity dated before the member enrolled (beyond the till's clock skew) earns nothing: each month's
    cap would otherwise be a fresh allowance for every month back-dated into (docs/decisions/0024)."""
    return occurred_at < enrolled_at - ENROLMENT_CLOCK_SKEW


def capped_award(points: int, awarded_this_month: int, monthly_cap: int) -> tuple[int, int]:
    """(awarded, capped): what fits under the monthly behaviour cap is awarded, the rest is capped."""
    room = max(0, monthly_cap - awarded_this_month)
    awarded = min(points, room)
    return awarded, points - awarded


def local_month(when: datetime, tz: ZoneInfo) -> date:
    """The first day of ``when``'s calendar month in the chain's time zone (the behaviour cap's key)."""
    return when.astimezone(tz).date().replace(day=1)


def add_months(day: date, months: int) -> date:
    """The same day ``months`` later, clamped to the end of a shorter month."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def expires_on(earned_at: datetime, tz: ZoneInfo, expiry_months: int) -> date:
    """The last day of the month ``expiry_months`` after the month the points were earned in (local)."""
    month = add_months(earned_at.astimezone(tz).date().replace(day=1), expiry_months)
    return month.replace(day=calendar.monthrange(month.year, month.month)[1])


def first_unexpired_day(now: datetime, tz: ZoneInfo) -> date:
    """The expiry rule's one cut-off: as of ``now``, points whose expiry day is before this day have
    expired; it is the chain's local today (points are still usable on their expiry day). The expiry
    job selects the lots to take away with it."""
    return now.astimezone(tz).date()


def has_expired(expires_on: date, now: datetime, tz: ZoneInfo) -> bool:
    """Whether points expiring on ``expires_on`` have expired as of ``now`` (see :func:`first_unexpired_day`)."""
    return expires_on < first_unexpired_day(now, tz)


def expired_on_arrival(earned_at: datetime, now: datetime, tz: ZoneInfo, expiry_months: int) -> bool:
    """A credit that reaches us after its lot would have expired (a purchase keyed in 25 months late).

    The choice: such a credit earns no lot at all (the ledger records a zero entry saying why).
    Awarding it and expiring it at the next run would show the member a balance they cannot
    spend, publish an earn and an expire for nothing, and let a later refund of the purchase
    reverse points that were never usable.
    """
    return has_expired(expires_on(earned_at, tz, expiry_months), now, tz)


def warning_window(now: datetime, tz: ZoneInfo, notice_days: int) -> tuple[date, date]:
    """(first, last) expiry day of the lots to announce now: not yet expired, expiring within notice.
    The expiry job selects the lots to announce with these bounds."""
    today = first_unexpired_day(now, tz)
    return today, today + timedelta(days=notice_days)


def in_warning_window(expires_on: date, now: datetime, tz: ZoneInfo, notice_days: int) -> bool:
    """Whether points expiring on ``expires_on`` are to be announced as of ``now`` (see :func:`warning_window`)."""
    first, last = warning_window(now, tz, notice_days)
    return first <= expires_on <= last


def redemption_value_fen(points: int, policy: Policy) -> int:
    """What redeemed points are worth (100 points = 1 yuan by default), in whole fen."""
    return points * 100 // policy.redemption_points_per_yuan


def available_at(earned_at: datetime, pending_days: int) -> datetime:
    """Earned points are pending until the return window has passed."""
    return earned_at + timedelta(days=pending_days)


def reversal_points(
    *, earned: int, amount_fen: int, refunded_before_fen: int, refund_fen: int, reversed_before: int
) -> int:
    """Points to reverse for one refund of a purchase that earned ``earned`` points.

    Proportional to the refunded amount, computed on the running total of refunds so that
    rounding never loses a point (refunding everything reverses everything) and the
    reversals of a purchase never add up to more than it earned.
    """
    if amount_fen <= 0 or earned <= 0:
        return 0
    refunded = min(amount_fen, refunded_before_fen + refund_fen)
    due = earned * refunded // amount_fen
    return max(0, min(earned, due) - reversed_before)


# ---- lots and the wallet ------------------------------------------------------------------------


class PointsUnavailable(Exception):
    """A redemption the member's points cannot cover."""


class NegativeBalance(PointsUnavailable):
    def __init__(self, balance: int) -> None:
        super().__init__(f"The balance is negative ({balance}): redemption is blocked until it is repaid.")
        self.balance = balance


class InsufficientPoints(PointsUnavailable):
    def __init__(self, wanted: int, available: int) -> None:
        super().__init__(f"{wanted} points requested but only {available} are available.")
        self.wanted = wanted
        self.available = available


@dataclass
class Lot:
    lot_id: str
    points: int
    remaining: int
    earned_at: datetime
    available_at: datetime
    expires_on: date
    qualifying: bool = True
    purchase_id: str | None = None
    expiry_notified: bool = False  # PointsExpiringSoon was published for it

    def is_expired(self, now: datetime, tz: ZoneInfo) -> bool:
        return has_expired(self.expires_on, now, tz)

    def is_available(self, now: datetime, tz: ZoneInfo) -> bool:
        return self.available_at <= now and not self.is_expired(now, tz)

    def is_pending(self, now: datetime, tz: ZoneInfo) -> bool:
        return self.available_at > now and not self.is_expired(now, tz)


def new_lot(
    lot_id: str,
    points: int,
    earned_at: datetime,
    policy: Policy,
    tz: ZoneInfo,
    *,
    qualifying: bool = True,
    purchase_id: str | None = None,
    pending: bool = True,
) -> Lot:
    """A lot for a credit of ``points`` earned at ``earned_at`` (pending unless ``pending`` is False)."""
    return Lot(
        lot_id=lot_id,
        points=points,
        remaining=points,
        earned_at=earned_at,
        available_at=available_at(earned_at, policy.pending_days) if pending else earned_at,
        expires_on=expires_on(earned_at, tz, policy.expiry_months),
        qualifying=qualifying,
        purchase_id=purchase_id,
    )


def spending_order(lot: Lot) -> tuple[date, datetime, str]:
    """Soonest-expiring first, then oldest: the order redemptions, reversals and expiry take lots in."""
    return lot.expires_on, lot.earned_at, lot.lot_id


@dataclass(frozen=True)
class ExpiringGroup:
    expires_on: date
    points: int


@dataclass
class Wallet:
    """One member's balance and open lots, loaded under the member's row lock."""

    balance: int
    lots: list[Lot]
    tz: ZoneInfo
    created: list[Lot] = field(default_factory=list)
    #: lots loaded from storage whose ``remaining`` changed, by id
    changed: dict[str, Lot] = field(default_factory=dict)

    def available(self, now: datetime) -> int:
        """Points that may be redeemed now, less any debt."""
        free = sum(lot.remaining for lot in self.lots if lot.is_available(now, self.tz))
        return free + min(self.balance, 0)

    def pending(self, now: datetime) -> int:
        return sum(lot.remaining for lot in self.lots if lot.is_pending(now, self.tz))

    def pending_until(self, now: datetime) -> list[tuple[datetime, int]]:
        """The pending points by the instant they become available, soonest first (they add up to
        :meth:`pending`)."""
        by_time: dict[datetime, int] = {}
        for lot in self.lots:
            if lot.remaining > 0 and lot.is_pending(now, self.tz):
                by_time[lot.available_at] = by_time.get(lot.available_at, 0) + lot.remaining
        return sorted(by_time.items())

    def open_lots(self) -> list[Lot]:
        return sorted((lot for lot in self.lots if lot.remaining > 0), key=spending_order)

    def credit(self, lot: Lot) -> Lot:
        """Add a lot's points; a debt is repaid out of them first."""
        debt = max(0, -self.balance)
        lot.remaining = lot.points - min(debt, lot.points)
        self.balance += lot.points
        self.lots.append(lot)
        self.created.append(lot)
        return lot

    def debit(self, points: int, *, first_lot_id: str | None = None) -> list[tuple[Lot, int]]:
        """Take ``points`` away (a reversal or a negative adjustment), whatever the lots' state.

        The named lot (the refunded purchase's own) goes first, then the oldest lots; what
        the lots cannot cover leaves the balance negative.
        """
        order = sorted(self.open_lots(), key=lambda lot: lot.lot_id != first_lot_id)  # stable: spending order
        taken = self._take(order, points)
        self.balance -= points
        return taken

    def redeem(self, points: int, now: datetime) -> list[tuple[Lot, int]]:
        """Spend ``points`` from the soonest-expiring available lots; never pending or expired ones.

        A lot on its last day is still available; what a redemption takes from it is gone from
        ``remaining``, so the expiry that follows takes only what is left.
        """
        if self.balance < 0:
            raise NegativeBalance(self.balance)
        available = self.available(now)
        if points > available:
            raise InsufficientPoints(points, available)
        taken = self._take([lot for lot in self.open_lots() if lot.is_available(now, self.tz)], points)
        self.balance -= points
        return taken

    def expire(self, now: datetime) -> list[tuple[Lot, int]]:
        """Take away what is left in the lots whose expiry day has passed (local time)."""
        expired = [lot for lot in self.open_lots() if lot.is_expired(now, self.tz)]
        total = sum(lot.remaining for lot in expired)
        taken = self._take(expired, total)
        self.balance -= total
        return taken

    def expiring_soon(self, now: datetime, notice_days: int) -> list[Lot]:
        """Open lots not yet announced that expire within ``notice_days`` (and have not yet expired)."""
        return [
            lot
            for lot in self.open_lots()
            if not lot.expiry_notified and in_warning_window(lot.expires_on, now, self.tz, notice_days)
        ]

    def expiring(self, now: datetime) -> list[ExpiringGroup]:
        """The points still held, by expiry day, soonest first (lots already expired but not yet
        taken away by the expiry run are left out: they can no longer be spent)."""
        by_day: dict[date, int] = {}
        for lot in self.lots:
            if lot.remaining > 0 and not lot.is_expired(now, self.tz):
                by_day[lot.expires_on] = by_day.get(lot.expires_on, 0) + lot.remaining
        return [ExpiringGroup(day, points) for day, points in sorted(by_day.items())]

    def _take(self, lots: list[Lot], points: int) -> list[tuple[Lot, int]]:
        taken: list[tuple[Lot, int]] = []
        left = points
        for lot in lots:
            if left <= 0:
                break
            take = min(lot.remaining, left)
            lot.remaining -= take
            left -= take
            taken.append((lot, take))
            if all(lot is not new for new in self.created):  # new lots are inserted as they end up
                self.changed[lot.lot_id] = lot
        return taken
