"""``membershipctl rebuild status-view``'s logic on a scripted client: the snapshot pages it asks for,
and when it judges that enrollment has applied them (no stack: the HTTP answers are scripted)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from membershipctl import rebuild
from membershipctl.client import REFUSED, UNAVAILABLE, Client, CliError


@dataclass
class Scripted(Client):
    """A client whose answers come from ``answer(method, service, path, body)``; every call is kept."""

    answer: Callable[[str, str, str, Any], Any] = lambda *a: None
    calls: list[tuple[str, str, str, Any]] = field(default_factory=list)

    def call(self, method: str, service: str, path: str, *, body: Any = None, **kw: Any) -> Any:
        self.calls.append((method, service, path, body))
        return self.answer(method, service, path, body)


def pages_of(members: dict[str, list[str]]) -> Callable[[str, str, str, Any], Any]:
    """Each service pages through its members as the snapshot endpoint does."""

    def answer(method: str, service: str, path: str, body: Any) -> Any:
        assert (method, path) == ("POST", rebuild.SNAPSHOTS)
        ids = [m for m in members[service] if body["after"] is None or m > body["after"]]
        page = ids[: body["limit"]]
        more = len(ids) > body["limit"]
        total = len(members[service]) if body["after"] is None else None
        return {"published": len(page), "next_after": page[-1] if more else None, "total": total}

    return answer


def test_every_owner_is_paged_through_in_member_order_until_its_last_page() -> None:
    members = {"points": ["a", "b", "c", "d", "e"], "tiering": ["a", "b", "c", "d"], "benefits": []}
    client = Scripted(key="k", answer=pages_of(members))
    seen: list[tuple[str, int, int | None]] = []
    run = rebuild.publish(client, rebuild.OWNERS, limit=2, on_page=lambda *a: seen.append(a))
    assert [(s, body["after"]) for _, s, _, body in client.calls] == [
        ("points", None),
        ("points", "b"),
        ("points", "d"),
        ("tiering", None),
        ("tiering", "b"),
        ("benefits", None),
    ]
    assert {s: (r.published, r.pages, r.total) for s, r in run.services.items()} == {
        "points": (5, 3, 5),
        "tiering": (4, 2, 4),
        "benefits": (0, 1, 0),
    }
    assert run.published == 9
    assert seen[:3] == [("points", 2, 5), ("points", 4, 5), ("points", 5, 5)]


def test_a_refused_page_stops_the_run_with_the_platforms_answer() -> None:
    def answer(method: str, service: str, path: str, body: Any) -> Any:
        if service == "tiering":
            raise CliError("tiering: 403 This operation needs one of the scopes ['ops']", 4)
        return {"published": 1, "next_after": None, "total": 1}

    with pytest.raises(CliError) as refused:
        rebuild.publish(Scripted(key="k", answer=answer), rebuild.OWNERS, limit=500)
    assert refused.value.code == 4


class Timeline:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waiting(
    monkeypatch: pytest.MonkeyPatch,
    *,
    backlogs: Callable[[float], int | Exception],
    lag: Callable[[float], int | None],
    timeout: float = 60.0,
) -> tuple[bool, Timeline, list[str]]:
    """Run ``wait_applied`` against owners whose backlog and an enrollment worker whose lag follow the
    given functions of time (None: the worker is unreachable)."""
    clock = Timeline()

    def answer(method: str, service: str, path: str, body: Any) -> Any:
        assert (method, path) == ("GET", "/v1/ops/status")
        found = backlogs(clock.now)
        if isinstance(found, Exception):
            raise found
        return {"outbox": {"backlog": found if service == "tiering" else 0}}

    def status(client: Client, service: str) -> dict[str, Any]:
        assert service == "enrollment"
        n = lag(clock.now)
        return {"worker_up": n is not None, "consumer_lag": {} if n is None else {"membership.points": n}}

    monkeypatch.setattr(rebuild, "service_status", status)
    notes: list[str] = []
    done = rebuild.wait_applied(
        Scripted(key="k", answer=answer),
        rebuild.OWNERS,
        timeout=timeout,
        on_wait=notes.append,
        clock=lambda: clock.now,
        sleep=clock.sleep,
    )
    return done, clock, notes


def test_the_wait_ends_once_the_outboxes_are_empty_and_then_the_lag_has_read_zero_for_the_settle_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done, clock, notes = waiting(monkeypatch, backlogs=lambda t: 0 if t >= 3 else 40, lag=lambda t: 0 if t >= 5 else 7)
    assert done
    assert 5 + rebuild.SETTLE_SECONDS <= clock.now < 5 + rebuild.SETTLE_SECONDS + 1
    assert "outbox backlog 40" in notes and "enrollment lag 7" in notes


def test_a_zero_lag_that_does_not_hold_for_the_settle_time_is_not_taken_as_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the gauge reads 0 before the consumer has fetched the last snapshots, then shows them, then 0
    done, clock, _ = waiting(monkeypatch, backlogs=lambda t: 0, lag=lambda t: 3 if 1 <= t < 2 else 0)
    assert done and clock.now >= 2 + rebuild.SETTLE_SECONDS


def test_an_unreachable_service_or_worker_is_waited_for_and_the_timeout_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    down = CliError("tiering is unreachable", UNAVAILABLE)
    done, clock, notes = waiting(monkeypatch, backlogs=lambda t: down if t < 2 else 0, lag=lambda t: None, timeout=10)
    assert not done and 10 <= clock.now < 11
    assert "outbox backlog unknown (a service is unreachable)" in notes
    assert any(n.startswith("enrollment worker down or unreachable") for n in notes)
    done, _, _ = waiting(monkeypatch, backlogs=lambda t: 5, lag=lambda t: 0, timeout=10)
    assert not done


def test_a_refused_status_request_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = CliError("tiering: 401 The API key is unknown or revoked.", REFUSED)
    with pytest.raises(CliError):
        waiting(monkeypatch, backlogs=lambda t: refused, lag=lambda t: 0)


@pytest.mark.parametrize(
    "args",
    [
        ["--page-size", "0"],
        ["--page-size", "1001"],
        ["--service", "notify"],
        ["--service", "enrollment"],
        ["--timeout", "-1"],
    ],
)
def test_wrong_usage_exits_2_before_anything_is_asked(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from membershipctl.cli import app

    def no_request(*a: Any, **kw: Any) -> Any:
        raise AssertionError("no request may be sent")

    monkeypatch.setattr(Client, "call", no_request)
    done = CliRunner().invoke(app, ["--key", "k", "rebuild", "status-view", *args])
    assert done.exit_code == 2, done.output
