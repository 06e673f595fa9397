"""``python -m shared.topics``: create the platform's topics, the one process that needs the right to.

In production the workers do not create topics (``MEMBERSHIP_CREATE_TOPICS`` is off there): the
topic-init Job of deploy/k8s runs this with an identity allowed to create topics, before the workers
start. Each service's topic and its ``.dlq`` get ``MEMBERSHIP_TOPIC_PARTITIONS`` partitions,
``MEMBERSHIP_TOPIC_REPLICATION`` replicas, ``MEMBERSHIP_TOPIC_MIN_INSYNC_REPLICAS`` and
``MEMBERSHIP_TOPIC_RETENTION_DAYS`` (dead-letter topics: 30 days at least), see
:func:`shared.kafka.topic_configs`. Topics that exist are left as they are. ``--plan`` prints what
would be created and contacts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .kafka import all_topics, ensure_topics, topic_configs
from .observability import configure_logging
from .production import EXIT_REFUSED
from .settings import Settings
from .transport import kafka_is_plaintext


def plan(settings: Settings) -> list[dict[str, object]]:
    """Every topic with its partitions, replication factor and configuration."""
    return [
        {
            "topic": t,
            "partitions": settings.topic_partitions,
            "replication_factor": settings.topic_replication,
            "configs": topic_configs(t, settings),
        }
        for t in all_topics()
    ]


def problems(settings: Settings) -> list[str]:
    """Settings that would make every write fail, and, in production, Kafka over PLAINTEXT not allowed (the
    Job needs Kafka's settings only: the database's are not checked here, unlike the services' processes)."""
    found = []
    if settings.topic_min_insync_replicas > settings.topic_replication:
        found.append(
            f"MEMBERSHIP_TOPIC_MIN_INSYNC_REPLICAS ({settings.topic_min_insync_replicas}) is above "
            f"MEMBERSHIP_TOPIC_REPLICATION ({settings.topic_replication}): no write with acks=all could succeed"
        )
    if settings.topic_retention_days is not None and settings.topic_retention_days > settings.inbox_retention_days:
        found.append(
            f"MEMBERSHIP_TOPIC_RETENTION_DAYS ({settings.topic_retention_days:g}) is above "
            f"MEMBERSHIP_INBOX_RETENTION_DAYS ({settings.inbox_retention_days:g}): a replay from an old offset "
            "would apply events again whose inbox rows were purged"
        )
    if settings.is_production and kafka_is_plaintext(settings) and not settings.kafka_allow_plaintext:
        found.append(
            f"Kafka is reached over {settings.kafka_security_protocol} (unencrypted) in production: set "
            "MEMBERSHIP_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, or MEMBERSHIP_KAFKA_ALLOW_PLAINTEXT=true"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.topics", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--plan", action="store_true", help="print the topics and their configuration, create nothing")
    parser.add_argument("--attempts", type=int, default=60, help="how many times to try the broker, a second apart")
    args = parser.parse_args(argv)
    settings = Settings()
    found = problems(settings)
    if found:
        print("python -m shared.topics: refusing to start:\n" + "\n".join(f"  - {p}" for p in found), file=sys.stderr)
        return EXIT_REFUSED
    if args.plan:
        print(json.dumps(plan(settings), indent=2))
        return 0
    configure_logging("topics", settings.log_level)
    asyncio.run(ensure_topics(settings, attempts=args.attempts))
    print(f"topics present: {', '.join(all_topics())} (missing ones created as --plan prints)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
