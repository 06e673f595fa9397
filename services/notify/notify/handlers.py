"""Notify's event handlers: queue notifications, and keep the contact projection. Their tables are
behind :class:`notify.store.NotifyStore`; the rules (kinds, channels, consents, quiet hours) are in
:mod:`notify.domain`. Delivery is a schedule (:mod:`notify.jobs`, :mod:`notify.delivery`).

Every handler is idempotent by construction: the contact rows are kept once, and a notification is
queued at most once per (source event, kind, channel).

A BenefitGranted of a voucher queues the marketing ``voucher_granted`` (only with the member's
marketing consent; queued inside the member's quiet hours it is held, ``pending`` with
``next_attempt_at`` at their end); any other benefit the transactional ``benefit_granted``.

An event about a member whose MemberEnrolled has not arrived yet (it travels on another topic) is
parked: without the contact nothing is known of the member's consents. The enrolment's handler
then handles the member's parked events, in the order they came, in its own transaction
(``notify.jobs.purge_parked_events`` drops those whose member never enrols).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from shared.consumer import check_member_chain, handlers
from shared.crypto import ContactDetails, UnreadableSealedData, open_contact
from shared.db import Unit
from shared.events import (
    BenefitGranted,
    CloudEvent,
    MemberEnrolled,
    MemberErased,
    MemberUpdated,
    PointsExpiringSoon,
    ReferralCompleted,
    SealedContact,
    TierChanged,
    decode,
)
from shared.observability import metrics
from shared.platform import DEFAULT_TIMEZONE

from . import domain, templates
from .store import QueuedNotification, store_of

log = logging.getLogger(__name__)

Values = Callable[[str], dict[str, Any]]  # locale -> template values


# ---- queueing ---------------------------------------------------------------------------------


async def queue(
    uow: Unit,
    event: CloudEvent[Any],
    *,
    member_id: str,
    kind: str,
    values: Values,
    data: dict[str, Any],
    recipient: domain.Recipient | None = None,
    tz: tzinfo | None = None,
) -> int:
    """Queue one notification of ``kind`` per channel the member wants and allows; returns how many.

    A marketing kind needs the marketing consent (else nothing is queued) and, queued inside the
    member's quiet hours (in ``tz``, the chain's zone), is due at their end instead of now.
    An event about a member not known yet is parked until their enrolment arrives.
    Queueing is once per (source event, kind, channel), so this is safe to repeat for the same event.
    An imported history (the event is marked ``imported``) is not announced: nobody is texted about
    a tier they reached, or a voucher they got, years ago.
    """
    if event.imported:
        metrics.inc("notifications_skipped_total", 1, reason="imported")
        return 0
    store = store_of(uow)
    chain_id = event.chainid
    who = recipient or await store.recipient(chain_id=chain_id, member_id=member_id)
    if who.contact is None:
        # not known in the event's chain: parked until the enrolment arrives, unless the member is
        # known in another chain (a forged event: refused, dead-lettered)
        check_member_chain(event, member_id, await store.chain_of(member_id=member_id))
        await _park(uow, event, member_id=member_id)
        return 0
    spec = domain.KINDS[kind]
    channels = domain.select_channels(spec, who.preferences, who.contact)
    if not channels:
        return 0
    locale = who.preferences.locale
    name = templates.member_name(who.contact.name, locale)
    title, body = templates.render(kind, locale, {"name": name, **values(locale)})
    now = uow.now()
    if spec.marketing and tz is None:  # only marketing waits for local quiet hours: the others cost no lookup
        tz = await store.timezone(chain_id=chain_id)
    not_before = domain.earliest_delivery(spec, who.preferences.quiet_hours, now.astimezone(tz or DEFAULT_TIMEZONE))
    await store.queue_notifications(
        queued=[
            QueuedNotification(
                notification_id=str(uuid.uuid4()),
                member_id=member_id,
                chain_id=chain_id,
                kind=kind,
                channel=channel,
                locale=locale,
                title=title,
                body=body,
                data={**data, "marketing": spec.marketing},
                next_attempt_at=not_before,
                source_event_id=event.id,
                created_at=now,
            )
            for channel in channels
        ]
    )
    return len(channels)


# ---- parked events ----------------------------------------------------------------------------


async def _park(uow: Unit, event: CloudEvent[Any], *, member_id: str) -> None:
    """The event overtook its member's MemberEnrolled: keep it until the enrolment arrives."""
    await store_of(uow).park(
        event_id=event.id,
        chain_id=event.chainid,
        member_id=member_id,
        payload=event.to_json().decode(),
        at=uow.now(),
    )
    log.info(
        "event parked until the member's enrolment arrives", extra={"event_id": event.id, "event_type": event.type}
    )


async def _unpark(uow: Unit, *, member_id: str, chain_id: str) -> None:
    """Handle, in the order they came, the events that waited for this member's enrolment."""
    for payload in await store_of(uow).unpark(chain_id=chain_id, member_id=member_id):
        event = decode(payload)
        await HANDLERS[type(event.data)](event, uow)


# ---- event handlers ---------------------------------------------------------------------------


async def _contact_details(uow: Unit, event: CloudEvent[Any], sealed: SealedContact | None) -> ContactDetails | None:
    """The contact details an enrollment event carries: sealed with the member's data key (None once the
    member was erased: the key is gone, and so are the details), or in clear in events of earlier
    versions (returned as None here; the caller reads the clear fields). A sealed contact that does
    not open under the member's key is poison: it is dead-lettered (the error names no detail)."""
    if sealed is None:
        return None
    data_key = await store_of(uow).contact_key(chain_id=event.chainid, member_id=event.subject)
    if data_key is None:
        return ContactDetails()
    try:
        return open_contact(data_key, sealed, member_id=event.subject)
    except UnreadableSealedData as exc:
        raise ValueError(f"{event.type} {event.id}: the sealed contact does not open: {exc}") from None


async def on_member_enrolled(event: CloudEvent[MemberEnrolled], uow: Unit) -> None:
    d = event.data
    store = store_of(uow)
    check_member_chain(event, d.member_id, await store.chain_of(member_id=d.member_id))
    known = await store.recipient(chain_id=event.chainid, member_id=d.member_id)
    if known.contact is not None and known.contact.erased:
        return  # a redelivered enrolment of an erased member: nothing of them comes back
    details = await _contact_details(uow, event, d.contact) or ContactDetails(name=d.name, phone=d.phone, email=d.email)
    contact = domain.Contact(
        name=details.name,
        phone=details.phone,
        email=details.email,
        consents=domain.Consents(marketing=d.consents.marketing, sms=d.consents.sms, email=d.consents.email),
    )
    defaults = domain.Preferences()
    await store.add_contact(chain_id=event.chainid, member_id=d.member_id, contact=contact, at=uow.now())
    await store.add_preferences(chain_id=event.chainid, member_id=d.member_id, preferences=defaults, at=uow.now())
    await queue(
        uow,
        event,
        member_id=d.member_id,
        kind="welcome",
        values=lambda _: {"member_no": d.member_no},
        data={"member_no": d.member_no},
        recipient=domain.Recipient(contact, defaults),
    )
    await _unpark(uow, member_id=d.member_id, chain_id=event.chainid)


async def on_member_updated(event: CloudEvent[MemberUpdated], uow: Unit) -> None:
    d = event.data
    consents = d.consents
    check_member_chain(event, d.member_id, await store_of(uow).chain_of(member_id=d.member_id))
    details = await _contact_details(uow, event, d.contact) or ContactDetails(name=d.name, email=d.email)
    await store_of(uow).update_contact(
        chain_id=event.chainid,
        member_id=d.member_id,
        name=details.name,
        email=details.email,
        consents=(
            domain.Consents(marketing=consents.marketing, sms=consents.sms, email=consents.email)
            if consents is not None
            else None
        ),
        at=uow.now(),
        email_removed=d.email_removed,
    )


async def on_tier_changed(event: CloudEvent[TierChanged], uow: Unit) -> None:
    d = event.data
    kind = domain.tier_change_kind(d.direction)
    if kind is None:
        return
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind=kind,
        values=lambda locale: {"tier_name": templates.tier_name(d.to_tier, locale, d.to_tier_name)},
        data={
            "from_tier": d.from_tier,
            "to_tier": d.to_tier,
            "reason": d.reason,
            "effective_at": d.effective_at.isoformat(),
        },
    )


async def on_benefit_granted(event: CloudEvent[BenefitGranted], uow: Unit) -> None:
    d = event.data
    if domain.benefit_granted_kind(d.code, d.value_fen) == "voucher_granted":
        await _voucher_granted(event, uow)
        return
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind="benefit_granted",
        values=lambda locale: {"code": d.code, "benefit_name": templates.benefit_name(d.code, locale)},
        data={
            "benefit_id": d.benefit_id,
            "code": d.code,
            "valid_until": d.valid_until.isoformat() if d.valid_until else None,
        },
    )


async def _voucher_granted(event: CloudEvent[BenefitGranted], uow: Unit) -> None:
    """A voucher is an offer: the marketing ``voucher_granted``, stating its value and last day."""
    d = event.data
    tz = await store_of(uow).timezone(chain_id=event.chainid)
    last_day = domain.last_valid_day(d.valid_until, tz)
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind="voucher_granted",
        tz=tz,
        values=lambda locale: {
            "voucher": templates.voucher(d.code, d.value_fen, locale),
            "validity": templates.validity(last_day, locale),
        },
        data={
            "benefit_id": d.benefit_id,
            "code": d.code,
            "value_fen": d.value_fen,
            "valid_until": d.valid_until.isoformat() if d.valid_until else None,
            "last_valid_day": last_day.isoformat() if last_day else None,
        },
    )


async def on_points_expiring(event: CloudEvent[PointsExpiringSoon], uow: Unit) -> None:
    d = event.data
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind="points_expiring",
        values=lambda _: {"points": d.points, "expires_on": d.expires_on.isoformat()},
        data={"points": d.points, "expires_on": d.expires_on.isoformat()},
    )


async def on_referral_completed(event: CloudEvent[ReferralCompleted], uow: Unit) -> None:
    # the event's subject may be either side; the message is for the referrer
    d = event.data
    await queue(
        uow,
        event,
        member_id=d.referrer_id,
        kind="referral_completed",
        values=lambda _: {"referral_count": d.referral_count},
        data={"referee_id": d.referee_id, "purchase_id": d.purchase_id, "referral_count": d.referral_count},
    )


async def on_member_erased(event: CloudEvent[MemberErased], uow: Unit) -> None:
    """Forget the member: their contact becomes a tombstone, their notifications lose their text, and
    nothing is sent to them any more (a pending notification fails at delivery)."""
    store = store_of(uow)
    check_member_chain(event, event.data.member_id, await store.chain_of(member_id=event.data.member_id))
    await store.erase_member(chain_id=event.chainid, member_id=event.data.member_id, at=uow.now())


HANDLERS = handlers(
    on_member_enrolled,
    on_member_updated,
    on_member_erased,
    on_tier_changed,
    on_benefit_granted,
    on_points_expiring,
    on_referral_completed,
)
