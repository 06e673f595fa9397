"""How a service becomes processes: ``python -m <service> api|worker|migrate``.

A service describes itself once with a :class:`ServiceDefinition` (its schema,
tables, routers, event handlers and schedules); everything else is here, the
same for all five: the API process (uvicorn), and the worker process that runs
the outbox relay, the idempotent consumer and the schedules.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from . import tracing
from .api import ServiceContext, create_service_app
from .audit import audit_router
from .clock import Clock, OffsetFileClock, SystemClock
from .consumer import ConsumerRunner, Handlers, Prepare
from .db import Database, ServiceTables
from .dead_letters import dead_letter_router
from .health import LAST_ERROR, health_router, refresh_gauges
from .kafka import ensure_topics, make_producer
from .observability import configure_logging
from .outbox import OutboxRelay
from .platform import PlatformStore
from .production import enforce
from .retention import purge
from .secret_box import SecretBox
from .settings import Settings
from .worker_http import serve as serve_worker_endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRun:
    """What one run of a job covers: the chains, as of an instant. The schedule runs a job for every
    chain as of now; an operations endpoint runs it for the caller's chain, as of the time asked."""

    as_of: datetime
    chain_ids: tuple[str, ...]


#: every scheduled job has this one signature: ``async def job(ctx, run: JobRun) -> <what it did>``
Job = Callable[[ServiceContext, JobRun], Awaitable[object]]


@dataclass
class Schedule:
    """Periodic work of a worker (expiry, reviews, deliveries...). It must be safe to run
    on several replicas at once: the database, not the scheduler, prevents double effects."""

    name: str
    run: Job
    interval_seconds: float | None = None  # None: settings.schedule_interval_seconds
    #: also run as soon as this worker's consumer has applied a batch (work the events may have made due,
    #: like notify's deliveries), instead of polling at a short interval while nothing happens
    after_events: bool = False


@dataclass
class ServiceDefinition:
    name: str
    tables: ServiceTables
    routers: list[APIRouter]
    handlers: Handlers
    schedules: list[Schedule] = field(default_factory=list)
    #: optional batch loader for the handlers (see shared.consumer.Prepare)
    prepare: Prepare | None = None
    description: str = ""
    #: what production mode refuses in this service's own settings, for a role (``api``, ``worker``,
    #: ``migrate``), besides what every process is checked for (shared.production.configuration_problems)
    production_problems: Callable[[Settings, str], list[str]] | None = None

    @property
    def schema(self) -> str:
        return str(self.tables.outbox.schema)


def make_clock(settings: Settings) -> Clock:
    return OffsetFileClock(settings.clock_file) if settings.clock_file else SystemClock()


def build_context(defn: ServiceDefinition, settings: Settings, pool_size: int | None = None) -> ServiceContext:
    db = Database.connect(settings, defn.tables, make_clock(settings), pool_size)
    return ServiceContext(
        defn.name,
        settings,
        db,
        PlatformStore(
            db.engine,
            settings.api_key_cache_seconds,
            settings.api_key_unknown_reload_seconds,
            box=SecretBox.from_settings(settings),
        ),
    )


def service_routers(defn: ServiceDefinition) -> list[APIRouter]:
    """Every router a service's API serves: its own, and the audit, pipeline health and dead-letter
    ones every service has (the route table tests/e2e/test_route_matrix.py checks)."""
    routers = [*defn.routers, audit_router(), health_router()]
    if defn.handlers:
        routers.append(dead_letter_router(defn.handlers, defn.prepare))
    return routers


def create_app(defn: ServiceDefinition, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = build_context(defn, settings)
    return create_service_app(ctx, service_routers(defn), title=f"membership {defn.name}", description=defn.description)


async def _run_schedule(
    schedule: Schedule, ctx: ServiceContext, stop: asyncio.Event, nudge: asyncio.Event | None = None
) -> None:
    interval = schedule.interval_seconds or ctx.settings.schedule_interval_seconds
    while not stop.is_set():
        if nudge is not None:
            nudge.clear()  # events applied from now on call for another run
        try:
            with tracing.job_span(ctx.name, schedule.name):
                await schedule.run(ctx, JobRun(as_of=ctx.db.clock.now(), chain_ids=await ctx.platform.chain_ids()))
        except Exception:
            log.exception("schedule failed", extra={"schedule": schedule.name})
        waits = [asyncio.ensure_future(stop.wait())]
        if nudge is not None:
            waits.append(asyncio.ensure_future(nudge.wait()))
        await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()


def worker_schedules(defn: ServiceDefinition, settings: Settings) -> list[Schedule]:
    """The service's own schedules, and the retention purge of its shared tables every worker runs."""

    async def retention(ctx: ServiceContext, run: JobRun) -> None:
        await purge(ctx.db, defn.name)

    async def gauges(ctx: ServiceContext, run: JobRun) -> None:
        await refresh_gauges(ctx.db, defn.name)

    return [
        *defn.schedules,
        Schedule(name="pipeline-gauges", run=gauges, interval_seconds=15.0),
        Schedule(name="retention", run=retention, interval_seconds=settings.retention_interval_seconds),
    ]


async def run_worker(defn: ServiceDefinition, settings: Settings, stop: asyncio.Event) -> None:
    """Relay + consumer + schedules until ``stop`` is set; finishes the batch in hand first."""
    ctx = build_context(defn, settings)
    if settings.creates_topics:  # production: the topic-init Job made them (python -m shared.topics)
        await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    tasks = [asyncio.create_task(OutboxRelay(ctx.db, producer, defn.schema).run(stop), name="relay")]

    async def ready() -> bool:
        try:
            async with ctx.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            log.warning("readiness: database unreachable", exc_info=True)
            return False

    schedules = worker_schedules(defn, settings)
    nudges = {s.name: asyncio.Event() for s in schedules if s.after_events}

    def applied() -> None:
        for nudge in nudges.values():
            nudge.set()

    runner = None
    if defn.handlers:
        runner = ConsumerRunner(
            service=defn.name,
            db=ctx.db,
            handlers=defn.handlers,
            producer=producer,
            prepare=defn.prepare,
            on_applied=applied,
        )
        tasks.append(asyncio.create_task(runner.run(stop), name="consumer"))

    def status() -> dict[str, object]:
        lag: dict[str, int] = {}
        for tp, n in (runner.lag if runner else {}).items():
            lag[tp.topic] = lag.get(tp.topic, 0) + n
        return {
            "tasks": {t.get_name(): not t.done() for t in tasks},
            "consumer_lag": lag,
            "last_error": LAST_ERROR.document(),
        }

    tasks.append(
        asyncio.create_task(
            serve_worker_endpoint(
                settings.host,
                settings.worker_port_of(defn.name),
                service=defn.name,
                ready=ready,
                stop=stop,
                status=status,
            ),
            name="endpoint",
        )
    )
    tasks += [asyncio.create_task(_run_schedule(s, ctx, stop, nudges.get(s.name)), name=s.name) for s in schedules]
    log.info("worker started", extra={"tasks": [t.get_name() for t in tasks]})
    died = False
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                log.error("worker task died; stopping the worker", exc_info=t.exception(), extra={"task": t.get_name()})
                died = True
                stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await producer.stop()
        await ctx.db.dispose()
    if died:  # a non-zero exit, so a supervisor (k8s, make run, the tests) sees the failure and restarts it
        raise SystemExit(1)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def main(defn: ServiceDefinition, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {defn.name}", description=f"membership {defn.name} service")
    parser.add_argument("role", choices=["api", "worker", "migrate"])
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(f"{defn.name}-{args.role}", settings.log_level)
    if args.role != "migrate":
        tracing.configure(defn.name, args.role)  # off unless OTEL_* variables ask for traces
    # production mode: no development default may be in use (migrations run before any data is checked)
    own = defn.production_problems(settings, args.role) if defn.production_problems and settings.is_production else []
    enforce(settings, f"{defn.name} {args.role}", check_database=args.role != "migrate", extra=own)
    if args.role == "migrate":
        from .migrate import upgrade

        upgrade(settings, [defn.name])
    elif args.role == "api":
        import uvicorn

        workers = settings.api_workers_of(defn.name)
        options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port_of(defn.name),
            "log_config": None,
            "access_log": False,
            "timeout_graceful_shutdown": 10,
            # "auto" takes uvloop and httptools, which are installed (pyproject.toml): C event loop and parser
            "loop": "auto",
            "http": "auto",
        }
        if workers == 1:
            uvicorn.run(create_app(defn, settings), **options)
        else:
            # several processes share the listening socket; each builds its app (app_from_environment)
            os.environ[API_SERVICE_VARIABLE] = defn.name
            uvicorn.run("shared.service:app_from_environment", factory=True, workers=workers, **options)
    else:

        async def go() -> None:
            stop = asyncio.Event()
            _stop_on_signals(stop)
            await run_worker(defn, settings, stop)

        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(go())


#: set by ``python -m <service> api`` for its uvicorn worker processes (``MEMBERSHIP_API_WORKERS`` > 1)
API_SERVICE_VARIABLE = "MEMBERSHIP_API_SERVICE"


def app_from_environment() -> FastAPI:
    """uvicorn's app factory in each worker process of a multi-process API."""
    import importlib

    name = os.environ[API_SERVICE_VARIABLE]
    defn: ServiceDefinition = importlib.import_module(f"{name}.service").SERVICE
    settings = Settings()
    configure_logging(f"{name}-api", settings.log_level)
    tracing.configure(name, "api")
    return create_app(defn, settings)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
