"""Kafka clients configured the same way in every service, and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .events import dlq_of, topic_of
from .settings import SERVICES, Settings
from .transport import kafka_options

log = logging.getLogger(__name__)


def all_topics() -> list[str]:
    topics = [topic_of(s) for s in SERVICES]
    return topics + [dlq_of(t) for t in topics]


def make_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka_options(settings),
        enable_idempotence=settings.kafka_idempotent_producer,
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
    )


#: dead letters are kept on the broker for at least 30 days (SPEC §7); the other topics use
#: MEMBERSHIP_TOPIC_RETENTION_DAYS, or the broker's default retention (7 days on Kafka), the outbox and
#: inbox cover replays within it
DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000


def topic_configs(topic: str, settings: Settings) -> dict[str, str]:
    """The per-topic configuration a topic is created with: retention, and min.insync.replicas above 1."""
    configs: dict[str, str] = {}
    retention = None if settings.topic_retention_days is None else int(settings.topic_retention_days * 86400 * 1000)
    if topic.endswith(".dlq"):
        retention = max(DLQ_RETENTION_MS, retention or 0)
    if retention is not None:
        configs["retention.ms"] = str(retention)
    if settings.topic_min_insync_replicas > 1:
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    return configs


def _new_topic(topic: str, settings: Settings) -> NewTopic:
    return NewTopic(
        topic, settings.topic_partitions, settings.topic_replication, topic_configs=topic_configs(topic, settings)
    )


async def ensure_topics(settings: Settings, topics: list[str] | None = None, attempts: int = 30) -> None:
    """Create the platform's topics (and their dead-letter topics) if they do not exist."""
    wanted = topics or all_topics()
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(**kafka_options(settings))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):  # another process created them first
                    await admin.create_topics([_new_topic(t, settings) for t in missing])
            return
        except Exception as exc:  # broker still starting
            if attempt == attempts - 1:
                raise
            log.info("waiting for the broker", extra={"error": str(exc)})
            await asyncio.sleep(1)
        finally:
            await admin.close()
