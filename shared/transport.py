"""How every process reaches Kafka and PostgreSQL: TLS and SASL from ``MEMBERSHIP_*`` variables.

One function per server, used by every client of it, so the producer, the consumer and the admin
client reach Kafka the same way, and the SQLAlchemy engine and the outbox relay's asyncpg LISTEN
connection reach PostgreSQL the same way (see docs/decisions/0026):

- :func:`kafka_options`: the aiokafka keyword arguments (``security_protocol``, ``sasl_mechanism``,
  ``sasl_plain_username``/``_password``, ``ssl_context``) every Kafka client is built with.
- :func:`postgres_target`: the database URL without its TLS query parameters, and the one ``ssl``
  connect argument they (or ``MEMBERSHIP_DATABASE_SSL*``, which win) amount to; the engine gets it as
  ``connect_args``, the relay passes it to ``asyncpg.connect``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .settings import Settings

#: libpq's sslmode values (https://www.postgresql.org/docs/current/libpq-ssl.html)
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: query parameters of a database URL that are about TLS: taken out of the URL, into ``ssl``
_TLS_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "ssl")


class TransportConfigError(ValueError):
    """The TLS/SASL variables do not describe a usable connection (a clear message, at start-up)."""


# -- Kafka ---------------------------------------------------------------------------------------


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the brokers' certificates (against ``MEMBERSHIP_KAFKA_SSL_CAFILE``, else the system's
    CAs) and their host names unless ``MEMBERSHIP_KAFKA_SSL_CHECK_HOSTNAME=false``; presents a client
    certificate when ``MEMBERSHIP_KAFKA_SSL_CERTFILE`` is set (mutual TLS)."""
    cafile = settings.kafka_ssl_cafile
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None)
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile:
        password = settings.kafka_ssl_key_password.get_secret_value() if settings.kafka_ssl_key_password else None
        keyfile = settings.kafka_ssl_keyfile
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(keyfile) if keyfile else None, password)
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """The connection options of every Kafka client (producer, consumer, admin), from the settings."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap, "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = kafka_ssl_context(settings)
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism
        user = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        if mechanism is None or not user or password is None:
            raise TransportConfigError(
                f"MEMBERSHIP_KAFKA_SECURITY_PROTOCOL={protocol} needs MEMBERSHIP_KAFKA_SASL_MECHANISM "
                "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), MEMBERSHIP_KAFKA_SASL_USERNAME and _PASSWORD"
            )
        options.update(
            sasl_mechanism=mechanism, sasl_plain_username=user, sasl_plain_password=password.get_secret_value()
        )
    return options


def kafka_is_plaintext(settings: Settings) -> bool:
    """Whether Kafka traffic (and SASL credentials, if any) would cross the network unencrypted."""
    return settings.kafka_security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT")


# -- PostgreSQL ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresTls:
    """What the URL's TLS parameters and ``MEMBERSHIP_DATABASE_SSL*`` say, the variables winning."""

    sslmode: str | None = None
    sslrootcert: Path | None = None
    sslcert: Path | None = None
    sslkey: Path | None = None

    def connect_arg(self) -> ssl.SSLContext | bool | str | None:
        """asyncpg's ``ssl`` argument: None (asyncpg's default), False, a mode name, or a context."""
        mode = self.sslmode
        if mode is None:
            if self.sslrootcert or self.sslcert:
                mode = "verify-full"  # a CA or a client certificate given without a mode: the safe reading
            else:
                return None
        if mode == "disable":
            return False
        if mode in ("allow", "prefer"):
            return mode
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.sslrootcert) if self.sslrootcert else None
        )
        if mode == "require" and self.sslrootcert is None:
            # libpq: require encrypts without verifying, unless a root certificate is given (then verify-ca)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif mode in ("require", "verify-ca"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_REQUIRED
        if self.sslcert:
            context.load_cert_chain(str(self.sslcert), str(self.sslkey) if self.sslkey else None)
        return context


@dataclass(frozen=True)
class PostgresTarget:
    """Where the database is (URL without TLS parameters) and how to reach it (``ssl``)."""

    url: str  #: postgresql+asyncpg://..., for SQLAlchemy
    tls: PostgresTls

    @property
    def dsn(self) -> str:
        """The same URL for asyncpg itself."""
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def connect_args(self) -> dict[str, Any]:
        """The keyword arguments of ``asyncpg.connect`` (and of the engine's ``connect_args``)."""
        arg = self.tls.connect_arg()
        return {} if arg is None else {"ssl": arg}


def _ssl_query_mode(value: str) -> str:
    """The ``ssl=`` query parameter SQLAlchemy users write (true/false or a mode) as an sslmode."""
    lowered = value.lower()
    if lowered in ("true", "1", "on", "yes"):
        return "require"
    if lowered in ("false", "0", "off", "no"):
        return "disable"
    return lowered


def postgres_target(settings: Settings) -> PostgresTarget:
    """Parse the database URL's TLS parameters out of it and merge ``MEMBERSHIP_DATABASE_SSL*``."""
    parts = urlsplit(settings.database_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = {k: v for k, v in query if k in _TLS_PARAMS}
    rest = [(k, v) for k, v in query if k not in _TLS_PARAMS]
    url = urlunsplit(parts._replace(query=urlencode(rest)))
    mode = (
        settings.database_sslmode or found.get("sslmode") or (_ssl_query_mode(found["ssl"]) if "ssl" in found else None)
    )
    if mode is not None and mode not in SSLMODES:
        raise TransportConfigError(f"unknown PostgreSQL sslmode {mode!r}; one of {', '.join(SSLMODES)}")

    def path(setting: Path | None, name: str) -> Path | None:
        return setting or (Path(found[name]) if found.get(name) else None)

    tls = PostgresTls(
        sslmode=mode,
        sslrootcert=path(settings.database_sslrootcert, "sslrootcert"),
        sslcert=path(settings.database_sslcert, "sslcert"),
        sslkey=path(settings.database_sslkey, "sslkey"),
    )
    return PostgresTarget(url=url, tls=tls)


def postgres_is_encrypted(settings: Settings) -> bool:
    """Whether the database connection is required to be encrypted (require, verify-ca or verify-full)."""
    arg = postgres_target(settings).tls.connect_arg()
    return isinstance(arg, ssl.SSLContext)


async def connect_asyncpg(settings: Settings) -> Any:
    """A plain asyncpg connection (the relay's LISTEN), reached exactly as the engine reaches the database."""
    import asyncpg

    target = postgres_target(settings)
    return await asyncpg.connect(target.dsn, **target.connect_args())
