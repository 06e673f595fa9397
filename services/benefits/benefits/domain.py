"""Benefit rules as plain code: which benefits a tier change grants and revokes, validity, redemption.

No database, no web framework: functions of a :class:`~shared.policy.Policy`, the member's
entitlements and a point in time.

Vocabulary:

* an *entitlement* is one granted benefit of one member (a row of ``benefits.entitlements``);
* a *tier-bound* entitlement came with a tier (``tier`` is set) and is revoked when the member
  moves to a tier without that code; vouchers (and referral rewards, whose ``tier`` is None)
  are never revoked: they stay until they expire or are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from shared.policy import BenefitKind, BenefitRule, Policy

Status = Literal["active", "used", "revoked", "expired"]
STATUSES: tuple[Status, ...] = ("active", "used", "revoked", "expired")
REFERRAL_VOUCHER = "referral_voucher"
REFERRAL_VALID_DAYS = 365


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


@dataclass(frozen=True)
class BenefitChanges:
    """What one tier change does to a member's entitlements."""

    grant: list[Grant] = field(default_factory=list)
    revoke: list[Entitlement] = field(default_factory=list)
    #: still 'active' in storage but past valid_until: to be marked expired before anything is granted
    expire: list[Entitlement] = field(default_factory=list)


def valid_until(valid_from: datetime, valid_days: int | None) -> datetime | None:
    """The end of a benefit's validity; None means "while the tier is held" (or for ever)."""
    return None if valid_days is None else valid_from + timedelta(days=valid_days)


def effective_status(e: Entitlement, now: datetime) -> Status:
    """The stored status, except that an active benefit past its valid_until is expired (swept or not)."""
    if e.status == "active" and e.valid_until is not None and e.valid_until <= now:
        return "expired"
    return e.status


def holds(e: Entitlement, as_of: datetime) -> bool:
    """Whether the member still has this benefit for the purpose of granting it again.

    An active benefit is held until it expires. A used one is held until the end of its
    validity too: an annual skin check used this tier-year is not granted again by an upgrade
    (it comes back once its year is over, e.g. at the next review).
    """
    if effective_status(e, as_of) == "active":
        return True
    return e.status == "used" and e.valid_until is not None and e.valid_until > as_of


def grant_of(rule: BenefitRule, *, tier: str | None, valid_from: datetime) -> Grant:
    return Grant(code=rule.code, kind=rule.kind, tier=tier, valid_from=valid_from,
                 valid_until=valid_until(valid_from, rule.valid_days), remaining_uses=rule.uses,
                 value_fen=rule.value_fen, percent=rule.percent)


def tier_grant_rules(policy: Policy, tier: str) -> list[BenefitRule]:
    """The benefits that come with holding ``tier`` (birthday and per-purchase ones have their own triggers)."""
    return [r for r in policy.benefits_of(tier) if r.trigger == "tier"]


def _same_terms(e: Entitlement, rule: BenefitRule) -> bool:
    # a discount of 95% is not the discount of 85%: a changed term replaces the entitlement
    return (e.code, e.kind, e.percent, e.value_fen) == (rule.code, rule.kind, rule.percent, rule.value_fen)


def _revocable(e: Entitlement) -> bool:
    return e.tier is not None and e.kind != "voucher" and e.status == "active"


def tier_benefit_changes(policy: Policy, to_tier: str, entitlements: Iterable[Entitlement],
                         as_of: datetime) -> BenefitChanges:
    """What moving to ``to_tier`` at ``as_of`` grants and revokes (from any tier, or on enrolment).

    * grant: each tier-triggered benefit of ``to_tier`` the member does not already hold on the
      same terms (so member->silver keeps priority_booking and adds annual_skin_check);
    * revoke: each active tier-bound benefit whose code the new tier does not have, or whose terms
      (percent, face value) differ from the new tier's rule; vouchers are never revoked;
    * expire: active entitlements already past valid_until (they neither count as held nor get revoked).
    """
    rules = tier_grant_rules(policy, to_tier)
    tier_codes = {r.code for r in policy.benefits_of(to_tier)}
    rule_by_code = {r.code: r for r in rules}
    expire: list[Entitlement] = []
    revoke: list[Entitlement] = []
    kept: list[Entitlement] = []
    for e in entitlements:
        if e.status == "active" and effective_status(e, as_of) == "expired":
            expire.append(e)
        elif _revocable(e) and (e.code not in tier_codes
                                or (e.code in rule_by_code and not _same_terms(e, rule_by_code[e.code]))):
            revoke.append(e)
        elif e.tier is not None and holds(e, as_of):
            kept.append(e)
    grant = [grant_of(r, tier=to_tier, valid_from=as_of) for r in rules
             if not any(_same_terms(e, r) for e in kept)]
    return BenefitChanges(grant=grant, revoke=revoke, expire=expire)


def referral_voucher_fen(policy: Policy, referral_count: int) -> int:
    """The referrer's voucher: the milestone one on exactly the milestone referral (the 3rd), else the usual."""
    if referral_count == policy.referral.milestone_count:
        return policy.referral.milestone_voucher_fen
    return policy.referral.voucher_fen


def referrer_reward(policy: Policy, referral_count: int, completed_at: datetime) -> Grant:
    return Grant(code=REFERRAL_VOUCHER, kind="voucher", tier=None, valid_from=completed_at,
                 valid_until=valid_until(completed_at, REFERRAL_VALID_DAYS), remaining_uses=1,
                 value_fen=referral_voucher_fen(policy, referral_count))


def referee_reward(policy: Policy, completed_at: datetime) -> Grant:
    return Grant(code=policy.referral.referee_benefit, kind="entitlement", tier=None, valid_from=completed_at,
                 valid_until=valid_until(completed_at, REFERRAL_VALID_DAYS), remaining_uses=1)


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
