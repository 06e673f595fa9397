"""One settings class for every service; every variable is ``MEMBERSHIP_<NAME>``.

Settings are built once at start-up and passed down (never read at import time),
so tests can build a service with other settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .crypto import DEV_MASTER_KEY, decode_master_key

SERVICES = ("enrollment", "points", "tiering", "benefits", "notify")
DEFAULT_PORTS = {"enrollment": 8001, "points": 8002, "tiering": 8003, "benefits": 8004, "notify": 8005}


#: the key webhook secrets are encrypted with when MEMBERSHIP_SECRETS_KEY is not set: fine for a laptop,
#: refused in production (base64 of 32 bytes, as a real key must be)
DEVELOPMENT_SECRETS_KEY = "ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXRzLWtleS0wMDA="
#: the demo chain's webhook secret (a Standard Webhooks ``whsec_`` secret); refused in production
DEVELOPMENT_WEBHOOK_SECRET = "whsec_ZGV2LXdlYmhvb2stc2VjcmV0LWRldmVsb3BtZW50"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMBERSHIP_", extra="ignore")

    #: ``production`` refuses to start with development defaults (see shared.production, SPEC §9)
    env: Literal["development", "production"] = "development"

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/membership"
    # PostgreSQL TLS (libpq's names); they win over the same parameters in the URL (shared.transport)
    database_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    database_sslrootcert: Path | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None
    db_pool_size: int = Field(10, ge=1, le=200)
    db_pool_timeout_seconds: float = Field(10.0, gt=0, le=300)
    db_pool_pre_ping: bool = False
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Tansu rejects aiokafka's InitProducerId v0; switch on against Apache Kafka only.
    kafka_idempotent_producer: bool = False
    # Kafka TLS and SASL (shared.transport.kafka_options); production refuses PLAINTEXT unless allowed
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_allow_plaintext: bool = False
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True

    #: AES-256-GCM key (base64 of 32 bytes) of the secrets stored in the database (webhook secrets)
    secrets_key: SecretStr = SecretStr(DEVELOPMENT_SECRETS_KEY)
    topic_partitions: int = Field(12, ge=1, le=1000)
    topic_replication: int = Field(1, ge=1, le=5)
    #: topics' min.insync.replicas (with acks=all, how many replicas a write needs); 1 leaves the broker's
    topic_min_insync_replicas: int = Field(1, ge=1, le=5)
    #: retention of the event topics in days (None: the broker's default); dead-letter topics keep 30 at least
    topic_retention_days: float | None = Field(None, gt=0)
    #: whether a worker creates missing topics when it starts. None (the default): yes in development, no in
    #: production, where the topic-init Job (``python -m shared.topics``) creates them and the services need
    #: no right to create topics
    create_topics: bool | None = None
    fetch_max_wait_ms: int = Field(20, ge=1, le=5000)

    host: str = "127.0.0.1"
    #: uvicorn worker processes per API (one per core is the usual ceiling); a service may have its own
    #: number, e.g. MEMBERSHIP_API_WORKERS_BY_SERVICE='{"enrollment": 2}'. In Kubernetes prefer more pods
    #: of one process each: each process has its own /metrics (docs/decisions/0050, 0047)
    api_workers: int = Field(1, ge=1, le=64)
    api_workers_by_service: dict[str, int] = Field(default_factory=dict)
    enrollment_port: int = DEFAULT_PORTS["enrollment"]
    points_port: int = DEFAULT_PORTS["points"]
    tiering_port: int = DEFAULT_PORTS["tiering"]
    benefits_port: int = DEFAULT_PORTS["benefits"]
    notify_port: int = DEFAULT_PORTS["notify"]
    # each worker's operations endpoint (/metrics, /healthz); 0 picks a free port (logged at start)
    enrollment_worker_port: int = Field(DEFAULT_PORTS["enrollment"] + 1000, ge=0, le=65535)
    points_worker_port: int = Field(DEFAULT_PORTS["points"] + 1000, ge=0, le=65535)
    tiering_worker_port: int = Field(DEFAULT_PORTS["tiering"] + 1000, ge=0, le=65535)
    benefits_worker_port: int = Field(DEFAULT_PORTS["benefits"] + 1000, ge=0, le=65535)
    notify_worker_port: int = Field(DEFAULT_PORTS["notify"] + 1000, ge=0, le=65535)

    # outbox relay
    outbox_shards: int = Field(12, ge=1, le=1024)
    outbox_batch: int = Field(1000, ge=1, le=10000)
    outbox_poll_seconds: float = Field(1.0, gt=0, le=60)

    # consumer runner
    consumer_batch: int = Field(1000, ge=1, le=10000)
    consumer_max_attempts: int = Field(3, ge=1, le=100)
    consumer_retry_backoff_seconds: float = Field(0.2, ge=0, le=60)
    #: an idle consumer pauses its partitions and waits for its topics' doorbell (shared.doorbell):
    #: on Tansu, which holds every fetch for its full wait, this is what makes idling cheap; against
    #: Apache Kafka, whose long-polls return as soon as data arrives, switch it off and raise
    #: fetch_max_wait_ms to 500 instead (docs/decisions/0045)
    consumer_idle_pause: bool = True
    consumer_idle_after_seconds: float = Field(0.05, gt=0, le=60)
    consumer_idle_poll_seconds: float = Field(2.0, gt=0, le=300)
    #: how often consumer_lag is measured against the broker, apart from the batches (a stuck consumer's
    #: lag still grows on the dashboard)
    consumer_lag_interval_seconds: float = Field(10.0, gt=0, le=300)
    #: how long an API's /readyz reuses its last broker check (the broker is reported, never waited on)
    broker_check_seconds: float = Field(5.0, ge=0, le=300)

    # schedules (expiry, reviews, birthdays): how often a worker looks for due work
    schedule_interval_seconds: float = Field(60.0, gt=0)
    #: how far an operations run of a job (``POST .../run`` with ``as_of``) may look ahead of the service
    #: clock's now, and back behind it (docs/decisions/0030)
    max_as_of_skew_seconds: float = Field(3600.0, ge=0)
    max_as_of_past_seconds: float = Field(7 * 24 * 3600.0, ge=0)

    # retention of the shared tables (see shared.retention); the inbox must outlive the topics' retention
    outbox_retention_days: float = Field(7.0, gt=0)
    inbox_retention_days: float = Field(30.0, gt=0)
    idempotency_key_hours: float = Field(48.0, gt=0)
    retention_interval_seconds: float = Field(3600.0, gt=0)

    clock_file: Path | None = None  # tests only: a file with a time offset in seconds (see shared.clock)

    api_key_cache_seconds: float = Field(5.0, ge=0)
    #: how often an unknown key may cause a reload of the known secrets' hashes (one query, whatever the
    #: number of guesses; see shared.platform.KnownSecrets)
    api_key_unknown_reload_seconds: float = Field(1.0, gt=0, le=60)

    # abuse limits (SPEC §9): request bodies, requests per API key and process, phone lookups per key
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    rate_limit_per_second: float = Field(1000.0, gt=0)
    rate_limit_burst: int = Field(2000, ge=1)
    phone_lookup_per_second: float = Field(1.0, gt=0)
    phone_lookup_burst: int = Field(30, ge=1)
    #: how long a rotated key's previous secret keeps working
    key_rotation_grace_seconds: int = Field(24 * 3600, ge=0)
    log_level: str = "INFO"
    data_dir: Path = Path(".data")

    # notifications
    notify_sink_dir: Path | None = None  # local sink for sms/webhook in the embedded default
    notify_max_attempts: int = Field(5, ge=1, le=50)
    notify_retry_base_seconds: float = Field(1.0, ge=0)
    #: the SMS channel: ``sink`` (the local file sink, development only; production refuses it for notify's
    #: worker) or ``http`` (a provider's HTTP API, notify.channels.HttpSmsChannel)
    sms_provider: Literal["sink", "http"] = "sink"
    sms_http_url: str | None = None  # the provider's send endpoint, https:// in production
    sms_http_token: SecretStr | None = None  # the provider's credential, from the secret store
    #: the header the credential travels in: ``Authorization`` sends ``Bearer <token>``, any other header
    #: (e.g. ``X-Api-Key``) the token as it is
    sms_http_auth_header: str = Field("Authorization", pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: one attempt's limit; under notify's per-attempt limit (5 s, the claimed row's lock is held meanwhile)
    sms_http_timeout_seconds: float = Field(4.0, gt=0, le=5)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "membership@example.invalid"

    # the embedded default's demo chain and keys (printed by `make run`)
    demo_chain_id: str = "demo-chain"
    demo_pos_key: str = "dev-pos-key-0000000000000000"
    demo_app_key: str = "dev-app-key-0000000000000000"
    demo_ops_key: str = "dev-ops-key-0000000000000000"
    #: onboards further chains in the embedded default (a development convenience, like the others)
    demo_platform_key: str = "dev-platform-key-0000000000000000"
    demo_webhook_url: str | None = None
    demo_webhook_secret: str = DEVELOPMENT_WEBHOOK_SECRET

    # personal data (SPEC §8): the master key the chains' key-encryption keys derive from (HKDF), base64
    # of 32 random bytes, from the secret store; enrollment wraps members' data keys with it, notify
    # unwraps them (shared.personal_data). The default is the development key.
    pii_master_key: SecretStr = SecretStr(DEV_MASTER_KEY)

    @field_validator("api_workers_by_service", mode="before")
    @classmethod
    def _workers_json(cls, value: object) -> object:
        # from the environment pydantic-settings parses the JSON; given as a string otherwise (devstack), here
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        if v.startswith("postgresql://") or v.startswith("postgres://"):
            v = "postgresql+asyncpg://" + v.split("://", 1)[1]
        if not v.startswith("postgresql+asyncpg://"):
            raise ValueError("MEMBERSHIP_DATABASE_URL must be a postgresql:// (asyncpg) URL")
        return v

    def port_of(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def api_workers_of(self, service: str) -> int:
        return max(1, int(self.api_workers_by_service.get(service, self.api_workers)))

    def worker_port_of(self, service: str) -> int:
        return int(getattr(self, f"{service}_worker_port"))

    @model_validator(mode="after")
    def _sms_provider_has_a_url(self) -> Settings:
        if self.sms_provider == "http" and not self.sms_http_url:
            raise ValueError("MEMBERSHIP_SMS_PROVIDER=http needs MEMBERSHIP_SMS_HTTP_URL")
        if self.sms_http_url and not self.sms_http_url.startswith(("https://", "http://")):
            raise ValueError("MEMBERSHIP_SMS_HTTP_URL must be an http(s):// URL")
        return self

    @field_validator("pii_master_key")
    @classmethod
    def _master_key_shape(cls, v: SecretStr) -> SecretStr:
        decode_master_key(v.get_secret_value())  # base64 of 32 bytes, or the process refuses to start
        return v

    @property
    def asyncpg_dsn(self) -> str:
        """The URL as asyncpg takes it, TLS parameters and all (tests and tools of the embedded stack); the
        services connect through :func:`shared.transport.postgres_target`, which honours TLS."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def creates_topics(self) -> bool:
        """Whether a worker creates missing topics at start (MEMBERSHIP_CREATE_TOPICS, else not in production)."""
        return self.create_topics if self.create_topics is not None else not self.is_production
