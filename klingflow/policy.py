"""Retry and poll policies: the one place for backoff, jitter, Retry-After and ETAs.

Both take an injected clock and sleep, so tests run them at full speed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio

from klingflow.errors import ApiError

_T = TypeVar("_T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def is_transient(error: BaseException) -> bool:
    """What is worth asking again: 429, 5xx that are not moderation, timeouts, resets."""
    return isinstance(error, ApiError) and error.retryable


class RetriesExhausted(Exception):
    """A policy's attempts or time ran out; `last` is the error of the last attempt."""

    def __init__(self, last: BaseException, attempts: int, waited: float) -> None:
        super().__init__(str(last))
        self.last, self.attempts, self.waited = last, attempts, waited


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which errors are retried, how many times and for how long, and the waits between.

    The wait before attempt n+1 is the error's Retry-After when it has one, else
    "full jitter": uniform(floor, min(cap, base * 2**n)).
    """

    attempts: int | None = 4  # calls in all; None: bounded by `within` only
    within: float | None = None  # seconds from the first failure; None: by attempts only
    base: float = 0.5
    cap: float = 30.0
    floor: float = 0.0
    retryable: Callable[[BaseException], bool] = is_transient

    def but(self, **changes: object) -> RetryPolicy:
        return replace(self, **changes)  # type: ignore[arg-type]

    def delay(self, attempt: int, error: BaseException, rng: random.Random) -> float:
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return max(0.0, float(retry_after))
        ceiling = max(self.floor, min(self.cap, self.base * 2 ** attempt))
        return rng.uniform(self.floor, ceiling)


class Backoff:
    """One use of a policy: call `wait(error)` after each failure; it sleeps, or raises."""

    def __init__(self, policy: RetryPolicy, *, clock: Clock = anyio.current_time,
                 sleep: Sleep = anyio.sleep, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        self.failures = 0
        self._since: float | None = None

    @property
    def waited(self) -> float:
        return 0.0 if self._since is None else self._clock() - self._since

    def next_delay(self, error: BaseException) -> float:
        """The wait before the next attempt; RetriesExhausted (or `error`) when there is none."""
        policy = self.policy
        if not policy.retryable(error):
            raise error
        self.failures += 1
        self._since = self._clock() if self._since is None else self._since
        over_attempts = policy.attempts is not None and self.failures >= policy.attempts
        over_time = policy.within is not None and self.waited > policy.within
        if over_attempts or over_time:
            raise RetriesExhausted(error, self.failures, self.waited) from error
        delay = policy.delay(self.failures, error, self._rng)
        if policy.within is not None:  # never sleep past the policy's time
            delay = min(delay, max(0.0, policy.within - self.waited) + 0.001)
        return delay

    async def wait(self, error: BaseException) -> float:
        delay = self.next_delay(error)
        await self._sleep(delay)
        return delay

    async def wait_for(self, delay: float) -> None:
        """Sleep a delay `next_delay` gave (when something is said in between)."""
        await self._sleep(delay)


class Retrier:
    """Runs calls under policies, with one clock, sleep and random source."""

    def __init__(self, *, clock: Clock = anyio.current_time, sleep: Sleep = anyio.sleep,
                 rng: random.Random | None = None) -> None:
        self.clock, self.sleep = clock, sleep
        self._rng = rng or random.Random()

    def backoff(self, policy: RetryPolicy) -> Backoff:
        return Backoff(policy, clock=self.clock, sleep=self.sleep, rng=self._rng)

    async def call(self, policy: RetryPolicy, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()` until it succeeds; the last error (not RetriesExhausted) when it never does."""
        backoff = self.backoff(policy)
        while True:
            try:
                return await call()
            except Exception as error:  # the policy decides what is retried
                try:
                    await backoff.wait(error)
                except RetriesExhausted as out:
                    raise out.last from None


# ---- polling ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """When to look at a running task again.

    - When the service's ETA is known (and plausible), the next look is at the end
      it announces.
    - Else, with an expected duration (the median of what such tasks took before),
      nothing is asked before `lead` of it, where the earliest tasks end; then each
      wait is `spread` of the expected duration.
    - With neither, waits are `blind` seconds.
    - Past the expected end, waits grow as `spread` of the time elapsed, so a long
      tail costs few requests.
    Every wait is bounded by `floor` and `ceiling`. bench/bench_poll.py measures it.
    """

    floor: float = 5.0
    ceiling: float = 60.0
    blind: float = 15.0
    lead: float = 0.5
    spread: float = 0.05

    @classmethod
    def scaled(cls, floor: float) -> PollPolicy:
        """Bounds in proportion to the shortest wait (`--poll-interval`)."""
        return cls(floor=floor, ceiling=12 * floor, blind=3 * floor)

    def next_wait(self, elapsed: float, expected: float | None,
                  eta_end: float | None = None) -> float:
        if eta_end is not None and elapsed < eta_end:
            return self._clamp(eta_end - elapsed)
        expected = expected if expected is not None else eta_end
        if expected is None:
            return self._clamp(max(self.blind, self.spread * elapsed))
        if elapsed < expected * self.lead:
            return self._clamp(expected * self.lead - elapsed)
        return self._clamp(self.spread * max(expected, elapsed))

    def _clamp(self, seconds: float) -> float:
        return min(self.ceiling, max(self.floor, seconds))
