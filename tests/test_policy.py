"""The retry and poll policies, at full speed through an injected clock and sleep."""

from __future__ import annotations

import random

import pytest

from klingflow.errors import BadRequestError, RateLimitedError, ServerError
from klingflow.policy import Backoff, PollPolicy, Retrier, RetriesExhausted, RetryPolicy
from klingflow.run.collection import _eta_end
from klingflow.run.durations import Durations

pytestmark = pytest.mark.anyio


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def retrier(time: FakeTime) -> Retrier:
    return Retrier(clock=time.clock, sleep=time.sleep, rng=random.Random(1))


async def test_transient_errors_are_retried_up_to_the_attempts() -> None:
    time, calls = FakeTime(), []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServerError("busy", status=503)
        return "ok"

    assert await retrier(time).call(RetryPolicy(attempts=4, base=1.0, cap=8.0), flaky) == "ok"
    assert len(calls) == 3 and len(time.sleeps) == 2
    assert 0 <= time.sleeps[0] <= 2.0 and 0 <= time.sleeps[1] <= 4.0  # full jitter, doubling


async def test_the_last_error_is_raised_when_attempts_run_out() -> None:
    time = FakeTime()

    async def down() -> None:
        raise ServerError("down", status=500)

    with pytest.raises(ServerError, match="down"):
        await retrier(time).call(RetryPolicy(attempts=3), down)
    assert len(time.sleeps) == 2


async def test_an_error_that_is_not_retryable_is_raised_at_once() -> None:
    time = FakeTime()

    async def refused() -> None:
        raise BadRequestError("no", status=400)

    with pytest.raises(BadRequestError):
        await retrier(time).call(RetryPolicy(attempts=5), refused)
    assert time.sleeps == []


async def test_retry_after_is_honoured_and_time_bounds_the_waiting() -> None:
    time = FakeTime()
    busy = RateLimitedError("busy", status=429)
    busy.retry_after = 7.0
    backoff = Backoff(RetryPolicy(attempts=None, within=20.0), clock=time.clock,
                      sleep=time.sleep)
    assert [await backoff.wait(busy) for _ in range(3)] == [7.0, 7.0, pytest.approx(6.001)]
    assert time.now == pytest.approx(20.001)  # the last wait stops at the policy's time
    with pytest.raises(RetriesExhausted) as out:
        await backoff.wait(busy)
    assert (out.value.attempts, out.value.waited, out.value.last) == (
        4, pytest.approx(20.001), busy)


def test_the_floor_keeps_waits_from_hammering() -> None:
    policy = RetryPolicy(base=2.0, floor=2.0, cap=8.0)
    rng = random.Random(0)
    delays = [policy.delay(n, ServerError("x"), rng) for n in range(1, 8) for _ in range(20)]
    assert min(delays) >= 2.0 and max(delays) <= 8.0


def test_polls_start_where_the_earliest_tasks_end_and_spread_with_the_tail() -> None:
    policy = PollPolicy(floor=2.0, ceiling=60.0, lead=0.5, spread=0.05, blind=15.0)
    assert policy.next_wait(0.0, 200.0) == 60.0  # no blind spot longer than the ceiling
    assert policy.next_wait(60.0, 200.0) == 40.0  # the first look at half the expected
    assert policy.next_wait(100.0, 200.0) == 10.0  # then 5% of the expected duration
    assert policy.next_wait(190.0, 200.0) == 10.0
    assert policy.next_wait(600.0, 200.0) == 30.0  # and 5% of the time so far past it
    assert policy.next_wait(10.0, 5.0) == 2.0  # bounded below
    assert policy.next_wait(5000.0, 200.0) == 60.0  # and above
    assert policy.next_wait(40.0, None) == 15.0  # nothing known: every 15 s,
    assert policy.next_wait(400.0, None) == 20.0  # spreading in a long tail


def test_the_next_look_is_where_the_service_says_the_task_ends() -> None:
    policy = PollPolicy(floor=2.0, ceiling=60.0)
    assert policy.next_wait(15.0, None, eta_end=47.5) == 32.5
    assert policy.next_wait(15.0, 200.0, eta_end=47.5) == 32.5
    assert policy.next_wait(50.0, None, eta_end=47.5) == 2.5  # late: tight looks after it


def test_a_shortest_wait_scales_the_whole_policy() -> None:
    policy = PollPolicy.scaled(0.05)
    assert (policy.floor, policy.ceiling, policy.blind) == pytest.approx((0.05, 0.6, 0.15))


def test_the_services_eta_is_used_only_when_it_agrees_with_what_was_seen() -> None:
    assert _eta_end(None, 10.0, 50_000) == 60.0
    assert _eta_end(100.0, 10.0, 80_000) == 90.0
    assert _eta_end(100.0, 10.0, 80) is None  # 0.08 s left after 10 s: another unit
    assert _eta_end(100.0, 10.0, None) is None


def test_a_task_in_the_long_tail_still_gets_its_eta_trusted() -> None:
    """5 minutes into a task that usually takes 1: an end 57 s away is believed (else the
    longest tasks, which set a run's makespan, are looked at only every 5% of their
    age); 57,000 s away is another unit."""
    assert _eta_end(60.0, 300.0, 57_000) == 357.0
    assert _eta_end(60.0, 300.0, 57_000_000) is None
    assert _eta_end(60.0, 10.0, 600_000) is None  # 10 s in: 610 s is not 4 x 60 s


def test_durations_are_kept_per_kind_and_merged_across_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "durations.json"
    key = Durations.key("sim", "frames", "kling-v2-1", "std", 5)
    first, second = Durations(path), Durations(path)
    assert first.expected(key) is None
    first.record(key, 10.0)
    first.record(key, 30.0)
    assert first.expected(key) == 20.0
    first.save()
    second.record(key, 14.0)
    second.save()  # merges with what the first wrote meanwhile
    assert Durations(path).expected(key) == 14.0
    assert Durations(path).expected(Durations.key("useapi", "frames", "kling-v2-1", "std", 5)) \
        is None
