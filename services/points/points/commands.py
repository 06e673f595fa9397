"""What points' API changes: redemptions and operators' adjustments, each a :func:`wallets.post`
under the member's row lock, in the request's unit of work; and a rebuild's snapshots of the
members' points (:func:`publish_snapshots`)."""

from __future__ import annotations

import uuid

from shared.db import UnitOfWork
from shared.problems import Conflict, NotFound
from shared.snapshots import SnapshotPage, chain_members, member_page

from . import domain, schemas
from .store import Account, store_of
from .tables import members
from .wallets import held_points, post


async def _account_for_request(uow: UnitOfWork, *, chain_id: str, member_id: str) -> Account:
    """Lock a member for an API write; another chain's member does not exist (404)."""
    account = await store_of(uow).locked_account(member_id=member_id)
    if account is None or account.member.chain_id != chain_id:
        raise NotFound("No such member.")
    return account


async def redeem(
    uow: UnitOfWork, *, chain_id: str, member_id: str, req: schemas.RedemptionRequest
) -> schemas.PostedRedemption:
    """Spend available points, oldest lots first; 409 when they do not cover it or the balance is negative."""
    account = await _account_for_request(uow, chain_id=chain_id, member_id=member_id)
    member, wallet = account.member, account.wallet
    policy = await store_of(uow).policy(chain_id=chain_id)
    now = uow.now()
    try:
        wallet.redeem(req.points, now)
    except domain.NegativeBalance as exc:
        raise Conflict(str(exc), balance=exc.balance) from exc
    except domain.InsufficientPoints as exc:
        raise Conflict(str(exc), available=exc.available) from exc
    entry_id = await post(
        uow,
        member=member,
        wallet=wallet,
        delta=-req.points,
        entry_type="redeem",
        reason=req.reason,
        occurred_at=now,
        qualifying=False,
    )
    return schemas.PostedRedemption(
        entry_id=entry_id, balance=wallet.balance, value_fen=domain.redemption_value_fen(req.points, policy)
    )


async def adjust(
    uow: UnitOfWork, *, chain_id: str, member_id: str, req: schemas.AdjustmentRequest
) -> schemas.PostedEntry:
    """An operator's correction: a credit is a non-qualifying lot available at once (repaying any
    debt first); a debit takes the soonest-expiring lots and may leave the balance negative."""
    account = await _account_for_request(uow, chain_id=chain_id, member_id=member_id)
    member, wallet = account.member, account.wallet
    now = uow.now()
    if req.delta > 0:
        policy = await store_of(uow).policy(chain_id=chain_id)
        wallet.credit(
            domain.new_lot(str(uuid.uuid4()), req.delta, now, policy, wallet.tz, qualifying=False, pending=False)
        )
    else:
        wallet.debit(-req.delta)
    entry_id = await post(
        uow,
        member=member,
        wallet=wallet,
        delta=req.delta,
        entry_type="adjust",
        reason=req.reason,
        occurred_at=now,
        qualifying=False,
    )
    return schemas.PostedEntry(entry_id=entry_id, balance=wallet.balance)


async def publish_snapshots(uow: UnitOfWork, *, chain_id: str, after: str | None, limit: int) -> SnapshotPage:
    """A PointsSnapshot of each of a page of the chain's members (ids after ``after``, in id order): their
    points as of now, computed as every PointsChanged computes them. The members are locked as for any
    change of their points, so a change in flight is published before the snapshot, a later one after it."""
    page = await member_page(uow, members, chain_id=chain_id, after=after, limit=limit)
    total = await chain_members(uow, members, chain_id=chain_id) if after is None else None
    now = uow.now()
    accounts = await store_of(uow).locked_accounts(member_ids=page.member_ids)
    for account in accounts:
        uow.publish(
            held_points(account.wallet, now), member_id=account.member.member_id, chain_id=account.member.chain_id
        )
    return SnapshotPage(published=len(accounts), next_after=page.next_after, total=total)
