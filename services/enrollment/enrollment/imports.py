"""Bulk import of a chain's history (SPEC §7): ``POST /v1/members/batch`` and ``/v1/purchases/batch``.

A batch is one transaction: what it creates commits together or not at all. Each item goes
through the same command as the single call (same validation, same idempotency, same chain
rules) inside a savepoint, so a rejected item leaves no trace and the others carry on. Every
event a batch publishes is marked ``imported``: points, tiers and benefits come out as if the
history had been lived, and notify tells nobody about it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import UnitOfWork
from shared.problems import Conflict, InvalidRequest, Problem

from . import commands, domain, schemas
from .tables import members, purchases

M = TypeVar("M", bound=BaseModel)
Outcome = Literal["created", "exists"]


def _invalid(exc: ValidationError) -> dict[str, Any]:
    return {
        "type": "https://membership.example/problems/validation",
        "title": "Request validation failed",
        "status": 422,
        "detail": "The item is not valid.",
        "errors": [
            {"location": ["body", *map(str, e["loc"])], "message": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ],
    }


async def _each(
    uow: UnitOfWork,
    items: list[dict[str, Any]],
    model: type[M],
    apply: Callable[[M], Awaitable[tuple[Outcome, str]]],
) -> schemas.BatchResult:
    """Validate and apply each item in its own savepoint; ``apply`` returns (status, id)."""
    uow.imported = True
    results: list[schemas.BatchItemResult] = []
    for index, raw in enumerate(items):
        try:
            item = model.model_validate(raw)
        except ValidationError as exc:
            results.append(schemas.BatchItemResult(index=index, status="rejected", problem=_invalid(exc)))
            continue
        kept = len(uow.pending)
        try:
            async with uow.session.begin_nested():
                await uow.flush_writes()
                status, ident = await apply(item)
                await uow.flush_writes()  # an item's queued rows fail inside its own savepoint
        except Problem as problem:
            del uow.pending[kept:]  # the item's events go with its rows
            results.append(schemas.BatchItemResult(index=index, status="rejected", problem=problem.document()))
            continue
        results.append(schemas.BatchItemResult(index=index, status=status, id=ident))
    return schemas.BatchResult(
        items=results,
        created=sum(r.status == "created" for r in results),
        exists=sum(r.status == "exists" for r in results),
        rejected=sum(r.status == "rejected" for r in results),
    )


async def import_members(uow: UnitOfWork, *, chain_id: str, items: list[dict[str, Any]]) -> schemas.BatchResult:
    """Enrol each member once: one already there (same id, or same phone) is ``exists``."""

    async def apply(item: schemas.MemberImport) -> tuple[Outcome, str]:
        known = (
            await uow.execute(
                select(members.c.member_id, members.c.chain_id, members.c.phone).where(
                    (members.c.member_id == item.member_id)
                    if item.member_id
                    else ((members.c.chain_id == chain_id) & (members.c.phone == item.phone))
                )
            )
        ).first()
        if known is not None:
            if known.chain_id == chain_id and known.phone == item.phone:
                return "exists", known.member_id
            raise Conflict("This member_id is taken by another member.")
        enrolled = await commands.enrol(
            uow,
            chain_id=chain_id,
            req=schemas.EnrolRequest.model_validate(item.model_dump(exclude={"member_id", "enrolled_at"})),
            member_id=item.member_id,
            enrolled_at=item.enrolled_at,
            consent_source="clinic",  # a chain's own records (an item may say otherwise)
        )
        return "created", enrolled.member_id

    return await _each(uow, items, schemas.MemberImport, apply)


async def import_purchases(uow: UnitOfWork, *, chain_id: str, items: list[dict[str, Any]]) -> schemas.BatchResult:
    """Record each purchase once per (clinic, pos_txn_id), with ``POST /v1/purchases``'s rules, set-based:
    one read of the batch's members, one multi-row insert, one read of the keys already taken; the
    events reach the outbox in the unit of work's one insert. (Purchases are most of a history.)"""
    uow.imported = True
    results: dict[int, schemas.BatchItemResult] = {}
    valid: dict[int, schemas.PurchaseRequest] = {}
    for index, raw in enumerate(items):
        try:
            item = schemas.PurchaseRequest.model_validate(raw)
        except ValidationError as exc:
            results[index] = schemas.BatchItemResult(index=index, status="rejected", problem=_invalid(exc))
            continue
        if domain.in_the_future(item.occurred_at, uow.now()):
            results[index] = _rejected(index, InvalidRequest("occurred_at is in the future."))
            continue
        refused = await commands.implausible_amount(uow, chain_id=chain_id, amount_fen=item.amount_fen)
        if refused is not None:
            results[index] = _rejected(index, refused)
            continue
        valid[index] = item
    # the batch's members in the chain (not erased), and whether each consents to keeping treatment details
    known: dict[str, bool] = {
        r.member_id: bool(r.sensitive)
        for r in await uow.execute(
            select(members.c.member_id, members.c.consents["sensitive_data"].as_boolean().label("sensitive")).where(
                members.c.chain_id == chain_id,
                members.c.member_id.in_({i.member_id for i in valid.values()}),
                members.c.erased_at.is_(None),
            )
        )
    }
    rows: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}  # the first of the batch per (clinic, txn)
    repeats: list[tuple[int, dict[str, Any]]] = []
    for index, item in valid.items():
        if item.member_id not in known:
            results[index] = _rejected(index, UNKNOWN_MEMBER)
            continue
        row = commands.purchase_row(chain_id, item, str(uuid.uuid4()), sensitive_consent=known[item.member_id])
        key = (item.clinic_id, item.pos_txn_id)
        if key in rows:
            repeats.append((index, row))
        else:
            rows[key] = (index, row)
    inserted: set[str] = set()
    if rows:
        inserted = set(
            (
                await uow.execute(
                    pg_insert(purchases)
                    .values([row for _, row in rows.values()])
                    .on_conflict_do_nothing()
                    .returning(purchases.c.purchase_id)
                )
            ).scalars()
        )
    taken = [key for key, (_, row) in rows.items() if row["purchase_id"] not in inserted]
    prior: dict[tuple[str, str], tuple[str, str]] = {}
    if taken or repeats:
        wanted = taken + [(r["clinic_id"], r["pos_txn_id"]) for _, r in repeats]
        found = await uow.execute(
            select(purchases.c.clinic_id, purchases.c.pos_txn_id, purchases.c.purchase_id, purchases.c.request_hash)
            .where(purchases.c.chain_id == chain_id)
            .where(tuple_(purchases.c.clinic_id, purchases.c.pos_txn_id).in_(wanted))
        )
        prior = {(r.clinic_id, r.pos_txn_id): (r.purchase_id, r.request_hash) for r in found}
    for key, (index, row) in rows.items():
        if row["purchase_id"] in inserted:
            uow.publish(
                commands.purchase_recorded(valid[index], row["purchase_id"]),
                member_id=row["member_id"],
                chain_id=chain_id,
            )
            results[index] = schemas.BatchItemResult(index=index, status="created", id=row["purchase_id"])
        else:
            results[index] = _repeat(index, row, prior.get(key))
    for index, row in repeats:
        results[index] = _repeat(index, row, prior.get((row["clinic_id"], row["pos_txn_id"])))
    ordered = [results[i] for i in range(len(items))]
    return schemas.BatchResult(
        items=ordered,
        created=sum(r.status == "created" for r in ordered),
        exists=sum(r.status == "exists" for r in ordered),
        rejected=sum(r.status == "rejected" for r in ordered),
    )


UNKNOWN_MEMBER = InvalidRequest(
    "Unknown member_id.",
    errors=[{"location": ["body", "member_id"], "message": "no such member in this chain", "type": "value_error"}],
)


def _rejected(index: int, problem: Problem) -> schemas.BatchItemResult:
    return schemas.BatchItemResult(index=index, status="rejected", problem=problem.document())


def _repeat(index: int, row: dict[str, Any], prior: tuple[str, str] | None) -> schemas.BatchItemResult:
    """A (clinic, pos_txn_id) already recorded: the same body is a repeat, another is a conflict."""
    if prior is None:  # taken by a transaction that has not committed yet: retry the batch
        return _rejected(index, Conflict("This pos_txn_id is being recorded by another request; retry."))
    purchase_id, digest = prior
    if digest != row["request_hash"]:
        return _rejected(index, Conflict("This pos_txn_id was already recorded at this clinic with a different body."))
    return schemas.BatchItemResult(index=index, status="exists", id=purchase_id)
