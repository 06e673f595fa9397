"""Benefits' event handlers: what enrolments, tier changes, referrals and purchases grant and revoke.

Handlers run inside the consumer's batch transaction: they never commit and publish only
through ``uow.publish``. They reach the tables through the unit of work's
:class:`~benefits.store.BenefitsStore` (:func:`store_of`), and leave the rules to
:mod:`benefits.domain`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from shared.consumer import check_member_chain, foreign_member, handlers
from shared.db import Unit
from shared.events import (
    BenefitGranted,
    BenefitRevoked,
    CloudEvent,
    MemberEnrolled,
    MemberErased,
    PurchaseRecorded,
    ReferralCompleted,
    TierChanged,
)

from . import domain
from .store import B, BenefitsStore, Held, SqlStore, benefit_event, store_key
from .tables import policies

log = logging.getLogger(__name__)


async def _refuse_foreign(uow: Unit, event: CloudEvent[Any], member_ids: list[str]) -> None:
    """Refuse the event (dead-lettered) when one of its members is known in another chain than it names."""
    known = await store_of(uow).chains_of(member_ids=member_ids)
    for member_id in member_ids:
        check_member_chain(event, member_id, known.get(member_id))


def store_of(uow: Unit) -> BenefitsStore:
    """The transaction's store: the SQL one, unless a test provided another."""
    return uow.state(store_key(), SqlStore)


def _announce(uow: Unit, kind: type[B], held: list[Held]) -> None:
    for h in held:
        uow.publish(benefit_event(kind, h.entitlement), member_id=h.member_id, chain_id=h.chain_id)


async def _grant(
    uow: Unit,
    event: CloudEvent[Any],
    grants: list[tuple[str, domain.Grant]],
    *,
    source_id: str | None = None,
) -> None:
    """Store the grants and announce the ones stored (a duplicate is skipped: see
    :meth:`BenefitsStore.grant`). ``source_id`` (default: the event's id) tells apart several grants
    of one code that one event causes (care packs for several purchases)."""
    granted = await store_of(uow).grant(chain_id=event.chainid, source_id=source_id or event.id, grants=grants)
    _announce(uow, BenefitGranted, granted)


async def _sync_tier_benefits(
    uow: Unit,
    event: CloudEvent[Any],
    *,
    member_id: str,
    tier: str,
    as_of: datetime,
    new_tier_year: bool = False,
) -> None:
    """Make the member's tier-bound benefits those of ``tier``: expire, replace, revoke, then grant.

    The order matters: an expired, replaced or revoked row must stop being 'active' before a new
    row of the same code is inserted (one active tier-bound row per code). A tier-year's skin
    check is keyed by the tier-year's first day, local to the chain, so the same review twice grants one.
    """
    store = store_of(uow)
    policy = await store.policy(chain_id=event.chainid)
    if tier not in {t.code for t in policy.tiers}:
        log.warning("tier unknown to the policy; benefits left as they are", extra={"tier": tier, "event_id": event.id})
        return
    tz = await store.timezone(chain_id=event.chainid)
    changes = domain.tier_benefit_changes(
        policy,
        tier,
        await store.entitlements(member_id=member_id),
        as_of,
        tier_year=domain.tier_year_period(as_of, tz),
        new_tier_year=new_tier_year,
    )
    await store.end(targets=changes.expire, status="expired")
    # the previous tier-year's unused allotment ends now; Revoked tells the status view it is gone
    _announce(uow, BenefitRevoked, await store.end(targets=changes.replace, status="expired", ends_at=as_of))
    _announce(uow, BenefitRevoked, await store.end(targets=changes.revoke, status="revoked"))
    await _grant(uow, event, [(member_id, g) for g in changes.grant])


async def on_member_enrolled(event: CloudEvent[MemberEnrolled], uow: Unit) -> None:
    """A new member holds the lowest tier, unless a TierChanged got here first (other topic, no order)."""
    d = event.data
    store = store_of(uow)
    lowest = (await store.policy(chain_id=event.chainid)).tiers[0].code
    tier = await store.enrol(
        member_id=d.member_id, chain_id=event.chainid, tier=lowest, since=d.enrolled_at, birthday=d.birthday
    )
    if tier is None:
        raise foreign_member(event, d.member_id)
    await _sync_tier_benefits(uow, event, member_id=d.member_id, tier=tier, as_of=d.enrolled_at)


async def on_tier_changed(event: CloudEvent[TierChanged], uow: Unit) -> None:
    """Grant the new tier's benefits the member lacks; revoke tier-bound ones it does not have."""
    d = event.data
    member_id = event.subject
    store = store_of(uow)
    if not await store.move_to_tier(member_id=member_id, chain_id=event.chainid, tier=d.to_tier, since=d.effective_at):
        await _refuse_foreign(uow, event, [member_id])
        log.info("stale TierChanged ignored", extra={"event_id": event.id})
        return
    await store.record_tier_change(
        member_id=member_id, change=domain.TierChange(effective_at=d.effective_at, to_tier=d.to_tier)
    )
    # a review starts a new tier-year: the annual allotments (skin check) are granted afresh
    await _sync_tier_benefits(
        uow, event, member_id=member_id, tier=d.to_tier, as_of=d.effective_at, new_tier_year=d.reason == "review"
    )
    # purchases made since the change took effect that were applied before it arrived: judged again
    # (the change is the latest one in effect for them: an older one is stale and stopped above)
    policy = await store.policy(chain_id=event.chainid)
    for p in domain.purchases_since(await store.large_purchases(member_id=member_id), d.effective_at):
        grants = domain.purchase_grants(
            policy, tier=d.to_tier, purchase_id=p.purchase_id, amount_fen=p.amount_fen, occurred_at=p.occurred_at
        )
        await _grant(uow, event, [(member_id, g) for g in grants], source_id=f"{event.id}/{p.purchase_id}")


async def on_referral_completed(event: CloudEvent[ReferralCompleted], uow: Unit) -> None:
    """The referrer gets a voucher (the milestone one on the 3rd referral); the referee a welcome skin check."""
    d = event.data
    await _refuse_foreign(uow, event, [d.referrer_id, d.referee_id])
    policy = await store_of(uow).policy(chain_id=event.chainid)
    await _grant(
        uow,
        event,
        [
            (d.referrer_id, domain.referrer_reward(policy, d.referral_count, d.completed_at)),
            (d.referee_id, domain.referee_reward(policy, d.completed_at)),
        ],
    )


async def on_purchase_recorded(event: CloudEvent[PurchaseRecorded], uow: Unit) -> None:
    """A large enough purchase earns a care pack when its member held a tier with one at the time the
    purchase was made (once per purchase).

    The tier held then comes from the TierChanged events seen so far; one that arrives later (it
    travels on another topic) judges again the purchases made since it took effect, so the outcome
    does not depend on which event came first. The purchase that itself lifts a member to gold was
    made before the upgrade took effect, and earns none.
    """
    d = event.data
    store = store_of(uow)
    policy = await store.policy(chain_id=event.chainid)
    if d.amount_fen < policy.care_pack_min_purchase_fen:
        return  # the common case costs no query
    known = await store.chains_of(member_ids=[d.member_id])
    check_member_chain(event, d.member_id, known.get(d.member_id))
    if d.member_id not in known:
        log.warning("purchase of a member this service does not know; no care pack", extra={"event_id": event.id})
        return
    purchase = domain.LargePurchase(purchase_id=d.purchase_id, amount_fen=d.amount_fen, occurred_at=d.occurred_at)
    await store.record_large_purchase(member_id=d.member_id, purchase=purchase)
    tier = domain.tier_held_at(policy, await store.tier_changes(member_id=d.member_id), d.occurred_at)
    grants = domain.purchase_grants(
        policy, tier=tier, purchase_id=d.purchase_id, amount_fen=d.amount_fen, occurred_at=d.occurred_at
    )
    await _grant(uow, event, [(d.member_id, g) for g in grants])


async def on_member_erased(event: CloudEvent[MemberErased], uow: Unit) -> None:
    """Entitlements and redemptions stay (pseudonymous); the birthday, personal data, goes. Another
    chain's member is refused (dead-lettered): a forged erasure changes nothing."""
    await _refuse_foreign(uow, event, [event.data.member_id])
    await store_of(uow).forget_birthday(member_id=event.data.member_id)


HANDLERS = handlers(
    on_member_enrolled,
    on_member_erased,
    on_tier_changed,
    on_referral_completed,
    on_purchase_recorded,
    policies.on_policy_changed,
)
