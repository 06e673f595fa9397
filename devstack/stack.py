"""The whole platform as local processes: PostgreSQL, Tansu, and each service's API and worker.

``python -m devstack`` (``make run``) and the test suite both use :class:`Stack`;
the suite gives it free ports and a temporary data folder so it can run beside
a ``make run``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from shared.settings import SERVICES, Settings

from .processes import Postgres, Tansu, free_port

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


class DatabaseServer(Protocol):
    """A PostgreSQL the stack uses: the embedded one (:class:`Postgres`) or one the tests started elsewhere."""

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


class BrokerServer(Protocol):
    """A Kafka-protocol broker the stack uses: the embedded Tansu (:class:`Tansu`) or another."""

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...


#: starts the stack's PostgreSQL and broker instead of the embedded ones (the tests' containers,
#: tests/backends.py); it may add settings to ``stack.env_overrides``
Infrastructure = Callable[["Stack"], tuple[DatabaseServer, BrokerServer]]


@dataclass
class Stack:
    data_dir: Path
    pg_port: int
    broker_port: int
    service_ports: dict[str, int]
    #: each worker's /metrics endpoint; a service missing here gets a free port, chosen up front with
    #: the others (a worker binding "any port" could take an API port picked but not yet bound)
    worker_ports: dict[str, int] = field(default_factory=dict)
    env_overrides: dict[str, str] = field(default_factory=dict)
    pg_conf: dict[str, str] = field(default_factory=dict)
    services: tuple[str, ...] = SERVICES
    log_dir: Path | None = None
    postgres: DatabaseServer | None = None
    broker: BrokerServer | None = None
    #: None: the embedded PostgreSQL and Tansu on ``pg_port``/``broker_port``
    infrastructure: Infrastructure | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: processes stopped on purpose (stop_process); any other that exited has died
    stopped: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        taken = set(self.service_ports.values()) | set(self.worker_ports.values()) | {self.pg_port, self.broker_port}
        for name in self.service_ports:
            if name not in self.worker_ports:
                port = free_port()
                while port in taken:
                    port = free_port()
                self.worker_ports[name] = port
                taken.add(port)

    @property
    def env(self) -> dict[str, str]:
        assert self.postgres and self.broker
        env = {
            **os.environ,
            "MEMBERSHIP_ENV": "development",  # the embedded stack (make run, the tests) is never production
            "MEMBERSHIP_DATABASE_URL": self.postgres.url,
            "MEMBERSHIP_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "MEMBERSHIP_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        }
        for name, port in self.service_ports.items():
            env[f"MEMBERSHIP_{name.upper()}_PORT"] = str(port)
            env[f"MEMBERSHIP_{name.upper()}_WORKER_PORT"] = str(self.worker_ports[name])
        env.update(self.env_overrides)
        return env

    def settings(self) -> Settings:
        env = self.env
        prefix = "MEMBERSHIP_"
        values: dict[str, Any] = {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
        return Settings(**values)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.service_ports[service]}"

    def start_infrastructure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.log_dir or self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_dir = logs
        if self.infrastructure is not None:
            self.postgres, self.broker = self.infrastructure(self)
        else:
            postgres = Postgres(self.data_dir / "pg", self.pg_port, extra_conf=self.pg_conf)
            self.postgres = postgres
            postgres.start()
            broker = Tansu(self.broker_port, logs / "tansu.log")
            self.broker = broker
            broker.start()
        from shared.kafka import ensure_topics

        asyncio.run(ensure_topics(self.settings()))
        subprocess.run([sys.executable, "-m", "shared.migrate", "--seed-demo"], env=self.env, check=True)
        asyncio.run(self._replay_into_new_broker())

    async def _replay_into_new_broker(self) -> None:
        """The broker keeps everything in memory: what the previous one held is gone. Mark every
        outbox row published since that broker started as unpublished again, so the relays publish
        it anew; the consumers' inboxes make the events already applied no-ops. Nothing a consumer
        had not read yet is lost across a restart of ``make run``."""
        import asyncpg

        marker = self.data_dir / "broker-epoch"
        conn = await asyncpg.connect(self.settings().asyncpg_dsn)
        try:
            now = await conn.fetchval("SELECT now()")
            if marker.exists():
                since = datetime.fromisoformat(marker.read_text().strip())
                for schema in SERVICES:
                    await conn.execute(
                        f"UPDATE {schema}.outbox SET published_at = NULL WHERE published_at >= $1", since
                    )
            marker.write_text(now.isoformat())
        finally:
            await conn.close()

    def wait_settled(self, timeout: float = 60.0) -> None:
        """Wait until nothing is in flight: every outbox published and every running worker's consumer
        group committed up to the end of its topics, seen twice in a row (an applied event may add
        outbox rows that are then published and consumed in turn)."""
        asyncio.run(self._wait_settled(timeout))

    async def _wait_settled(self, timeout: float) -> None:
        import importlib

        import asyncpg
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from shared.events import topic_of

        groups: dict[str, list[str]] = {}
        for service in self.services:
            proc = self.procs.get(f"{service}-worker")
            if proc is None or proc.poll() is not None:
                continue
            handlers = importlib.import_module(f"{service}.service").SERVICE.handlers
            groups[f"membership-{service}"] = sorted({topic_of(cls.publisher) for cls in handlers or ()})
        conn = await asyncpg.connect(self.settings().asyncpg_dsn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_rounds = 0
        try:
            while quiet_rounds < 2:
                if loop.time() > deadline:
                    raise TimeoutError(f"the platform did not settle within {timeout}s")
                unpublished = 0
                for schema in SERVICES:
                    unpublished += await conn.fetchval(
                        f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"
                    )
                lagging = 0
                assert self.broker is not None
                for group, topics in groups.items():
                    consumer = AIOKafkaConsumer(
                        bootstrap_servers=self.broker.bootstrap, group_id=group, enable_auto_commit=False
                    )
                    await consumer.start()
                    try:
                        if any(not consumer.partitions_for_topic(t) for t in topics):
                            await consumer._client.force_metadata_update()
                        parts = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
                        ends = await consumer.end_offsets(parts)
                        for tp in parts:
                            if ends[tp] > (await consumer.committed(tp) or 0):
                                lagging += 1
                    finally:
                        await consumer.stop()
                quiet_rounds = quiet_rounds + 1 if unpublished == 0 and lagging == 0 else 0
                await asyncio.sleep(0.3)
        finally:
            await conn.close()

    def start_process(self, service: str, role: str) -> subprocess.Popen[bytes]:
        assert self.log_dir
        name = f"{service}-{role}"
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", service, role],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.stopped.discard(name)
        return proc

    def start_services(self, roles: tuple[str, ...] = ("api", "worker")) -> None:
        for service in self.services:
            for role in roles:
                self.start_process(service, role)

    def wait_ready(self, timeout: float = 60.0) -> float:
        started = time.monotonic()
        pending = set(self.services)
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir}/{name}.log")
                for service in list(pending):
                    try:
                        if client.get(self.url(service) + "/readyz").status_code == 200:
                            pending.discard(service)
                    except httpx.HTTPError:
                        pass
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"not ready after {timeout}s: {sorted(pending)}")
                time.sleep(0.2)
        return time.monotonic() - started

    def dead_processes(self) -> dict[str, str]:
        """Processes that exited without being stopped, with the end of their logs."""
        dead = {}
        for name, proc in self.procs.items():
            if name not in self.stopped and proc.poll() is not None:
                log = (self.log_dir / f"{name}.log") if self.log_dir else None
                tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
                dead[name] = f"exited with {proc.returncode}; log ends:\n{tail}"
        return dead

    def stop_process(self, name: str, sig: int | None = None, timeout: float = 15.0) -> None:
        self.stopped.add(name)
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        if sig is not None:
            proc.send_signal(sig)
        else:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
        for name in list(self.procs):
            self.stop_process(name)
        if self.broker:
            self.broker.stop()
        if self.postgres:
            self.postgres.stop()
