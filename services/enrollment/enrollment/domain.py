"""Enrollment's rules as plain code: referrals, refunds and the member status view.

Nothing here touches the database, HTTP or Kafka. The commands and the referral job ask these
functions for their decisions and keep the SQL that applies them; the status view's handlers
build its documents here. Three rules:

* a referral completes when the referee has a purchase that has outlived the return window
  (``pending_days``) and of which at least the policy's ``min_purchase_fen`` remains after
  refunds; the earliest such purchase is the one that completes it;
* refunds of a purchase never add up to more than the purchase: a refund is accepted only if it
  fits in what remains;
* the status view is a projection: points, tier and progress are snapshots (the newest replaces
  the document), benefits are entries by ``benefit_id`` (granted or redeemed: the entry is replaced;
  revoked: it is removed). Changes of different documents or different benefits commute. A rebuild
  (PointsSnapshot, TierSnapshot, BenefitsSnapshot) replaces a part wholesale: the points, the tier
  and progress, or every benefit entry at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal

from shared.events import (
    BenefitGranted,
    BenefitRedeemed,
    BenefitRevoked,
    BenefitsSnapshot,
    PointsChanged,
    PointsSnapshot,
    TierChanged,
    TierProgressChanged,
    TierSnapshot,
)

#: a POS or app clock a little ahead of ours is not "in the future"
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: the status view lists points expiring this soon
EXPIRING_HORIZON = timedelta(days=90)
#: no 0/O, 1/I: a referral code is read aloud and typed in
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
DEFAULT_TIER_NAMES = {"member": "普通会员", "silver": "银卡会员", "gold": "金卡会员", "diamond": "钻石会员"}

#: a JSON document of the status view, as stored
Doc = dict[str, Any]


def new_referral_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))


def implausible_amount(amount_fen: int, max_purchase_fen: int) -> bool:
    """A single purchase above the chain's ceiling (``Policy.max_purchase_fen``) is not believed."""
    return amount_fen > max_purchase_fen


def in_the_future(when: datetime, now: datetime) -> bool:
    """A time a client reports that is later than now, beyond the clock skew we tolerate."""
    return when > now + MAX_CLOCK_SKEW


# ---- referrals ----------------------------------------------------------------------------------


class ReferralRefused(Exception):
    """A referral code that cannot be used for this enrolment."""


class UnknownReferralCode(ReferralRefused):
    """No such code in the chain (another chain's code is reported exactly like an unknown one)."""


class SelfReferral(ReferralRefused):
    """The code belongs to a member with the enrolling phone."""


@dataclass(frozen=True)
class Referrer:
    member_id: str
    chain_id: str
    phone: str


def referrer_for(referrer: Referrer | None, *, chain_id: str, phone: str) -> str:
    """The member id a referral code gives the new member as referrer, or why it cannot."""
    if referrer is None or referrer.chain_id != chain_id:
        raise UnknownReferralCode  # nothing leaks across chains
    if referrer.phone == phone:
        raise SelfReferral
    return referrer.member_id


@dataclass(frozen=True)
class Purchase:
    """What the referral and refund rules need of a recorded purchase."""

    purchase_id: str
    member_id: str
    amount_fen: int
    refunded_fen: int
    occurred_at: datetime

    @property
    def remaining_fen(self) -> int:
        return remaining_fen(self.amount_fen, self.refunded_fen)


def referral_window_end(as_of: datetime, pending_days: int) -> datetime:
    """A purchase made at or before this instant has outlived the return window as of ``as_of``."""
    return as_of - timedelta(days=pending_days)


def completes_referral(purchase: Purchase, *, as_of: datetime, pending_days: int, min_purchase_fen: int) -> bool:
    """A purchase past the return window of which at least the policy's amount was kept."""
    return purchase.remaining_fen >= min_purchase_fen and purchase.occurred_at <= referral_window_end(
        as_of, pending_days
    )


def referral_purchase(
    purchases: Iterable[Purchase], *, as_of: datetime, pending_days: int, min_purchase_fen: int
) -> str | None:
    """The purchase that completes a pending referral as of ``as_of``: the referee's earliest one
    (by time, then id) that :func:`completes_referral`; None while there is none."""
    due = [
        p
        for p in purchases
        if completes_referral(p, as_of=as_of, pending_days=pending_days, min_purchase_fen=min_purchase_fen)
    ]
    return min(due, key=lambda p: (p.occurred_at, p.purchase_id)).purchase_id if due else None


# ---- refunds ------------------------------------------------------------------------------------


def remaining_fen(amount_fen: int, refunded_fen: int) -> int:
    return amount_fen - refunded_fen


class RefundRefused(Exception):
    """A refund that cannot be recorded against this purchase."""


class NotThePurchasesMember(RefundRefused):
    """The request names another member than the purchase's."""


class RefundInTheFuture(RefundRefused):
    pass


class RefundBeforePurchase(RefundRefused):
    pass


class RefundExceedsPurchase(RefundRefused):
    def __init__(self, amount_fen: int, remaining_fen: int) -> None:
        super().__init__(amount_fen, remaining_fen)
        self.amount_fen = amount_fen
        self.remaining_fen = remaining_fen


def accept_refund(
    purchase: Purchase, *, amount_fen: int, occurred_at: datetime, member_id: str | None, now: datetime
) -> Purchase:
    """The purchase after a new refund of ``amount_fen``, or the reason it is refused (checked in
    this order: another member, in the future, before the purchase, more than remains)."""
    if member_id is not None and member_id != purchase.member_id:
        raise NotThePurchasesMember
    if in_the_future(occurred_at, now):
        raise RefundInTheFuture
    if occurred_at < purchase.occurred_at:
        raise RefundBeforePurchase
    if amount_fen > purchase.remaining_fen:
        raise RefundExceedsPurchase(amount_fen, purchase.remaining_fen)
    return replace(purchase, refunded_fen=purchase.refunded_fen + amount_fen)


# ---- the member status view ---------------------------------------------------------------------

SnapshotColumn = Literal["points", "tier", "progress"]


@dataclass(frozen=True)
class SetSnapshot:
    """Replace one snapshot document of the view (the newest of a member's events wins)."""

    column: SnapshotColumn
    doc: Doc


@dataclass(frozen=True)
class KeepBenefit:
    """Add or replace one benefit entry (granted, or its remaining uses after a redemption)."""

    benefit: Doc

    @property
    def benefit_id(self) -> str:
        return str(self.benefit["benefit_id"])


@dataclass(frozen=True)
class DropBenefit:
    """Remove one benefit entry (revoked)."""

    benefit_id: str


@dataclass(frozen=True)
class SetBenefits:
    """Replace every benefit entry at once (a rebuild's BenefitsSnapshot): entries it lacks are gone."""

    benefits: Mapping[str, Doc]


Change = SetSnapshot | KeepBenefit | DropBenefit | SetBenefits


@dataclass(frozen=True)
class StatusDocument:
    """A member's row of the view: the snapshots (None until the first event) and the benefits."""

    tier: Doc | None = None
    progress: Doc | None = None
    points: Doc | None = None
    benefits: Mapping[str, Doc] = field(default_factory=dict)


def points_changed(d: PointsChanged | PointsSnapshot) -> SetSnapshot:
    """A points change and a rebuild's snapshot of the points set the same document."""
    return SetSnapshot(
        "points",
        {
            "balance": d.balance,
            "available": d.available,
            "pending": d.pending,
            "expiring": [e.model_dump(mode="json") for e in d.expiring] if d.expiring is not None else None,
            "pending_until": (
                [p.model_dump(mode="json") for p in d.pending_until] if d.pending_until is not None else None
            ),
        },
    )


def tier_changed(d: TierChanged) -> SetSnapshot:
    return SetSnapshot(
        "tier",
        {
            "code": d.to_tier,
            "name": d.to_tier_name or DEFAULT_TIER_NAMES.get(d.to_tier, d.to_tier),
            "since": d.effective_at.isoformat(),
            "review_at": d.review_at.isoformat() if d.review_at else None,
        },
    )


def progress_changed(d: TierProgressChanged) -> SetSnapshot:
    return SetSnapshot("progress", d.model_dump(mode="json"))


def tier_snapshot(d: TierSnapshot) -> tuple[SetSnapshot, SetSnapshot]:
    """A rebuild's snapshot of the tier sets the documents a TierChanged and a TierProgressChanged
    about the same state set: the tier, then the progress."""
    tier = SetSnapshot(
        "tier",
        {
            "code": d.tier,
            "name": d.tier_name or DEFAULT_TIER_NAMES.get(d.tier, d.tier),
            "since": d.since.isoformat(),
            "review_at": d.review_at.isoformat() if d.review_at else None,
        },
    )
    progress = progress_changed(
        TierProgressChanged(
            tier=d.tier,
            tier_name=d.tier_name,
            next_tier=d.next_tier,
            spend_fen=d.spend_fen,
            spend_needed_fen=d.spend_needed_fen,
            points=d.points,
            points_needed=d.points_needed,
            review_at=d.review_at,
            policy_version=d.policy_version,
        )
    )
    return tier, progress


def _benefit_entry(benefit_id: str, code: str, remaining_uses: int | None, valid_until: datetime | None) -> Doc:
    return {
        "benefit_id": benefit_id,
        "code": code,
        "remaining_uses": remaining_uses,
        "valid_until": valid_until.isoformat() if valid_until else None,
    }


def benefit_changed(d: BenefitGranted | BenefitRedeemed) -> KeepBenefit:
    """Granted and redeemed have the same effect: the entitlement as it now is."""
    return KeepBenefit(_benefit_entry(d.benefit_id, d.code, d.remaining_uses, d.valid_until))


def benefits_snapshot(d: BenefitsSnapshot) -> SetBenefits:
    """A rebuild's snapshot of the benefits: every entry, as a grant of each would make it."""
    return SetBenefits(
        {b.benefit_id: _benefit_entry(b.benefit_id, b.code, b.remaining_uses, b.valid_until) for b in d.benefits}
    )


def benefit_revoked(d: BenefitRevoked) -> DropBenefit:
    return DropBenefit(d.benefit_id)


def apply(document: StatusDocument | None, change: Change) -> StatusDocument:
    """The view document after one change (a member without a row starts from an empty one).
    The SQL store does the same with upserts: see the integration test that compares them."""
    document = document or StatusDocument()
    if isinstance(change, SetSnapshot):
        return replace(document, **{change.column: change.doc})
    if isinstance(change, KeepBenefit):
        return replace(document, benefits={**document.benefits, change.benefit_id: change.benefit})
    if isinstance(change, SetBenefits):
        return replace(document, benefits=dict(change.benefits))
    return replace(document, benefits={k: v for k, v in document.benefits.items() if k != change.benefit_id})


def touches(change: Change) -> tuple[str, str]:
    """What a change replaces or removes: two changes that touch different things commute. Replacing
    every benefit touches all of them (``("benefit", "*")``: see :func:`commute`)."""
    if isinstance(change, SetSnapshot):
        return ("snapshot", change.column)
    if isinstance(change, SetBenefits):
        return ("benefit", "*")
    return ("benefit", change.benefit_id)


def commute(a: Change, b: Change) -> bool:
    """Whether applying ``a`` then ``b`` gives the view ``b`` then ``a`` gives: they touch different
    things (a replacement of every benefit entry touches each of them)."""
    (kind_a, what_a), (kind_b, what_b) = touches(a), touches(b)
    if kind_a != kind_b:
        return True
    if kind_a == "benefit" and "*" in (what_a, what_b):
        return False
    return what_a != what_b


@dataclass(frozen=True)
class StatusView:
    """What the status endpoint shows as of an instant, as documents."""

    tier: Doc
    progress: Doc
    points: Doc
    expiring: list[Doc]
    benefits: list[Doc]


def points_now(points: Doc, now: datetime) -> Doc:
    """The points part of the view as of ``now``: pending points whose return window has passed since
    the last PointsChanged count as available (points release them without an event)."""
    schedule = points.get("pending_until")
    if not schedule or points.get("available") is None or points.get("pending") is None:
        return points
    released = sum(p["points"] for p in schedule if datetime.fromisoformat(p["available_at"]) <= now)
    return {**points, "available": points["available"] + released, "pending": points["pending"] - released}


def status_as_of(document: StatusDocument | None, *, enrolled_at: datetime, now: datetime) -> StatusView:
    """The view as of ``now``: a member tiering never announced is a 普通会员 since enrolment; the newest
    review date tiering announced for the tier held wins; points released since the last event count
    as available; only points expiring within :data:`EXPIRING_HORIZON` are listed; expired benefits
    drop out and the rest are sorted by code, then id."""
    document = document or StatusDocument()
    tier = document.tier or {
        "code": "member",
        "name": DEFAULT_TIER_NAMES["member"],
        "since": enrolled_at.isoformat(),
        "review_at": None,
    }
    progress = document.progress or {}
    if progress.get("review_at") and progress.get("tier") == tier["code"]:
        tier = {**tier, "review_at": progress["review_at"]}  # the newest review date tiering announced
    points = points_now(document.points or {"balance": 0}, now)
    horizon: date = (now + EXPIRING_HORIZON).date()
    expiring = [e for e in (points.get("expiring") or []) if date.fromisoformat(e["expires_on"]) <= horizon]
    benefits = sorted(
        (
            b
            for b in document.benefits.values()
            if b["valid_until"] is None or datetime.fromisoformat(b["valid_until"]) > now
        ),  # expired ones drop out
        key=lambda b: (b["code"], b["benefit_id"]),
    )
    return StatusView(tier=tier, progress=progress, points=points, expiring=expiring, benefits=benefits)


# ---- personal data (SPEC §8) --------------------------------------------------------------------

#: below this age a member's enrolment needs a guardian's consent
GUARDIAN_AGE = 14
#: the purposes a member consents to, as in the consent history (``guardian``: a guardian consented
#: to the enrolment of a member under 14)
CONSENT_PURPOSES = ("marketing", "sms", "email", "sensitive_data")


def age_on(birthday: date, today: date) -> int:
    """Whole years from ``birthday`` to ``today`` (a 29 February birthday counts on 1 March)."""
    years = today.year - birthday.year
    return years - 1 if (today.month, today.day) < (birthday.month, birthday.day) else years


def needs_guardian_consent(birthday: date, today: date) -> bool:
    return age_on(birthday, today) < GUARDIAN_AGE


def consent_changes(before: Mapping[str, bool] | None, after: Mapping[str, bool]) -> list[tuple[str, bool]]:
    """The history rows a change of consents makes, as (purpose, granted): at enrolment (``before``
    None) one per purpose, granted or not; afterwards one per purpose whose answer changed."""
    return [
        (purpose, bool(after.get(purpose, False)))
        for purpose in CONSENT_PURPOSES
        if before is None or bool(before.get(purpose, False)) != bool(after.get(purpose, False))
    ]


def treatment_details(items: Iterable[Mapping[str, Any]], *, sensitive_consent: bool) -> list[dict[str, Any]]:
    """What enrollment keeps of a purchase's items: everything with the member's ``sensitive_data``
    consent; without it only the amounts (what was bought is sensitive personal information)."""
    if sensitive_consent:
        return [dict(i) for i in items]
    return [{"amount_fen": i["amount_fen"], "qty": i["qty"]} for i in items]
