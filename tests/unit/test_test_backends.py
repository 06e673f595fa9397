"""The choice of where the integration and end-to-end suite gets PostgreSQL and the broker
(tests/backends.py), without Docker: which backend for which environment, the settings made from the
containers' endpoints, and a clear error when containers are asked for where they cannot run."""

from __future__ import annotations

import builtins
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack
from shared.settings import Settings
from tests import backends
from tests.backends import (
    BACKEND_VARIABLE,
    BackendUnavailable,
    ContainerEndpoints,
    chosen_backend,
    docker_problem,
    infrastructure,
    settings_from,
    start_containers,
)

ROOT = Path(__file__).resolve().parents[2]
ENDPOINTS = ContainerEndpoints(
    postgres_host="localhost",
    postgres_port=49153,
    user="membership",
    password="membership",
    database="membership",
    kafka_bootstrap="localhost:41234",
)


@pytest.mark.parametrize(
    ("env", "backend"),
    [
        ({}, "embedded"),
        ({BACKEND_VARIABLE: ""}, "embedded"),
        ({BACKEND_VARIABLE: "embedded"}, "embedded"),
        ({BACKEND_VARIABLE: "containers"}, "containers"),
        ({BACKEND_VARIABLE: " Containers "}, "containers"),
    ],
)
def test_the_backend_follows_the_environment_and_is_embedded_by_default(env: dict[str, str], backend: str) -> None:
    assert chosen_backend(env) == backend


def test_an_unknown_backend_is_an_error_naming_the_choices() -> None:
    with pytest.raises(BackendUnavailable, match="must be one of embedded, containers, not 'docker'"):
        chosen_backend({BACKEND_VARIABLE: "docker"})


def test_the_embedded_backend_needs_no_docker_and_leaves_the_stack_as_it_was() -> None:
    def no_docker_asked() -> str | None:
        raise AssertionError("the embedded backend must not look for Docker")

    assert infrastructure({}, problem=no_docker_asked) is None


def test_containers_where_they_can_run_start_containers() -> None:
    assert infrastructure({BACKEND_VARIABLE: "containers"}, problem=lambda: None) is start_containers


def test_containers_asked_for_without_docker_is_a_clear_error_not_a_fallback() -> None:
    with pytest.raises(BackendUnavailable) as error:
        infrastructure({BACKEND_VARIABLE: "containers"}, problem=lambda: "no Docker engine answers (x)")
    message = str(error.value)
    assert "MEMBERSHIP_TEST_BACKEND=containers" in message and "needs Docker" in message
    assert "no Docker engine answers" in message and "make test" in message


def test_no_docker_engine_is_reported_with_its_cause() -> None:
    class Refused:
        def ping(self) -> bool:
            raise ConnectionRefusedError("connect to /var/run/docker.sock refused")

    if _missing("docker", "testcontainers"):  # the lock installs both; without them that is the problem
        assert "testcontainers is not installed" in (docker_problem() or "")
        return
    assert docker_problem(lambda: Refused()) == (
        "no Docker engine answers (ConnectionRefusedError: connect to /var/run/docker.sock refused)"
    )

    def from_env_fails() -> Any:
        raise RuntimeError("Error while fetching server API version")

    assert "RuntimeError: Error while fetching server API version" in (docker_problem(from_env_fails) or "")

    class Answers:
        def ping(self) -> bool:
            return True

    assert docker_problem(lambda: Answers()) is None


def test_testcontainers_missing_is_reported_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def without_testcontainers(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "testcontainers" or name.startswith("testcontainers."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for module in [m for m in sys.modules if m == "testcontainers" or m.startswith("testcontainers.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", without_testcontainers)
    problem = docker_problem(lambda: pytest.fail("Docker must not be asked when testcontainers is missing"))
    assert problem is not None and problem.startswith("testcontainers is not installed")
    assert "requirements.lock" in problem


def _missing(*modules: str) -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in modules)


def test_the_containers_endpoints_become_the_services_settings() -> None:
    env = settings_from(ENDPOINTS)
    assert env == {
        "MEMBERSHIP_DATABASE_URL": "postgresql+asyncpg://membership:membership@localhost:49153/membership",
        "MEMBERSHIP_KAFKA_BOOTSTRAP": "localhost:41234",
        "MEMBERSHIP_KAFKA_IDEMPOTENT_PRODUCER": "true",
        "MEMBERSHIP_TOPIC_REPLICATION": "1",
    }
    settings = Settings(**{k.removeprefix("MEMBERSHIP_").lower(): v for k, v in env.items()})
    assert settings.asyncpg_dsn == "postgresql://membership:membership@localhost:49153/membership"
    assert settings.kafka_idempotent_producer is True and settings.kafka_bootstrap == "localhost:41234"


def test_a_stack_with_an_infrastructure_uses_it_and_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the fixtures see: the stack's URL, bootstrap and settings are the containers'. The migrations
    and the broker replay are not run here (they need the servers)."""
    stopped: list[str] = []

    class Server:
        def __init__(self, name: str, **where: str) -> None:
            self.name = name
            self.url = where.get("url", "")
            self.bootstrap = where.get("bootstrap", "")

        def stop(self) -> None:
            stopped.append(self.name)

    def fake_containers(stack: Stack) -> tuple[Server, Server]:
        env = settings_from(ENDPOINTS)
        stack.env_overrides.update(env)
        return Server("pg", url=env["MEMBERSHIP_DATABASE_URL"]), Server("kafka", bootstrap=ENDPOINTS.kafka_bootstrap)

    monkeypatch.setattr("subprocess.run", lambda *a, **k: None)  # shared.migrate
    monkeypatch.setattr("shared.kafka.ensure_topics", _no_topics)
    monkeypatch.setattr(Stack, "_replay_into_new_broker", _no_topics)
    stack = Stack(
        data_dir=tmp_path, pg_port=1, broker_port=2, service_ports={"points": 3}, infrastructure=fake_containers
    )
    stack.start_infrastructure()
    assert stack.postgres is not None and stack.broker is not None
    assert stack.postgres.url.endswith("@localhost:49153/membership") and stack.broker.bootstrap == "localhost:41234"
    settings = stack.settings()
    assert settings.kafka_bootstrap == "localhost:41234" and settings.kafka_idempotent_producer is True
    assert settings.database_url == "postgresql+asyncpg://membership:membership@localhost:49153/membership"
    assert stack.env["MEMBERSHIP_ENV"] == "development"
    stack.stop()
    assert stopped == ["kafka", "pg"]


async def _no_topics(*args: Any) -> None:
    return None


def test_make_test_containers_selects_the_containers_for_the_integration_and_e2e_tests() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test-containers:.*\n\t(.+)$", makefile, re.M)
    assert recipe is not None
    assert "MEMBERSHIP_TEST_BACKEND=containers" in recipe.group(1)
    assert '-m "integration or e2e"' in recipe.group(1)


def test_the_container_images_are_the_production_ones() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"image: {backends.KAFKA_IMAGE}" in compose and f"image: {backends.POSTGRES_IMAGE}" in compose


def test_testcontainers_is_pinned_in_the_test_extra_and_the_lock() -> None:
    import tomllib

    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    [pin] = [p for p in test_extra if p.startswith("testcontainers")]
    assert re.fullmatch(r"testcontainers==\d+\.\d+\.\d+", pin)
    lock = (ROOT / "requirements.lock").read_text().split()
    assert pin in lock
    for dependency in ("docker", "wrapt", "python-dotenv", "urllib3", "typing_extensions"):
        assert [line for line in lock if line.lower().startswith(dependency.lower() + "==")], dependency


def test_kafka_advertises_the_address_the_services_are_given() -> None:
    env = backends.kafka_environment("docker-host.internal", 41234)
    endpoints = ContainerEndpoints("docker-host.internal", 5432, "u", "p", "d", "docker-host.internal:41234")
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{settings_from(endpoints)['MEMBERSHIP_KAFKA_BOOTSTRAP']}"
    assert (
        env["KAFKA_LISTENERS"].startswith("PLAINTEXT://:41234,") and env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    )
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false" and env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_the_postgres_container_gets_room_for_every_services_pool() -> None:
    command = backends.postgres_command()
    assert "-c max_connections=400" in command and "-c fsync=off" in command
