"""Production mode (SPEC §9): ``MEMBERSHIP_ENV=production`` refuses development defaults at start-up.

Every process (each service's ``api``, ``worker`` and ``migrate``, ``python -m shared.migrate``) calls
:func:`enforce` first. It exits non-zero, naming each problem, when

- the configuration has a development default (:func:`configuration_problems`): the development
  ``MEMBERSHIP_SECRETS_KEY``, a database URL without a password or with a well-known one, Kafka over
  PLAINTEXT (or SASL_PLAINTEXT) without ``MEMBERSHIP_KAFKA_ALLOW_PLAINTEXT=true``, TLS/SASL variables
  that do not describe a connection;
- the service's own settings have one (``ServiceDefinition.production_problems``): notify's worker with
  the local SMS sink as its SMS provider;
- the database still has development data in use (:func:`database_problems`, api and worker only):
  a demo key that is not revoked, a chain whose webhook secret is the development one.

Development (the default; ``make run`` and the tests) checks nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterable

from sqlalchemy import func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from .crypto import DEV_MASTER_KEY
from .secret_box import SecretBox, SecretsKeyError, UnsealError
from .settings import DEVELOPMENT_SECRETS_KEY, DEVELOPMENT_WEBHOOK_SECRET, Settings
from .transport import TransportConfigError, kafka_is_plaintext, kafka_options, postgres_target

log = logging.getLogger(__name__)

#: passwords that ship in examples (docker-compose, k8s, docs) or that anyone tries first
DEFAULT_DB_PASSWORDS = frozenset(
    {"", "postgres", "membership", "password", "change-me", "changeme", "CHANGE-ME", "secret", "admin", "root"}
)
#: the built-in demo keys (also refused when MEMBERSHIP_DEMO_*_KEY names other ones)
DEMO_KEYS = (
    "dev-pos-key-0000000000000000",
    "dev-app-key-0000000000000000",
    "dev-ops-key-0000000000000000",
    "dev-platform-key-0000000000000000",
)
#: development webhook secrets, the current one and the one of earlier versions
DEVELOPMENT_WEBHOOK_SECRETS = frozenset({DEVELOPMENT_WEBHOOK_SECRET, "dev-webhook-secret"})
#: exit status of a refused start (EX_CONFIG)
EXIT_REFUSED = 78


class ProductionRefused(SystemExit):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(EXIT_REFUSED)


def _database_password_problem(settings: Settings) -> str | None:
    try:
        url = make_url(postgres_target(settings).url)
    except (ArgumentError, ValueError):
        return "MEMBERSHIP_DATABASE_URL is not a database URL"
    password = url.password if url.password is not None else os.environ.get("PGPASSWORD")
    if password is None:
        if os.environ.get("PGPASSFILE") or postgres_target(settings).tls.sslcert:
            return None  # a password file or a client certificate authenticates instead
        return "MEMBERSHIP_DATABASE_URL has no password (the development default trusts local connections)"
    if str(password) in DEFAULT_DB_PASSWORDS:
        return "MEMBERSHIP_DATABASE_URL uses a default database password; set the database's real one"
    return None


def configuration_problems(settings: Settings) -> list[str]:
    """What production refuses in the settings alone (no server is contacted)."""
    problems: list[str] = []
    key = settings.secrets_key.get_secret_value()
    if key == DEVELOPMENT_SECRETS_KEY:
        problems.append("MEMBERSHIP_SECRETS_KEY is the development default; set a random 32-byte key (base64)")
    else:
        try:
            SecretBox.from_settings(settings)
        except SecretsKeyError as exc:
            problems.append(str(exc))
    if settings.pii_master_key.get_secret_value() == DEV_MASTER_KEY:
        problems.append(
            "MEMBERSHIP_PII_MASTER_KEY is the development default (members' contact details would be sealed "
            "under a public key); set a random 32-byte key (base64) from the secret store"
        )
    try:
        postgres_target(settings).connect_args()
        db_problem = _database_password_problem(settings)
        if db_problem:
            problems.append(db_problem)
    except (TransportConfigError, OSError) as exc:
        problems.append(f"PostgreSQL TLS: {exc}")
    if kafka_is_plaintext(settings) and not settings.kafka_allow_plaintext:
        problems.append(
            f"Kafka is reached over {settings.kafka_security_protocol} (unencrypted): set "
            "MEMBERSHIP_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, or MEMBERSHIP_KAFKA_ALLOW_PLAINTEXT=true "
            "on a private network"
        )
    try:
        kafka_options(settings)
    except (TransportConfigError, OSError) as exc:
        problems.append(f"Kafka TLS/SASL: {exc}")
    return problems


def _demo_key_hashes(settings: Settings) -> list[str]:
    from .platform import hash_key

    configured = (settings.demo_pos_key, settings.demo_app_key, settings.demo_ops_key, settings.demo_platform_key)
    return sorted({hash_key(k) for k in (*DEMO_KEYS, *configured)})


async def database_problems(settings: Settings, engine: AsyncEngine) -> list[str]:
    """What production refuses in the database: demo keys still valid, development webhook secrets."""
    from .platform import chains, key_secrets, keys

    problems: list[str] = []
    now = func.now()
    box = SecretBox.from_settings(settings)
    webhook_defaults = DEVELOPMENT_WEBHOOK_SECRETS | {settings.demo_webhook_secret}
    try:
        async with engine.connect() as conn:
            names = (
                await conn.execute(
                    select(keys.c.name, keys.c.key_id)
                    .join(key_secrets, key_secrets.c.key_id == keys.c.key_id)
                    .where(
                        key_secrets.c.key_hash.in_(_demo_key_hashes(settings)),
                        keys.c.revoked_at.is_(None),
                        or_(keys.c.expires_at.is_(None), keys.c.expires_at > now),
                        or_(key_secrets.c.valid_until.is_(None), key_secrets.c.valid_until > now),
                    )
                    .order_by(keys.c.name)
                )
            ).all()
            secrets = (
                await conn.execute(
                    select(chains.c.chain_id, chains.c.webhook_secret).where(chains.c.webhook_secret.is_not(None))
                )
            ).all()
    except ProgrammingError:  # no platform schema yet: nothing is in use
        return []
    if names:
        listed = ", ".join(f"{r.name} ({r.key_id})" for r in names)
        problems.append(
            f"the demo keys are in use: {listed}; revoke them (`membershipctl keys revoke KEY_ID`) and create the "
            "first key with `membershipctl bootstrap`"
        )
    for chain_id, sealed in secrets:
        try:
            secret = box.open(sealed, context=chain_id)
        except UnsealError:
            problems.append(f"chain {chain_id}'s webhook secret does not open with MEMBERSHIP_SECRETS_KEY")
            continue
        if secret in webhook_defaults:
            problems.append(f"chain {chain_id} uses the default webhook secret; give it a new one")
    return problems


def refuse(problems: Iterable[str], process: str) -> None:
    """Exit (status 78) naming every problem, on stderr and in the log, if there is any."""
    found = list(problems)
    if not found:
        return
    text = "\n".join(f"  - {p}" for p in found)
    print(f"{process}: refusing to start in production mode (MEMBERSHIP_ENV=production):\n{text}", file=sys.stderr)
    log.critical("refusing to start in production mode", extra={"problems": found})
    raise ProductionRefused(found)


async def _database_problems_when_reachable(settings: Settings, attempts: int, delay: float) -> list[str]:
    from .db import make_engine

    engine = make_engine(settings, pooled=False)
    try:
        for attempt in range(attempts):
            try:
                return await database_problems(settings, engine)
            except (OSError, DBAPIError) as exc:
                if attempt == attempts - 1:
                    return [f"the database cannot be reached to check for development data: {type(exc).__name__}"]
                log.info("production check: waiting for the database")
                await asyncio.sleep(delay)
    finally:
        await engine.dispose()
    return []


def enforce(settings: Settings, process: str, *, check_database: bool = True, extra: Iterable[str] = ()) -> None:
    """In production mode, exit non-zero naming every development default in use; else do nothing.
    ``extra``: the process's own problems (a service's ``production_problems``), refused with the others."""
    if not settings.is_production:
        return
    refuse([*configuration_problems(settings), *extra], process)
    if check_database:
        refuse(asyncio.run(_database_problems_when_reachable(settings, attempts=30, delay=1.0)), process)
