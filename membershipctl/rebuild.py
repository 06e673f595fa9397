"""``membershipctl rebuild status-view``: rebuild enrollment's member status view from the owners.

1. **Publish.** Page through ``POST /v1/ops/snapshots`` on points, tiering and benefits: each page
   has the owner publish a snapshot event per member of the chain (PointsSnapshot, TierSnapshot,
   BenefitsSnapshot) through its outbox, on its own topic, in order with the member's other events.
   The platform keeps running: a change made meanwhile reaches the view after the snapshot it follows.
2. **Wait.** Until the owners' outbox backlogs are 0 (``GET /v1/ops/status``: every snapshot is on
   the broker), then until the enrollment worker's consumer lag has read 0 for :data:`SETTLE_SECONDS`
   (the lag is measured as of each batch it applies, so one reading of 0 could predate the last
   snapshots reaching it), within a timeout.

Every step is safe to repeat: a snapshot replaces a part of the view with the owner's state as of
the moment it is published, so running the command again (after a failure half-way) does no harm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .client import UNAVAILABLE, Client, CliError
from .status import service_status, worker_url

#: the services that own a part of the status view, in the order they are asked
OWNERS = ("points", "tiering", "benefits")
SNAPSHOTS = "/v1/ops/snapshots"
#: how long the enrollment worker's lag must read 0 before the view counts as rebuilt
SETTLE_SECONDS = 2.0
POLL_SECONDS = 0.25


@dataclass
class ServiceRun:
    published: int = 0
    pages: int = 0
    total: int | None = None  # the chain's members on this service, as its first page said


@dataclass
class Rebuild:
    services: dict[str, ServiceRun] = field(default_factory=dict)
    publish_seconds: float = 0.0
    wait_seconds: float = 0.0
    applied: bool = False

    @property
    def published(self) -> int:
        return sum(r.published for r in self.services.values())

    def document(self) -> dict[str, Any]:
        return {
            "services": {
                s: {"published": r.published, "pages": r.pages, "total": r.total} for s, r in self.services.items()
            },
            "published": self.published,
            "publish_seconds": round(self.publish_seconds, 2),
            "wait_seconds": round(self.wait_seconds, 2),
            "applied": self.applied,
        }


#: called after each page: (service, members published so far, the total if known)
OnPage = Callable[[str, int, int | None], None]
#: called while waiting: what is awaited, e.g. "outbox backlog 12" or "enrollment lag 0"
OnWait = Callable[[str], None]


def publish(client: Client, services: Iterable[str], *, limit: int, on_page: OnPage | None = None) -> Rebuild:
    """Every page of every service's snapshots; a failed request stops the run (CliError)."""
    run = Rebuild()
    started = time.monotonic()
    for service in services:
        done = run.services[service] = ServiceRun()
        after: str | None = None
        while True:
            page = client.post(service, SNAPSHOTS, {"after": after, "limit": limit})
            done.pages += 1
            done.published += int(page["published"])
            if done.pages == 1:
                done.total = page.get("total")
            if on_page is not None:
                on_page(service, done.published, done.total)
            after = page.get("next_after")
            if after is None:
                break
    run.publish_seconds = time.monotonic() - started
    return run


def wait_applied(
    client: Client,
    services: Iterable[str],
    *,
    timeout: float,
    settle: float = SETTLE_SECONDS,
    interval: float = POLL_SECONDS,
    on_wait: OnWait | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """True once the services' outboxes are empty and then enrollment's consumer lag has read 0 for
    ``settle`` seconds; False when ``timeout`` runs out first. An unreachable service or worker is
    waited for like a backlog (it may be restarting); a refused request (4xx) is a CliError."""
    deadline = clock() + timeout
    owners = list(services)
    while True:  # 1. every snapshot is on the broker
        backlog = 0
        for service in owners:
            try:
                backlog += int(client.get(service, "/v1/ops/status")["outbox"]["backlog"])
            except CliError as exc:
                if exc.code != UNAVAILABLE:
                    raise
                backlog = -1
                break
        if on_wait is not None:
            on_wait("outbox backlog " + ("unknown (a service is unreachable)" if backlog < 0 else str(backlog)))
        if backlog == 0:
            break
        if clock() >= deadline:
            return False
        sleep(interval)
    zero_since: float | None = None
    while True:  # 2. enrollment has applied what the broker holds
        row = service_status(client, "enrollment")
        reachable = row["worker_up"]
        lag = sum(int(n) for n in row["consumer_lag"].values()) if reachable else None
        now = clock()
        if lag == 0:
            zero_since = now if zero_since is None else zero_since
            if now - zero_since >= settle:
                return True
        else:
            zero_since = None
        if on_wait is not None:
            on_wait(
                f"enrollment lag {lag}"
                if reachable
                else f"enrollment worker down or unreachable at {worker_url('enrollment')}"
            )
        if now >= deadline:
            return False
        sleep(interval)
