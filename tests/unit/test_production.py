"""Production mode (SPEC §9): a process started with ``MEMBERSHIP_ENV=production`` and a development
default exits non-zero naming it; a production configuration passes the check; development checks
nothing. The checks of the database's contents are in tests/integration/test_production_data.py."""

from __future__ import annotations

import ast
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.production import EXIT_REFUSED, ProductionRefused, configuration_problems, enforce
from shared.settings import DEVELOPMENT_SECRETS_KEY, Settings

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = base64.b64encode(b"k" * 32).decode()
#: a configuration production accepts (nothing here is contacted by the configuration check)
GOOD = {
    "MEMBERSHIP_ENV": "production",
    "MEMBERSHIP_SECRETS_KEY": STRONG_KEY,
    "MEMBERSHIP_PII_MASTER_KEY": base64.b64encode(b"p" * 32).decode(),
    "MEMBERSHIP_DATABASE_URL": "postgresql://membership:Xq7-unique-pw-91@db.internal:5432/membership",
    "MEMBERSHIP_DATABASE_SSLMODE": "require",
    "MEMBERSHIP_KAFKA_BOOTSTRAP": "kafka.internal:9093",
    "MEMBERSHIP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "MEMBERSHIP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "MEMBERSHIP_KAFKA_SASL_USERNAME": "membership",
    "MEMBERSHIP_KAFKA_SASL_PASSWORD": "kafka-pw-8d1e",
}


def settings_of(env: dict[str, str]) -> Settings:
    prefix = "MEMBERSHIP_"
    return Settings(**{k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)})


def start(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """Start ``python -m <command>`` as a deployment would, with only these MEMBERSHIP_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEMBERSHIP_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", *command],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_a_production_configuration_passes_the_configuration_check() -> None:
    assert configuration_problems(settings_of(GOOD)) == []
    plaintext_allowed = {**GOOD, "MEMBERSHIP_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    plaintext_allowed["MEMBERSHIP_KAFKA_ALLOW_PLAINTEXT"] = "true"
    assert configuration_problems(settings_of(plaintext_allowed)) == []


def test_development_checks_nothing() -> None:
    enforce(Settings(env="development"), "test")  # development defaults everywhere: no exit


BAD_DEFAULTS = [
    ("development secrets key", {"MEMBERSHIP_SECRETS_KEY": DEVELOPMENT_SECRETS_KEY}, "MEMBERSHIP_SECRETS_KEY"),
    ("secrets key unset", {"MEMBERSHIP_SECRETS_KEY": None}, "MEMBERSHIP_SECRETS_KEY is the development default"),
    ("development PII master key", {"MEMBERSHIP_PII_MASTER_KEY": None}, "MEMBERSHIP_PII_MASTER_KEY"),
    ("secrets key too short", {"MEMBERSHIP_SECRETS_KEY": base64.b64encode(b"short").decode()}, "32 bytes"),
    (
        "compose's database password",
        {"MEMBERSHIP_DATABASE_URL": "postgresql://membership:membership@postgres:5432/membership"},
        "default database password",
    ),
    (
        "k8s example's database password",
        {"MEMBERSHIP_DATABASE_URL": "postgresql://membership:CHANGE-ME@postgres:5432/membership"},
        "default database password",
    ),
    ("no database password", {"MEMBERSHIP_DATABASE_URL": None}, "has no password"),
    ("plaintext Kafka", {"MEMBERSHIP_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "Kafka is reached over PLAINTEXT"),
    (
        "SASL over plaintext",
        {"MEMBERSHIP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
        "Kafka is reached over SASL_PLAINTEXT",
    ),
    (
        "SASL without a password",
        {"MEMBERSHIP_KAFKA_SASL_PASSWORD": None},
        "MEMBERSHIP_KAFKA_SASL_USERNAME and _PASSWORD",
    ),
]


def _with(changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@pytest.mark.parametrize(("case", "changes", "named"), BAD_DEFAULTS, ids=[c[0] for c in BAD_DEFAULTS])
def test_each_development_default_is_refused_by_the_check(
    case: str, changes: dict[str, str | None], named: str
) -> None:
    problems = configuration_problems(settings_of(_with(changes)))
    assert len(problems) == 1 and named in problems[0], problems
    with pytest.raises(ProductionRefused) as refused:
        enforce(settings_of(_with(changes)), "test", check_database=False)
    assert refused.value.code == EXIT_REFUSED


@pytest.mark.parametrize(
    ("case", "changes", "named"),
    [BAD_DEFAULTS[0], BAD_DEFAULTS[3], BAD_DEFAULTS[5], BAD_DEFAULTS[6]],
    ids=["secrets key", "database password", "no database password", "plaintext Kafka"],
)
def test_a_service_process_refuses_to_start_with_a_development_default(
    case: str, changes: dict[str, str | None], named: str
) -> None:
    done = start(_with(changes), "points", "api")
    assert done.returncode == EXIT_REFUSED, done.stderr
    assert "refusing to start in production mode" in done.stderr and named in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout


def test_a_worker_and_the_migrations_refuse_too_and_so_does_seeding_the_demo_chain() -> None:
    worker = start(_with({"MEMBERSHIP_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}), "notify", "worker")
    assert worker.returncode == EXIT_REFUSED and "PLAINTEXT" in worker.stderr
    migrate = start(_with({"MEMBERSHIP_SECRETS_KEY": None}), "shared.migrate")
    assert migrate.returncode == EXIT_REFUSED and "MEMBERSHIP_SECRETS_KEY" in migrate.stderr
    # a good configuration still may not seed the demo keys (refused before any connection is tried)
    seed = start(GOOD, "shared.migrate", "--seed-demo")
    assert seed.returncode == EXIT_REFUSED and "--seed-demo" in seed.stderr and "bootstrap" in seed.stderr


def test_every_problem_is_named_at_once() -> None:
    done = start({"MEMBERSHIP_ENV": "production"}, "tiering", "api")
    assert done.returncode == EXIT_REFUSED
    for named in ("MEMBERSHIP_SECRETS_KEY", "has no password", "PLAINTEXT"):
        assert named in done.stderr


def test_compose_and_the_k8s_manifests_run_in_production_mode_without_seeding_demo_keys() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        command = " ".join(service.get("command", []))
        assert "--seed-demo" not in command, name
        if command.startswith("python -m"):
            assert service["environment"]["MEMBERSHIP_ENV"] == "production", name
    k8s = ROOT / "deploy/k8s"
    settings = dict(
        line.split("=", 1)
        for line in (k8s / "base/settings.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["MEMBERSHIP_ENV"] == "production"
    for overlay in (k8s / "overlays").iterdir():  # no overlay switches production mode off
        assert "MEMBERSHIP_ENV" not in (overlay / "settings.env").read_text(), overlay.name
    docs = [
        d for f in sorted((k8s / "base").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d and "kind" in d
    ]
    commands = [
        c["command"]
        for d in docs
        if d["kind"] in ("Job", "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"] + d["spec"]["template"]["spec"].get("initContainers", [])
    ]
    assert len(commands) == 21 and not [c for c in commands if "--seed-demo" in c]
    assert "membershipctl bootstrap" in (ROOT / "deploy/README.md").read_text()


def test_the_embedded_stack_stays_in_development_whatever_the_shell_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack.processes import Postgres, Tansu
    from devstack.stack import Stack

    monkeypatch.setenv("MEMBERSHIP_ENV", "production")
    stack = Stack(data_dir=Path("/nonexistent"), pg_port=1, broker_port=2, service_ports={"points": 3})
    stack.postgres = Postgres(Path("/nonexistent/pg"), 1)
    stack.broker = Tansu(2, Path("/nonexistent/tansu.log"))
    assert stack.env["MEMBERSHIP_ENV"] == "development"


def test_every_engine_of_the_production_code_is_made_by_make_engine() -> None:
    """SQL parameters are never logged: ``make_engine`` sets hide_parameters (and TLS); no production
    module creates an engine any other way."""
    from shared.settings import SERVICES

    roots = [ROOT / "shared", ROOT / "membershipctl", ROOT / "devstack", *(ROOT / "services" / s / s for s in SERVICES)]
    offenders = []
    for root in roots:
        for path in root.rglob("*.py"):
            if path == ROOT / "shared" / "db.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    if name in ("create_async_engine", "create_engine"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_make_engine_hides_parameters() -> None:
    from shared.db import make_engine

    assert make_engine(Settings()).sync_engine.hide_parameters is True
    assert make_engine(Settings(), pooled=False).sync_engine.hide_parameters is True
