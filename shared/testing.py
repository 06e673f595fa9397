"""In-memory doubles for fast handler tests (the cosmicpython ``FakeUnitOfWork`` idea).

A handler takes ``(event, uow)``; given a :class:`FakeUnitOfWork` whose service store is an
in-memory one (``uow.provide(PointsStore, InMemoryPointsStore(...))``), its logic runs in
microseconds and a test asserts on what it published and what it wrote. The SQL behind the
real store is tested on the real PostgreSQL by the integration tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from .consumer import Handler, enter_event
from .db import Unit
from .events import CloudEvent, EventData, new_event

D = TypeVar("D", bound=EventData)


@dataclass
class FixedClock:
    """A clock that stands still until told to move."""

    at: datetime = field(default_factory=lambda: datetime(2025, 6, 1, 12, 0, tzinfo=UTC))

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@dataclass(kw_only=True)
class FakeUnitOfWork(Unit):
    """A unit of work with no database: stores are provided by the test, events are kept in memory."""

    clock: Any = field(default_factory=FixedClock)
    committed: bool = False

    async def commit(self) -> None:
        """End the unit of work as the real one does: deferred work runs, then it is committed."""
        await self.run_at_commit()
        self.committed = True

    def published(self, kind: type[D]) -> list[D]:
        """The data of the events of ``kind`` published so far, in order."""
        return [e.data for e in self.events if isinstance(e.data, kind)]


async def handle(handler: Handler, event: CloudEvent[Any], uow: FakeUnitOfWork) -> FakeUnitOfWork:
    """Apply one event as the consumer runner does (correlated, caused by the event) and commit."""
    enter_event(uow, event)
    await handler(event, uow)
    await uow.commit()
    return uow


def event(data: D, *, member_id: str | None = None, chain_id: str = "chain-1", **kw: Any) -> CloudEvent[D]:
    """An event as a producer would publish it; the member defaults to ``data.member_id``."""
    subject = member_id or getattr(data, "member_id", None) or "member-1"
    return new_event(data, member_id=subject, chain_id=chain_id, **kw)
