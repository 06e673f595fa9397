"""What points' API changes: redemptions and operators' adjustments, each a :func:`wallets.post`
under the member's row lock, in the request's unit of work."""

from __future__ import annotations

import uuid

from shared.db import UnitOfWork
from shared.problems import Conflict, NotFound

from . import domain, schemas
from .store import Account, store_of
from .wallets import post


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
