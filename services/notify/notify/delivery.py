"""Delivering due notifications: what the worker's ``deliver-notifications`` job (:mod:`notify.jobs`) runs.

Each run claims a batch of due pending rows with ``FOR UPDATE SKIP LOCKED`` (so replicas split
the work and never send one row twice at the same time), sends them, and records each outcome
(sent, retry later, failed) with its NotificationSent/NotificationFailed event in the SAME
transaction. The row locks are held while sending, hence the short per-attempt timeout.

A marketing notification is checked again when it comes due, against the member's CURRENT
consents and quiet hours (they may have changed since it was queued, and a retry's backoff may
land inside the quiet hours): without the marketing consent it fails without being sent; inside
the quiet hours it is put back, unattempted, until their end.

A send that succeeded but whose commit is lost (the process dies in between) is sent again
on the next claim: delivery is at-least-once, and receivers deduplicate on the notification id
(the webhook's ``Idempotency-Key``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update

from shared.api import ServiceContext
from shared.db import UnitOfWork
from shared.events import NotificationFailed, NotificationSent
from shared.platform import Chain, zone_named

from . import domain
from .channels import ATTEMPT_TIMEOUT_SECONDS, DeliveryChannel, Undeliverable
from .store import contact_from_row, quiet_hours_from
from .tables import contacts, notifications, preferences

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
PARALLEL_SENDS = 20
MAX_ROUNDS_PER_RUN = 10


@dataclass(frozen=True)
class Outcome:
    error: str | None = None
    permanent: bool = False
    held_until: datetime | None = None  # not attempted: due again then (quiet hours)


def _claim_due(now: datetime) -> Select[Any]:
    n = notifications
    return (
        select(
            n,
            contacts.c.name,
            contacts.c.phone,
            contacts.c.email,
            contacts.c.consents,
            contacts.c.erased_at,
            preferences.c.quiet_start,
            preferences.c.quiet_end,
            preferences.c.locale.label("preferred_locale"),
        )
        .select_from(
            n.outerjoin(contacts, contacts.c.member_id == n.c.member_id).outerjoin(
                preferences, preferences.c.member_id == n.c.member_id
            )
        )
        .where(n.c.status == "pending", n.c.next_attempt_at <= now)
        .order_by(n.c.next_attempt_at)
        .limit(CLAIM_BATCH)
        .with_for_update(of=n, skip_locked=True)
    )


def _notification(row: Any) -> domain.Notification:
    return domain.Notification(
        notification_id=row.notification_id,
        member_id=row.member_id,
        chain_id=row.chain_id,
        kind=row.kind,
        channel=row.channel,
        locale=row.locale,
        title=row.title,
        body=row.body,
        data=row.data,
        created_at=row.created_at,
    )


def _contact(row: Any) -> domain.Contact | None:
    if row.consents is None:
        return None  # the member's MemberEnrolled has not arrived
    return contact_from_row(row)


def _quiet_hours(row: Any) -> domain.QuietHours | None:
    if row.preferred_locale is None:
        return domain.Preferences().quiet_hours  # no preferences row yet: the defaults
    return quiet_hours_from(row.quiet_start, row.quiet_end)


def _marketing_gate(row: Any, contact: domain.Contact | None, chain: Chain | None, now: datetime) -> Outcome | None:
    """Why a due marketing notification may not go out now (None: it may)."""
    if not domain.is_marketing(row.kind, bool(row.data.get("marketing"))):
        return None
    if not domain.has_marketing_consent(contact):
        return Outcome("no marketing consent", permanent=True)
    local_now = now.astimezone(zone_named(chain.timezone if chain else None))
    held_until = domain.quiet_hours_end(_quiet_hours(row), local_now)
    return Outcome(held_until=held_until) if held_until is not None else None


async def _attempt(
    channel: DeliveryChannel, row: Any, chain: Chain | None, now: datetime, slots: asyncio.Semaphore
) -> Outcome:
    contact = _contact(row)
    if (gate := _marketing_gate(row, contact, chain, now)) is not None:
        return gate
    # consent is checked again at delivery: a member may have withdrawn it since the row was queued
    if not domain.may_reach(row.channel, contact):
        return Outcome("no consent or no address for this channel", permanent=True)
    async with slots:
        try:
            await asyncio.wait_for(channel.send(_notification(row), contact, chain), ATTEMPT_TIMEOUT_SECONDS)
            return Outcome()
        except Undeliverable as exc:
            return Outcome(str(exc), permanent=True)
        except TimeoutError:
            return Outcome(f"timed out after {ATTEMPT_TIMEOUT_SECONDS:g}s")
        except Exception as exc:
            return Outcome(str(exc) or type(exc).__name__)


def _event(
    cls: type[NotificationSent] | type[NotificationFailed], row: Any, attempts: int, error: str | None = None
) -> NotificationSent | NotificationFailed:
    return cls(notification_id=row.notification_id, kind=row.kind, channel=row.channel, attempts=attempts, error=error)


async def _record(uow: UnitOfWork, ctx: ServiceContext, rows: list[Any], outcomes: list[Outcome]) -> None:
    now = uow.now()
    n = notifications
    sent = [r for r, o in zip(rows, outcomes, strict=False) if o.error is None and o.held_until is None]
    if sent:
        await uow.execute(
            update(n)
            .where(n.c.notification_id.in_([r.notification_id for r in sent]))
            .values(status="sent", attempts=n.c.attempts + 1, sent_at=now, last_error=None)
        )
        for r in sent:
            uow.publish(_event(NotificationSent, r, r.attempts + 1), member_id=r.member_id, chain_id=r.chain_id)
    for r, o in zip(rows, outcomes, strict=False):
        if o.held_until is not None:
            await uow.execute(
                update(n).where(n.c.notification_id == r.notification_id).values(next_attempt_at=o.held_until)
            )
            continue
        if o.error is None:
            continue
        attempts = r.attempts + 1
        step = (
            domain.GiveUp()
            if o.permanent
            else domain.after_failure(
                attempts=attempts,
                max_attempts=ctx.settings.notify_max_attempts,
                base_seconds=ctx.settings.notify_retry_base_seconds,
                now=now,
            )
        )
        if isinstance(step, domain.Retry):
            await uow.execute(
                update(n)
                .where(n.c.notification_id == r.notification_id)
                .values(attempts=attempts, next_attempt_at=step.at, last_error=o.error)
            )
            continue
        await uow.execute(
            update(n)
            .where(n.c.notification_id == r.notification_id)
            .values(status="failed", attempts=attempts, last_error=o.error)
        )
        uow.publish(_event(NotificationFailed, r, attempts, o.error), member_id=r.member_id, chain_id=r.chain_id)
        log.warning(
            "notification failed",
            extra={"notification_id": r.notification_id, "channel": r.channel, "attempts": attempts, "error": o.error},
        )


async def deliver_due(ctx: ServiceContext, channels: dict[domain.Channel, DeliveryChannel], *, as_of: datetime) -> int:
    """Claim the rows due as of ``as_of``, send them and record the outcomes (at the transaction's
    clock); one batch, returns how many rows it handled."""
    async with ctx.db.unit_of_work() as uow:
        now = uow.now()
        rows = (await uow.execute(_claim_due(as_of))).all()
        if not rows:
            return 0
        chains = {cid: await ctx.platform.chain(cid) for cid in {r.chain_id for r in rows}}
        slots = asyncio.Semaphore(PARALLEL_SENDS)
        outcomes = await asyncio.gather(
            *(_attempt(channels[r.channel], r, chains[r.chain_id], now, slots) for r in rows)
        )
        await _record(uow, ctx, rows, list(outcomes))
    return len(rows)
