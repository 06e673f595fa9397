"""Topics as configuration: a worker creates missing topics in development only (MEMBERSHIP_CREATE_TOPICS),
and ``python -m shared.topics`` (the topic-init Job) creates them with partitions, replication,
min.insync.replicas and retention (dead letters: 30 days at least)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shared.service
import shared.topics
from shared.kafka import DLQ_RETENTION_MS, all_topics, topic_configs
from shared.production import EXIT_REFUSED
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 24 * 3600 * 1000


@pytest.fixture(autouse=True)
def _no_topic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEMBERSHIP_CREATE_TOPICS", "MEMBERSHIP_ENV", "MEMBERSHIP_TOPIC_RETENTION_DAYS"):
        monkeypatch.delenv(name, raising=False)


def test_workers_create_topics_in_development_and_not_in_production() -> None:
    assert Settings().creates_topics is True
    assert Settings(env="production").creates_topics is False
    assert Settings(env="production", create_topics=True).creates_topics is True
    assert Settings(env="development", create_topics=False).creates_topics is False


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBERSHIP_ENV", "production")
    monkeypatch.setenv("MEMBERSHIP_CREATE_TOPICS", "true")
    assert Settings().creates_topics is True
    monkeypatch.setenv("MEMBERSHIP_ENV", "development")
    monkeypatch.setenv("MEMBERSHIP_CREATE_TOPICS", "false")
    assert Settings().creates_topics is False


class _Stop(Exception):
    """Raised where the worker would start its producer: what came before is what the test looks at."""


@pytest.mark.parametrize(("settings", "created"), [({}, True), ({"env": "production"}, False)])
def test_a_worker_honours_the_setting(monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], created: bool) -> None:
    from points.service import SERVICE

    calls: list[Settings] = []

    async def ensure_topics(s: Settings, *args: Any, **kwargs: Any) -> None:
        calls.append(s)

    def make_producer(s: Settings) -> Any:
        raise _Stop

    monkeypatch.setattr(shared.service, "ensure_topics", ensure_topics)
    monkeypatch.setattr(shared.service, "make_producer", make_producer)
    with pytest.raises(_Stop):
        asyncio.run(shared.service.run_worker(SERVICE, Settings(**settings), asyncio.Event()))
    assert len(calls) == (1 if created else 0)


def test_topic_configuration_in_production_shape() -> None:
    s = Settings(topic_replication=3, topic_min_insync_replicas=2, topic_retention_days=7)
    assert topic_configs("membership.points", s) == {"retention.ms": str(7 * DAY_MS), "min.insync.replicas": "2"}
    assert topic_configs("membership.points.dlq", s) == {"retention.ms": str(30 * DAY_MS), "min.insync.replicas": "2"}
    # a longer retention of the event topics holds for their dead letters too
    longer = Settings(topic_retention_days=30, inbox_retention_days=60)
    assert topic_configs("membership.points.dlq", longer)["retention.ms"] == str(30 * DAY_MS)
    assert topic_configs("membership.points.dlq", Settings(topic_retention_days=45, inbox_retention_days=60)) == {
        "retention.ms": str(45 * DAY_MS)
    }


def test_development_defaults_leave_the_broker_defaults_except_for_dead_letters() -> None:
    s = Settings()
    assert topic_configs("membership.enrollment", s) == {}
    assert topic_configs("membership.enrollment.dlq", s) == {"retention.ms": str(DLQ_RETENTION_MS)}


def test_plan_lists_every_topic_and_its_dead_letter_topic() -> None:
    rows = shared.topics.plan(Settings(topic_partitions=24, topic_replication=3, topic_min_insync_replicas=2))
    assert [r["topic"] for r in rows] == all_topics()
    assert len(rows) == 10
    assert all(r["partitions"] == 24 and r["replication_factor"] == 3 for r in rows)
    dlqs = [r for r in rows if str(r["topic"]).endswith(".dlq")]
    assert len(dlqs) == 5
    assert all(int(r["configs"]["retention.ms"]) >= 30 * DAY_MS for r in dlqs)  # type: ignore[index]


def test_settings_that_cannot_work_are_refused() -> None:
    assert shared.topics.problems(Settings(topic_replication=3, topic_min_insync_replicas=2)) == []
    assert shared.topics.problems(Settings(topic_replication=1, topic_min_insync_replicas=2))
    assert shared.topics.problems(Settings(topic_retention_days=60, inbox_retention_days=30))
    assert shared.topics.problems(Settings(env="production", kafka_security_protocol="PLAINTEXT"))
    assert not shared.topics.problems(
        Settings(env="production", kafka_security_protocol="PLAINTEXT", kafka_allow_plaintext=True)
    )


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.topics", *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_entry_point_prints_the_plan_as_the_job_would_create_it() -> None:
    done = _run(
        {
            "MEMBERSHIP_TOPIC_PARTITIONS": "12",
            "MEMBERSHIP_TOPIC_REPLICATION": "3",
            "MEMBERSHIP_TOPIC_MIN_INSYNC_REPLICAS": "2",
            "MEMBERSHIP_TOPIC_RETENTION_DAYS": "7",
        },
        "--plan",
    )
    assert done.returncode == 0, done.stderr
    rows = {r["topic"]: r for r in json.loads(done.stdout)}
    assert rows["membership.tiering"]["configs"] == {"retention.ms": str(7 * DAY_MS), "min.insync.replicas": "2"}
    assert rows["membership.tiering.dlq"]["configs"]["retention.ms"] == str(30 * DAY_MS)


def test_the_entry_point_refuses_plaintext_kafka_in_production_before_contacting_it() -> None:
    done = _run({"MEMBERSHIP_ENV": "production", "MEMBERSHIP_KAFKA_BOOTSTRAP": "192.0.2.1:9092"})
    assert done.returncode == EXIT_REFUSED
    assert "PLAINTEXT" in done.stderr
