"""Production mode against a real database (SPEC §9): demo keys still valid and development webhook
secrets are refused; re-seeding never un-revokes a demo key; migration 0003 seals the webhook secrets
stored in plaintext; SQL errors never carry a statement's parameters.

Each test database is a fresh one in the suite's PostgreSQL (like test_migrations.py), so revoking the
demo keys here leaves the running services' demo chain alone.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from pydantic import SecretStr
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from devstack.stack import Stack
from shared.db import make_engine
from shared.migrate import _config, migrations_of, seed_demo, upgrade
from shared.platform import PlatformStore, chains, keys, upsert_chain
from shared.production import EXIT_REFUSED, database_problems
from shared.secret_box import SecretBox, is_sealed
from shared.settings import DEVELOPMENT_WEBHOOK_SECRET, Settings
from tests.helpers import APP, OPS, POS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_KEY = base64.b64encode(b"p" * 32).decode()


async def _new_database(stack: Stack) -> tuple[Settings, AsyncEngine, str]:
    base = stack.settings()
    name = f"production_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base.database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    # a password in the URL, as production requires (the embedded server trusts local connections)
    url = make_url(base.database_url).set(database=name, password="Prod-only-pw-4f1c")
    settings = base.model_copy(update={"database_url": url.render_as_string(hide_password=False)})
    return settings, admin, name


async def _drop(admin: AsyncEngine, name: str) -> None:
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture
async def seeded(stack: Stack) -> AsyncIterator[Settings]:
    """A new database, migrated and seeded with the demo chain as ``make run`` seeds it (development)."""
    settings, admin, name = await _new_database(stack)
    try:
        await asyncio.to_thread(upgrade, settings, [])
        await seed_demo(settings)
        yield settings
    finally:
        await _drop(admin, name)


def production(settings: Settings) -> Settings:
    return settings.model_copy(update={"env": "production", "secrets_key": SecretStr(PRODUCTION_KEY)})


def production_env(settings: Settings) -> dict[str, str]:
    """A configuration that passes every check of the settings: what is left is the database's data."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEMBERSHIP_", "PG"))}
    return {
        **clean,
        "MEMBERSHIP_ENV": "production",
        "MEMBERSHIP_DATABASE_URL": settings.database_url,
        "MEMBERSHIP_SECRETS_KEY": PRODUCTION_KEY,
        "MEMBERSHIP_PII_MASTER_KEY": PRODUCTION_KEY,
        "MEMBERSHIP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "MEMBERSHIP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "MEMBERSHIP_KAFKA_SASL_USERNAME": "membership",
        "MEMBERSHIP_KAFKA_SASL_PASSWORD": "kafka-pw-8d1e",
        "MEMBERSHIP_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }


async def _revoke(settings: Settings, name: str) -> None:
    engine = make_engine(settings, pooled=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(update(keys).where(keys.c.name == name).values(revoked_at=text("now()")))
    finally:
        await engine.dispose()


async def test_reseeding_never_unrevokes_a_demo_key(seeded: Settings) -> None:
    await _revoke(seeded, "demo-pos")
    await seed_demo(seeded)  # make run seeds again at every start
    engine = make_engine(seeded, pooled=False)
    try:
        async with engine.connect() as conn:
            revoked = (await conn.execute(select(keys.c.name, keys.c.revoked_at).order_by(keys.c.name))).all()
        assert [(name, at is not None) for name, at in revoked] == [
            ("demo-app", False),
            ("demo-ops", False),
            ("demo-platform", False),
            ("demo-pos", True),
        ]
        store = PlatformStore(engine, cache_seconds=0)
        assert await store.principal(POS) is None
        assert await store.principal(APP) is not None
    finally:
        await engine.dispose()


async def test_a_process_in_production_refuses_a_database_with_demo_keys_in_use(seeded: Settings) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "points", "api"],
        env=production_env(seeded),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == EXIT_REFUSED, done.stderr
    assert "the demo keys are in use" in done.stderr and "demo-ops" in done.stderr
    assert "membershipctl bootstrap" in done.stderr
    for key in (POS, APP, OPS):  # named by name and id, never by the secret
        assert key not in done.stderr


async def test_demo_keys_and_development_webhook_secrets_are_refused_until_gone(seeded: Settings) -> None:
    prod = production(seeded)
    box = SecretBox.from_settings(prod)
    engine = make_engine(prod, pooled=False)
    try:
        await upsert_chain(
            engine, "copied-chain", "Copied", webhook_secret=DEVELOPMENT_WEBHOOK_SECRET, box=box
        )  # the default secret, sealed with the production key
        problems = await database_problems(prod, engine)
        assert any("demo keys are in use" in p and "demo-pos" in p for p in problems)
        assert "chain copied-chain uses the default webhook secret; give it a new one" in problems
        # the demo chain's secret was sealed with the development key: it does not open in production
        assert "chain demo-chain's webhook secret does not open with MEMBERSHIP_SECRETS_KEY" in problems
        assert not [p for p in problems if DEVELOPMENT_WEBHOOK_SECRET in p]

        for name in ("demo-pos", "demo-app", "demo-ops", "demo-platform"):
            await _revoke(prod, name)
        for chain_id in ("copied-chain", "demo-chain"):
            await upsert_chain(engine, chain_id, "Real", webhook_secret="whsec_" + "UmVhbA" * 6, box=box)
        assert await database_problems(prod, engine) == []  # a production database passes
    finally:
        await engine.dispose()


async def test_a_database_without_the_platform_schema_has_nothing_in_use(stack: Stack) -> None:
    settings, admin, name = await _new_database(stack)
    engine = make_engine(settings, pooled=False)
    try:
        assert await database_problems(production(settings), engine) == []
    finally:
        await engine.dispose()
        await _drop(admin, name)


async def test_migration_0003_seals_the_webhook_secrets_stored_in_plaintext(stack: Stack) -> None:
    settings, admin, name = await _new_database(stack)
    settings = settings.model_copy(update={"secrets_key": SecretStr(PRODUCTION_KEY)})
    engine = make_engine(settings, pooled=False)
    try:
        cfg = _config(migrations_of("platform"), settings)
        await asyncio.to_thread(command.upgrade, cfg, "0002")  # the schema as it was
        async with engine.begin() as conn:
            await conn.execute(
                chains.insert(),
                [
                    {
                        "chain_id": "old-a",
                        "name": "A",
                        "webhook_url": "https://a.example/h",
                        "webhook_secret": "whsec_QUFB",
                    },
                    {"chain_id": "old-b", "name": "B", "webhook_url": None, "webhook_secret": None},
                ],
            )
        await asyncio.to_thread(upgrade, settings, [])
        await asyncio.to_thread(upgrade, settings, [])  # again: nothing changes
        async with engine.connect() as conn:
            stored = dict((await conn.execute(select(chains.c.chain_id, chains.c.webhook_secret))).all())
        assert stored["old-b"] is None and is_sealed(stored["old-a"]) and "QUFB" not in stored["old-a"]
        chain = await PlatformStore(engine, 0, box=SecretBox.from_settings(settings)).chain("old-a")
        assert chain is not None and chain.webhook_secret == "whsec_QUFB"
        await asyncio.to_thread(command.downgrade, cfg, "0002")  # and back, for a rollback of the release
        async with engine.connect() as conn:
            assert (
                await conn.scalar(select(chains.c.webhook_secret).where(chains.c.chain_id == "old-a")) == "whsec_QUFB"
            )
    finally:
        await engine.dispose()
        await _drop(admin, name)


async def test_a_failing_statement_does_not_carry_its_parameters(stack: Stack) -> None:
    """Attack on the logs: a statement fails with a phone number among its parameters. The error (which
    a handler logs) names the statement but not the value; an engine without hide_parameters would."""
    phone = "13800001234"
    statement = text("SELECT CAST(:phone AS text), 1 / 0")
    engine = make_engine(stack.settings(), pooled=False)
    leaky = create_async_engine(stack.settings().database_url, poolclass=NullPool)
    try:
        messages = []
        for eng in (engine, leaky):
            with pytest.raises(DBAPIError) as err:
                async with eng.connect() as conn:
                    await conn.execute(statement, {"phone": phone})
            messages.append(str(err.value))
        ours, theirs = messages
        assert phone not in ours and "SQL parameters hidden" in ours and "division by zero" in ours
        assert phone in theirs  # the attack works on an engine made any other way
    finally:
        await engine.dispose()
        await leaky.dispose()
