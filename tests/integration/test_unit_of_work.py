"""The unit of work's queued writes against the real PostgreSQL: written once at commit, seen
by reads of their own table inside the transaction, and gone with a rollback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import BigInteger, Column, Identity, MetaData, Table, Text, select, text

from devstack.stack import Stack
from shared.db import Database, shared_tables

pytestmark = pytest.mark.integration

SCHEMA = "uow_test"
metadata = MetaData(schema=SCHEMA)
things = Table(
    "things", metadata, Column("thing_id", Text, primary_key=True), Column("n", BigInteger), Column("note", Text)
)
log = Table("log", metadata, Column("seq", BigInteger, Identity(), primary_key=True), Column("what", Text))


@pytest.fixture(scope="module")
async def db(stack: Stack) -> AsyncIterator[Database]:
    database = Database.connect(stack.settings(), shared_tables(MetaData(schema="points")))
    async with database.engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        await conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        await conn.run_sync(metadata.create_all)
    yield database
    await database.dispose()


async def _rows(db: Database, table: Table) -> list:
    async with db.engine.connect() as conn:
        return list((await conn.execute(select(table))).all())


async def test_queued_rows_are_written_at_commit_and_updates_of_a_row_coalesce(db: Database) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    async with db.unit_of_work() as uow:
        uow.insert_later(things, {"thing_id": a, "n": 1, "note": "first"})
        uow.insert_later(things, {"thing_id": b, "n": 2, "note": "second"})
        uow.update_later(things, {"thing_id": a}, {"n": 10})
        uow.update_later(things, {"thing_id": a}, {"n": 11, "note": "changed"})
        assert uow.queued_tables == {things}
    assert uow.queued_tables == set()
    got = {r.thing_id: (r.n, r.note) for r in await _rows(db, things) if r.thing_id in (a, b)}
    assert got == {a: (11, "changed"), b: (2, "second")}


async def test_a_read_of_a_table_sees_its_queued_rows_and_leaves_other_tables_queued(db: Database) -> None:
    a = str(uuid.uuid4())
    async with db.unit_of_work() as uow:
        uow.insert_later(things, {"thing_id": a, "n": 5, "note": None})
        uow.insert_later(log, {"what": a})
        n = (await uow.execute(select(things.c.n).where(things.c.thing_id == a))).scalar_one()
        assert n == 5
        assert uow.queued_tables == {log}
        # the session itself knows nothing of the queue...
        assert await uow.session.scalar(text("SELECT 1")) == 1 and uow.queued_tables == {log}
        # ...while a textual statement through the unit of work can't be told apart: all is written first
        assert (await uow.execute(text(f"SELECT count(*) FROM {SCHEMA}.log WHERE what = :a"), {"a": a})).scalar() == 1
        assert uow.queued_tables == set()


async def test_queued_inserts_keep_their_order(db: Database) -> None:
    tag = str(uuid.uuid4())
    async with db.unit_of_work() as uow:
        for i in range(300):
            uow.insert_later(log, {"what": f"{tag}:{i}"})
    mine = sorted((r.seq, r.what) for r in await _rows(db, log) if r.what.startswith(tag))
    assert [w for _, w in mine] == [f"{tag}:{i}" for i in range(300)]


async def test_a_rolled_back_unit_of_work_writes_none_of_its_queued_rows(db: Database) -> None:
    a = str(uuid.uuid4())
    with pytest.raises(RuntimeError):
        async with db.unit_of_work() as uow:
            uow.insert_later(things, {"thing_id": a, "n": 1, "note": None})
            await uow.execute(select(things.c.n))  # written inside the transaction...
            raise RuntimeError("the handler failed")
    assert [r for r in await _rows(db, things) if r.thing_id == a] == []  # ...and rolled back with it
