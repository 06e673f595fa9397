"""Benefit rules as plain code: which benefits a tier change grants and revokes, validity, redemption.

No database, no web framework: functions of a :class:`~shared.policy.Policy`, the member's
entitlements and a point in time.

Vocabulary:

* an *entitlement* is one granted benefit of one member (a row of ``benefits.entitlements``);
* a *tier-bound* entitlement came with a tier (``tier`` is set) and is revoked when the member
  moves to a tier without that code; vouchers (and referral rewards, whose ``tier`` is None)
  are never revoked: they stay until they expire or are used;
* a *period* keys the grants that happen once per something: a birthday voucher once per year
  (period "2027"), an annual skin check once per tier-year (period = the local date the
  tier-year began), a care pack once per purchase (period = the purchase id). The database
  holds (member, code, period) unique, so re-runs and replicas never grant twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

from shared.policy import BenefitKind, BenefitRule, Policy

Status = Literal["active", "used", "revoked", "expired"]
STATUSES: tuple[Status, ...] = ("active", "used", "revoked", "expired")
REFERRAL_VOUCHER = "referral_voucher"
REFERRAL_VALID_DAYS = 365
#: a birthday voucher granted late (after the first day of the birth month) is valid at least this long
LATE_BIRTHDAY_MIN_DAYS = 31


@dataclass(frozen=True)
class Entitlement:
    """A benefit a member was granted, as far as the rules care."""

    benefit_id: str
    code: str
    kind: BenefitKind
    tier: str | None
    status: Status
    valid_from: datetime
    valid_until: datetime | None = None
    remaining_uses: int | None = None
    value_fen: int | None = None
    percent: int | None = None
    period: str | None = None


@dataclass(frozen=True)
class Grant:
    """A benefit to grant: everything of an entitlement but its id and status."""

    code: str
    kind: BenefitKind
    tier: str | None
    valid_from: datetime
    valid_until: datetime | None
    remaining_uses: int | None
    value_fen: int | None = None
    percent: int | None = None
    period: str | None = None


@dataclass(frozen=True)
class BenefitChanges:
    """What one tier change does to a member's entitlements."""

    grant: list[Grant] = field(default_factory=list)
    revoke: list[Entitlement] = field(default_factory=list)
    #: still 'active' in storage but past valid_until: to be marked expired before anything is granted
    expire: list[Entitlement] = field(default_factory=list)
    #: the previous tier-year's unused allotments (skin check), ended because a new tier-year began
    replace: list[Entitlement] = field(default_factory=list)


def valid_until(valid_from: datetime, valid_days: int | None) -> datetime | None:
    """The end of a benefit's validity; None means "while the tier is held" (or for ever)."""
    return None if valid_days is None else valid_from + timedelta(days=valid_days)


def effective_status(e: Entitlement, now: datetime) -> Status:
    """The stored status, except that an active benefit past its valid_until is expired (swept or not)."""
    if e.status == "active" and e.valid_until is not None and e.valid_until <= now:
        return "expired"
    return e.status


def in_status_view(e: Entitlement, now: datetime) -> bool:
    """Whether the member status view shows the entitlement at ``now``: granted, not revoked or ended,
    not past its validity. A used-up one stays (with no uses left) as its BenefitRedeemed left it;
    what a rebuild's BenefitsSnapshot carries."""
    return e.status in ("active", "used") and (e.valid_until is None or e.valid_until > now)


def holds(e: Entitlement, as_of: datetime) -> bool:
    """Whether the member still has this benefit for the purpose of granting it again.

    An active benefit is held until it expires. A used one is held until the end of its
    validity too: an annual skin check used this tier-year is not granted again by an upgrade
    (it comes back once its year is over, e.g. at the next review).
    """
    if effective_status(e, as_of) == "active":
        return True
    return e.status == "used" and e.valid_until is not None and e.valid_until > as_of


def grant_of(rule: BenefitRule, *, tier: str | None, valid_from: datetime, period: str | None = None) -> Grant:
    return Grant(
        code=rule.code,
        kind=rule.kind,
        tier=tier,
        valid_from=valid_from,
        valid_until=valid_until(valid_from, rule.valid_days),
        remaining_uses=rule.uses,
        value_fen=rule.value_fen,
        percent=rule.percent,
        period=period,
    )


def tier_grant_rules(policy: Policy, tier: str) -> list[BenefitRule]:
    """The benefits that come with holding ``tier`` (birthday and per-purchase ones have their own triggers)."""
    return [r for r in policy.benefits_of(tier) if r.trigger == "tier"]


def is_tier_year_rule(rule: BenefitRule) -> bool:
    """A tier benefit with a number of uses is an allotment per tier-year (the annual skin check)."""
    return rule.trigger == "tier" and rule.uses is not None


def tier_year_period(starts_at: datetime, tz: tzinfo) -> str:
    """The period key of a tier-year: the local date it began (a tier change or a review)."""
    return starts_at.astimezone(tz).date().isoformat()


def _same_terms(e: Entitlement, rule: BenefitRule) -> bool:
    # a discount of 95% is not the discount of 85%: a changed term replaces the entitlement
    return (e.code, e.kind, e.percent, e.value_fen) == (rule.code, rule.kind, rule.percent, rule.value_fen)


def _revocable(e: Entitlement) -> bool:
    return e.tier is not None and e.kind != "voucher" and e.status == "active"


def tier_benefit_changes(
    policy: Policy,
    to_tier: str,
    entitlements: Iterable[Entitlement],
    as_of: datetime,
    *,
    tier_year: str | None = None,
    new_tier_year: bool = False,
) -> BenefitChanges:
    """What moving to ``to_tier`` at ``as_of`` grants and revokes (from any tier, or on enrolment).

    * grant: each tier-triggered benefit of ``to_tier`` the member does not already hold on the
      same terms (so member->silver keeps priority_booking and adds annual_skin_check); per
      tier-year allotments are keyed by ``tier_year`` (the period);
    * revoke: each active tier-bound benefit whose code the new tier does not have, or whose terms
      (percent, face value) differ from the new tier's rule; vouchers are never revoked;
    * expire: active entitlements already past valid_until (they neither count as held nor get revoked);
    * replace: when ``new_tier_year`` (a review), the previous tier-year's unused allotments; the
      allotment of ``tier_year`` itself is kept, so the same review applied twice grants once.
    """
    rules = tier_grant_rules(policy, to_tier)
    tier_codes = {r.code for r in policy.benefits_of(to_tier)}
    rule_by_code = {r.code: r for r in rules}
    yearly = {r.code for r in rules if is_tier_year_rule(r)}
    expire: list[Entitlement] = []
    revoke: list[Entitlement] = []
    replace: list[Entitlement] = []
    kept: list[Entitlement] = []
    for e in entitlements:
        if e.status == "active" and effective_status(e, as_of) == "expired":
            expire.append(e)
        elif _revocable(e) and (
            e.code not in tier_codes or (e.code in rule_by_code and not _same_terms(e, rule_by_code[e.code]))
        ):
            revoke.append(e)
        elif new_tier_year and e.tier is not None and e.code in yearly and e.period != tier_year:
            # last tier-year's allotment ends with it, used or not: it no longer counts as held
            if e.status == "active":
                replace.append(e)
        elif e.tier is not None and holds(e, as_of):
            kept.append(e)
    grant = [
        grant_of(r, tier=to_tier, valid_from=as_of, period=tier_year if r.code in yearly else None)
        for r in rules
        if not any(_same_terms(e, r) for e in kept)
    ]
    return BenefitChanges(grant=grant, revoke=revoke, expire=expire, replace=replace)


# ---- birthday vouchers --------------------------------------------------------------------------


@dataclass(frozen=True)
class BirthdayWindow:
    """One birth month of one local year: whose voucher it is, and for which year (the period)."""

    birth_month: int
    year: int
    month_start: datetime  # local midnight of the 1st of the birth month
    month_end: datetime  # local midnight of the 1st of the following month

    @property
    def period(self) -> str:
        return str(self.year)


def birthday_window(year: int, month: int, tz: tzinfo) -> BirthdayWindow:
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return BirthdayWindow(
        birth_month=month,
        year=year,
        month_start=datetime(year, month, 1, tzinfo=tz),
        month_end=datetime(next_year, next_month, 1, tzinfo=tz),
    )


def birth_month(birthday: date) -> int:
    """The month a birthday voucher follows. A 29 February birthday is a February one every year,
    leap or not: the voucher follows the month, not the day."""
    return birthday.month


def birthday_windows(as_of: datetime, tz: tzinfo) -> list[BirthdayWindow]:
    """The birth months whose voucher may be granted at ``as_of`` (local time): this month's, on
    time, and last month's, a catch-up after downtime (last December's in January)."""
    local = as_of.astimezone(tz)
    last_year, last_month = (local.year - 1, 12) if local.month == 1 else (local.year, local.month - 1)
    return [birthday_window(local.year, local.month, tz), birthday_window(last_year, last_month, tz)]


def birthday_voucher_until(
    window: BirthdayWindow, granted_at: datetime, min_days: int = LATE_BIRTHDAY_MIN_DAYS
) -> datetime:
    """Valid until the end of the birth month; granted late (after the month's first local day:
    a catch-up, or a member enrolled during their birth month), valid at least ``min_days``."""
    on_time = granted_at < window.month_start + timedelta(days=1)
    until = window.month_end if on_time else max(window.month_end, granted_at + timedelta(days=min_days))
    return until.astimezone(UTC)


def birthday_rule(policy: Policy, tier: str) -> BenefitRule | None:
    return next((r for r in policy.benefits_of(tier) if r.trigger == "birthday"), None)


def birthday_voucher(policy: Policy, rule: BenefitRule, window: BirthdayWindow, granted_at: datetime) -> Grant:
    """The voucher of ``window``'s year; its face value is the policy's birthday_voucher_fen. Not tier-bound
    (tier None): a downgrade never revokes it, it expires."""
    min_days = max(LATE_BIRTHDAY_MIN_DAYS, rule.valid_days or 0)
    return Grant(
        code=rule.code,
        kind=rule.kind,
        tier=None,
        valid_from=granted_at,
        valid_until=birthday_voucher_until(window, granted_at, min_days),
        remaining_uses=rule.uses or 1,
        value_fen=policy.birthday_voucher_fen,
        period=window.period,
    )


def birthday_grant(policy: Policy, *, tier: str, birthday: date, as_of: datetime, tz: tzinfo) -> Grant | None:
    """The voucher due to one member at ``as_of``, or None (not their window, or their tier has none).
    Whether they already hold this year's is the database's to say (one per member, code and period)."""
    rule = birthday_rule(policy, tier)
    if rule is None:
        return None
    window = next((w for w in birthday_windows(as_of, tz) if w.birth_month == birth_month(birthday)), None)
    return None if window is None else birthday_voucher(policy, rule, window, as_of)


# ---- per-purchase benefits ----------------------------------------------------------------------


@dataclass(frozen=True)
class TierChange:
    """A tier a member moved to, and when the move took effect (from TierChanged)."""

    effective_at: datetime
    to_tier: str


@dataclass(frozen=True)
class LargePurchase:
    """A purchase large enough for a care pack when it was recorded, kept so that a TierChanged that
    arrives after it can judge it again."""

    purchase_id: str
    amount_fen: int
    occurred_at: datetime


def tier_held_at(policy: Policy, changes: Iterable[TierChange], at: datetime) -> str:
    """The tier a member held at ``at``: that of the latest change in effect then (one effective at
    ``at`` itself counts); before any change, the lowest tier. A purchase is judged by it."""
    in_effect = [c for c in changes if c.effective_at <= at]
    if not in_effect:
        return policy.tiers[0].code
    return max(in_effect, key=lambda c: c.effective_at).to_tier


def purchases_since(purchases: Iterable[LargePurchase], since: datetime) -> list[LargePurchase]:
    """The purchases a tier change effective at ``since`` judges again: those made at or after it (the
    same instant as :func:`tier_held_at`), oldest first."""
    return sorted((p for p in purchases if p.occurred_at >= since), key=lambda p: (p.occurred_at, p.purchase_id))


def purchase_grants(
    policy: Policy, *, tier: str, purchase_id: str, amount_fen: int, occurred_at: datetime
) -> list[Grant]:
    """A purchase of at least ``care_pack_min_purchase_fen`` grants each per-purchase benefit of the
    member's tier (the care pack), once per purchase (period = the purchase id), valid from the purchase.
    Tier-bound: a downgrade to a tier without it revokes an unused one."""
    if amount_fen < policy.care_pack_min_purchase_fen:
        return []
    return [
        grant_of(r, tier=tier, valid_from=occurred_at, period=purchase_id)
        for r in policy.benefits_of(tier)
        if r.trigger == "purchase"
    ]


def referral_voucher_fen(policy: Policy, referral_count: int) -> int:
    """The referrer's voucher: the milestone one on exactly the milestone referral (the 3rd), else the usual."""
    if referral_count == policy.referral.milestone_count:
        return policy.referral.milestone_voucher_fen
    return policy.referral.voucher_fen


def referrer_reward(policy: Policy, referral_count: int, completed_at: datetime) -> Grant:
    return Grant(
        code=REFERRAL_VOUCHER,
        kind="voucher",
        tier=None,
        valid_from=completed_at,
        valid_until=valid_until(completed_at, REFERRAL_VALID_DAYS),
        remaining_uses=1,
        value_fen=referral_voucher_fen(policy, referral_count),
    )


def referee_reward(policy: Policy, completed_at: datetime) -> Grant:
    return Grant(
        code=policy.referral.referee_benefit,
        kind="entitlement",
        tier=None,
        valid_from=completed_at,
        valid_until=valid_until(completed_at, REFERRAL_VALID_DAYS),
        remaining_uses=1,
    )


def redemption_refusal(e: Entitlement, now: datetime) -> str | None:
    """Why this entitlement cannot be redeemed at ``now``, or None when it can."""
    status = effective_status(e, now)
    if status == "revoked":
        return "This benefit was revoked."
    if status == "expired":
        return "This benefit has expired."
    if status == "used" or (e.remaining_uses is not None and e.remaining_uses <= 0):
        return "This benefit is used up."
    if e.valid_from > now:
        return "This benefit is not valid yet."
    return None


def can_redeem(e: Entitlement, now: datetime) -> bool:
    return redemption_refusal(e, now) is None


def after_redemption(e: Entitlement) -> tuple[int | None, Status]:
    """(remaining_uses, status) after one use; unlimited benefits (None) stay active."""
    if e.remaining_uses is None:
        return None, "active"
    remaining = e.remaining_uses - 1
    return remaining, ("used" if remaining == 0 else "active")


def by_status(entitlements: Sequence[Entitlement], status: Status | None, now: datetime) -> list[Entitlement]:
    return [e for e in entitlements if status is None or effective_status(e, now) == status]
