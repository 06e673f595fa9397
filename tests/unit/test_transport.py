"""Kafka TLS/SASL and PostgreSQL TLS from MEMBERSHIP_* variables (shared.transport): parsed once, used
alike by every Kafka client and by both ways the services reach PostgreSQL. No TLS server is needed:
the tests look at what the clients are given."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.settings import Settings
from shared.transport import (
    TransportConfigError,
    kafka_is_plaintext,
    kafka_options,
    postgres_target,
)

HERE = Path(__file__).parent


def test_the_default_is_plaintext_kafka_and_postgres_as_asyncpg_defaults_it() -> None:
    s = Settings()
    assert kafka_options(s) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert kafka_is_plaintext(s)
    target = postgres_target(s)
    assert target.url == s.database_url and target.connect_args() == {}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_sasl_ssl_gives_mechanism_credentials_and_a_verifying_context(mechanism: str) -> None:
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="svc",
        kafka_sasl_password="pw",
    )
    options = kafka_options(s)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "svc" and options["sasl_plain_password"] == "pw"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert not kafka_is_plaintext(s)


def test_ssl_without_sasl_has_no_credentials_and_hostname_checks_may_be_switched_off() -> None:
    options = kafka_options(Settings(kafka_security_protocol="SSL", kafka_ssl_check_hostname=False))
    assert "sasl_mechanism" not in options and options["ssl_context"].check_hostname is False
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the certificate is still verified


def test_sasl_without_credentials_is_a_clear_error_and_the_password_is_never_shown() -> None:
    with pytest.raises(TransportConfigError, match="MEMBERSHIP_KAFKA_SASL_MECHANISM"):
        kafka_options(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc"))
    s = Settings(kafka_sasl_password="hunter2-secret", secrets_key="x" * 44)
    assert "hunter2-secret" not in repr(s) and "x" * 44 not in repr(s)


def test_an_unknown_protocol_or_mechanism_is_refused_by_the_settings() -> None:
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="TLS")
    with pytest.raises(ValidationError):
        Settings(kafka_sasl_mechanism="GSSAPI")
    with pytest.raises(ValidationError):
        Settings(database_sslmode="always")


def test_a_missing_ca_file_fails_at_start_up() -> None:
    with pytest.raises(OSError):
        kafka_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=HERE / "no-such-ca.pem"))


async def test_producer_consumer_and_admin_client_are_built_with_the_same_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shared.consumer
    import shared.kafka

    seen: dict[str, dict[str, Any]] = {}

    def recorder(name: str) -> Any:
        class Client:
            def __init__(self, **kwargs: Any) -> None:
                seen[name] = kwargs

            async def start(self) -> None:
                raise ConnectionError("not contacting any broker in a unit test")

            async def close(self) -> None:
                pass

        return Client

    monkeypatch.setattr(shared.kafka, "AIOKafkaProducer", recorder("producer"))
    monkeypatch.setattr(shared.kafka, "AIOKafkaAdminClient", recorder("admin"))
    monkeypatch.setattr(shared.consumer, "AIOKafkaConsumer", recorder("consumer"))
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="pw",
        kafka_bootstrap="k1:9093,k2:9093",
    )
    shared.kafka.make_producer(s)
    with pytest.raises(ConnectionError):
        await shared.kafka.ensure_topics(s, attempts=1)
    runner = shared.consumer.ConsumerRunner.__new__(shared.consumer.ConsumerRunner)
    runner.settings, runner.group_id = s, "g"
    runner.make_consumer()
    keys = ("bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
    for name in ("producer", "admin", "consumer"):
        assert {k: seen[name][k] for k in keys} == {
            "bootstrap_servers": "k1:9093,k2:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "svc",
            "sasl_plain_password": "pw",
        }, name
        assert isinstance(seen[name]["ssl_context"], ssl.SSLContext), name


@pytest.mark.parametrize(
    ("url_query", "env", "mode", "verify", "hostname"),
    [
        ("?sslmode=require", {}, "require", ssl.CERT_NONE, False),
        ("?ssl=true", {}, "require", ssl.CERT_NONE, False),
        ("", {"database_sslmode": "require"}, "require", ssl.CERT_NONE, False),
        ("", {"database_sslmode": "verify-ca"}, "verify-ca", ssl.CERT_REQUIRED, False),
        ("?sslmode=verify-full", {}, "verify-full", ssl.CERT_REQUIRED, True),
        ("?sslmode=disable", {"database_sslmode": "verify-full"}, "verify-full", ssl.CERT_REQUIRED, True),
    ],
)
def test_postgres_tls_from_the_url_or_the_variables_which_win(
    url_query: str, env: dict[str, str], mode: str, verify: ssl.VerifyMode, hostname: bool
) -> None:
    s = Settings(database_url=f"postgresql://u:p@db.internal:5432/membership{url_query}", **env)
    target = postgres_target(s)
    assert target.tls.sslmode == mode
    assert "ssl" not in target.url.split("?", 1)[-1] if "?" in target.url else True
    context = target.connect_args()["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == verify and context.check_hostname is hostname


def test_postgres_disable_prefer_and_other_query_parameters() -> None:
    s = Settings(database_url="postgresql://u:p@db:5432/m?sslmode=disable&application_name=membership")
    target = postgres_target(s)
    assert target.connect_args() == {"ssl": False}
    assert target.url == "postgresql+asyncpg://u:p@db:5432/m?application_name=membership"
    assert postgres_target(Settings(database_sslmode="prefer")).connect_args() == {"ssl": "prefer"}


def _self_signed_ca(folder: Path) -> str:
    """A CA certificate of the test's own (no dependence on the machine's CA bundle)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "membership test CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_a_root_certificate_without_a_mode_means_verify_full(tmp_path: Path) -> None:
    ca = _self_signed_ca(tmp_path)
    target = postgres_target(Settings(database_sslrootcert=Path(ca)))
    assert target.tls.sslmode is None and target.tls.sslrootcert == Path(ca)
    context = target.connect_args()["ssl"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_an_unknown_sslmode_in_the_url_is_a_clear_error() -> None:
    with pytest.raises(TransportConfigError, match="unknown PostgreSQL sslmode"):
        postgres_target(Settings(database_url="postgresql://u:p@db/m?sslmode=sometimes"))


async def test_the_engine_and_the_relays_listen_connection_reach_postgres_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the engine took the URL's query as asyncpg arguments and the relay its DSN: a
    ``?sslmode=verify-full`` meant different things to each. Now both get the same DSN and ``ssl``."""
    import asyncpg

    from shared.db import make_engine
    from shared.transport import connect_asyncpg

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def fake_connect(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        raise ConnectionRefusedError("no database in a unit test")

    monkeypatch.setattr(asyncpg, "connect", fake_connect)
    s = Settings(
        database_url="postgresql://u:pw@db.internal:5432/membership?sslmode=verify-ca&application_name=x",
        database_sslmode="verify-full",
    )
    with pytest.raises(ConnectionRefusedError):
        await connect_asyncpg(s)
    engine = make_engine(s, pooled=False)
    try:
        with pytest.raises(ConnectionRefusedError):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    (relay_args, relay_kw), (_, engine_kw) = calls
    assert relay_args == ("postgresql://u:pw@db.internal:5432/membership?application_name=x",)
    assert engine_kw["host"] == "db.internal" and engine_kw["database"] == "membership"
    assert engine_kw.get("application_name") == "x"  # SQLAlchemy passes the rest of the query through
    for kw in (relay_kw, engine_kw):
        context = kw["ssl"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname  # verify-full, the variable's
    assert "sslmode" not in engine_kw


def test_make_engine_strips_tls_parameters_from_the_url() -> None:
    from shared.db import make_engine

    engine = make_engine(Settings(database_url="postgresql://u:pw@db/m?sslmode=require&ssl=true"))
    assert dict(engine.url.query) == {}
