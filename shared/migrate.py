"""Alembic, once for every schema: each service keeps its own history in
``<package>/migrations`` and its own version table in its own schema.

``python -m shared.migrate`` upgrades the platform schema and all five services
(under an advisory lock, so replicas starting together do not race).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import zlib
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, text

from .db import make_engine
from .settings import SERVICES, Settings


def run_env(schema: str) -> None:
    """The body of every ``env.py``: run this schema's migrations online, async."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "alembic config without sqlalchemy.url"

    def do_run(connection: Connection) -> None:
        context.configure(connection=connection, version_table_schema=schema, transaction_per_migration=False)
        with context.begin_transaction():
            context.run_migrations()

    async def go() -> None:
        settings = context.config.attributes.get("settings")
        if not isinstance(settings, Settings) or settings.database_url != url:
            settings = Settings(database_url=url)
        engine = make_engine(settings, pooled=False)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": zlib.crc32(b"migrate:" + schema.encode())})
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await conn.commit()
            await conn.run_sync(do_run)
            await conn.commit()
        await engine.dispose()

    asyncio.run(go())


def create_shared_tables(op: Any, schema: str) -> None:
    """For a service's first migration: the outbox, inbox and idempotency keys. (The outbox's NOTIFY
    trigger the first migrations made is dropped by a later one: :func:`drop_outbox_notify_trigger`.)"""
    from .db import shared_tables
    from .outbox import outbox_notify_ddl

    md = MetaData(schema=schema)
    tables = shared_tables(md)
    bind = op.get_bind()
    for table in (tables.outbox, tables.inbox, tables.idempotency):
        table.create(bind)
    for ddl in outbox_notify_ddl(schema):
        op.execute(ddl)


def drop_outbox_notify_trigger(op: Any, schema: str) -> None:
    """For each service's migration "wake the relay after commit": a NOTIFY inside a writing transaction
    holds PostgreSQL's cluster-wide notification lock through the commit's WAL flush, so every writer
    that notified committed one at a time (docs/decisions/0049). The unit of work now wakes the relay
    after its commit instead (``shared.db.Database.outbox_written``)."""
    op.execute(f"DROP TRIGGER IF EXISTS outbox_notify ON {schema}.outbox")
    op.execute(f"DROP FUNCTION IF EXISTS {schema}.outbox_notify()")


def restore_outbox_notify_trigger(op: Any, schema: str) -> None:
    from .outbox import outbox_notify_ddl

    for ddl in outbox_notify_ddl(schema):
        op.execute(ddl)


def scope_idempotency_keys_by_key(op: Any, schema: str) -> None:
    """For each service's migration "idempotency keys per API key": ``key_id`` joins the primary key
    (chain, key id, scope, key). Written to be a no-op on a schema whose first migration already
    created the table with it (:func:`create_shared_tables` creates the current shape). Rows from
    before keep ``key_id`` '' and are honoured for their lifetime (see ``shared.api.idempotent``)."""
    table = f"{schema}.idempotency_keys"
    op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS key_id text NOT NULL DEFAULT ''")
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS idempotency_keys_pkey")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (chain_id, key_id, scope, key)")


def _config(script_location: Path, settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    cfg.attributes["settings"] = settings  # env.py connects with its TLS settings (shared.transport)
    return cfg


def migrations_of(name: str) -> Path:
    if name == "platform":
        return Path(__file__).parent / "platform_migrations"
    module = importlib.import_module(name)
    return Path(module.__file__).parent / "migrations"  # type: ignore[arg-type]


def upgrade(settings: Settings, names: list[str] | None = None) -> None:
    for name in ["platform", *(names or SERVICES)]:
        command.upgrade(_config(migrations_of(name), settings), "head")


async def seed_demo(settings: Settings) -> None:
    """The embedded default's demo chain and one key per scope (values from settings)."""
    from .platform import add_api_key, upsert_chain
    from .secret_box import SecretBox

    engine = make_engine(settings, pooled=False)
    try:
        await upsert_chain(
            engine,
            settings.demo_chain_id,
            "Demo Aesthetics Clinics",
            timezone="Asia/Shanghai",
            webhook_url=settings.demo_webhook_url,
            webhook_secret=settings.demo_webhook_secret,
            box=SecretBox.from_settings(settings),
        )
        for scope, key in (
            ("pos", settings.demo_pos_key),
            ("app", settings.demo_app_key),
            ("ops", settings.demo_ops_key),
            ("platform", settings.demo_platform_key),
        ):
            await add_api_key(engine, settings.demo_chain_id, [scope], name=f"demo-{scope}", key=key)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description="Upgrade the membership schemas to head.")
    parser.add_argument("services", nargs="*", help="services to migrate (default: all)")
    parser.add_argument("--seed-demo", action="store_true", help="create the demo chain and its keys")
    args = parser.parse_args()
    settings = Settings()
    from .production import enforce, refuse

    enforce(settings, "shared.migrate", check_database=False)
    if args.seed_demo and settings.is_production:
        refuse(
            ["--seed-demo creates the demo keys; in production the first key comes from `membershipctl bootstrap`"],
            "shared.migrate",
        )
    upgrade(settings, args.services or None)
    if args.seed_demo:
        asyncio.run(seed_demo(settings))


if __name__ == "__main__":
    main()
