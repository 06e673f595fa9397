"""Failed deliveries are retried with exponential backoff, then given up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from notify.domain import GiveUp, Retry, after_failure, retry_delay

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_the_delay_doubles_after_each_failure() -> None:
    assert [retry_delay(a, 1.0).total_seconds() for a in range(1, 6)] == [1, 2, 4, 8, 16]
    assert retry_delay(3, 0.2) == timedelta(seconds=0.8)


def test_failures_are_retried_until_the_last_attempt_then_given_up() -> None:
    steps = [after_failure(attempts=a, max_attempts=5, base_seconds=1.0, now=NOW) for a in range(1, 6)]
    assert steps[:4] == [Retry(NOW + timedelta(seconds=s)) for s in (1, 2, 4, 8)]
    assert steps[4] == GiveUp()


def test_a_single_attempt_budget_gives_up_at_once() -> None:
    assert after_failure(attempts=1, max_attempts=1, base_seconds=1.0, now=NOW) == GiveUp()


@given(attempts=st.integers(1, 30), base=st.floats(0.01, 60))
def test_the_next_retry_is_never_sooner_than_the_previous_delay(attempts: int, base: float) -> None:
    assert retry_delay(attempts + 1, base) >= retry_delay(attempts, base) > timedelta(0)
