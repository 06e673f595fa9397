"""Bulk import of a chain's history (SPEC §7): ``POST /v1/members/batch`` and ``/v1/purchases/batch``.

A batch is one transaction: what it creates commits together or not at all. Each item goes
through the same command as the single call (same validation, same idempotency, same chain
rules) inside a savepoint, so a rejected item leaves no trace and the others carry on. Every
event a batch publishes is marked ``imported``: points, tiers and benefits come out as if the
history had been lived, and notify tells nobody about it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from shared.db import UnitOfWork
from shared.problems import Conflict, Problem

from . import commands, schemas
from .tables import members

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
    """Record each purchase once per (clinic, pos_txn_id), as ``POST /v1/purchases`` does."""

    async def apply(item: schemas.PurchaseRequest) -> tuple[Outcome, str]:
        created, accepted = await commands.record_purchase(uow, chain_id=chain_id, req=item)
        return ("created" if created else "exists"), accepted.purchase_id

    return await _each(uow, items, schemas.PurchaseRequest, apply)
