"""Scheduling: slots for tasks in flight, the credit budget, and which step goes first."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from klingflow.models import DEFAULT_DURATION
from klingflow.run.results import StepFailed
from klingflow.spec.pipeline import Step


@dataclass(eq=False, slots=True)
class _Waiter:
    rank: tuple[float, int]  # lower goes first: (-urgency, arrival)
    accounts: tuple[str | None, ...]
    granted: anyio.Event = field(default_factory=anyio.Event)
    alias: str | None = None


class Slots:
    """Tasks in flight: at most `max_jobs` per account and `total` in the run.

    An account alias of None stands for "the only account" of a pipeline
    without `accounts`. A step without an account takes any account with room.
    A freed slot is handed to the most urgent waiting step that can use it, so
    long chains start first and the run is not left with a slow tail.
    """

    def __init__(self, per_account: Mapping[str | None, int], total: int | None) -> None:
        self._limit = dict(per_account)
        self._used = dict.fromkeys(per_account, 0)
        self._total = total
        self._waiting: list[_Waiter] = []  # by rank
        self._arrivals = 0

    async def acquire(self, preferred: str | None, *, any_account: bool,
                      urgency: float = 0.0) -> str | None:
        self._arrivals += 1
        waiter = _Waiter((-urgency, self._arrivals),
                         tuple(self._limit) if any_account else (preferred,))
        bisect.insort(self._waiting, waiter, key=lambda w: w.rank)
        self._hand_out()
        try:
            await waiter.granted.wait()
        except BaseException:  # cancelled: give back what it may have been handed
            if waiter.granted.is_set():
                self.release(waiter.alias)
            else:
                self._waiting.remove(waiter)
            raise
        return waiter.alias

    def knows(self, alias: str | None) -> bool:
        return alias in self._limit

    def take(self, alias: str | None) -> None:
        """Count a task already running (found on resume), even past the limit; a task
        of an account this run does not use is not counted."""
        if alias in self._used:
            self._used[alias] += 1

    def release(self, alias: str | None) -> None:
        if alias in self._used:
            self._used[alias] -= 1
        self._hand_out()

    def _hand_out(self) -> None:
        for waiter in list(self._waiting):
            if self._total is not None and sum(self._used.values()) >= self._total:
                return
            room = [a for a in waiter.accounts if self._used[a] < self._limit[a]]
            if room:
                waiter.alias = min(room, key=lambda a: self._used[a] / self._limit[a])
                self._used[waiter.alias] += 1
                self._waiting.remove(waiter)
                waiter.granted.set()


class Budget:
    """Credits reserved before each submit; a submit that would cross the cap is refused."""

    def __init__(self, cap: int | None, spent: int = 0) -> None:
        self.cap = cap
        self.reserved = spent

    def reserve(self, step_id: str, credits: int | None) -> None:
        if self.cap is None:
            return
        if credits is None:
            raise StepFailed("budget", f"the price of {step_id} is unknown, so it cannot be "
                             "reserved against the budget; add it under prices:")
        if self.reserved + credits > self.cap:
            raise StepFailed("budget", f"submitting {step_id} ({credits} credits) would cross "
                             f"the budget: {self.reserved} of {self.cap} credits already "
                             "reserved; nothing was sent")
        self.reserved += credits

    def refund(self, credits: int | None) -> None:
        if self.cap is not None and credits:
            self.reserved -= credits


def urgency(order: Sequence[Step]) -> dict[str, float]:
    """Seconds of clips on the longest chain from each step to the end of the run.

    `order` is topological. Steps on long chains are given slots first.
    """
    dependents: dict[str, list[str]] = {s.id: [] for s in order}
    for step in order:
        for need in step.needs:
            dependents[need].append(step.id)
    ranks: dict[str, float] = {}
    for step in reversed(order):
        duration = step.params.get("duration", DEFAULT_DURATION)
        own = float(duration) if isinstance(duration, int | float) else DEFAULT_DURATION
        ranks[step.id] = own + max((ranks[d] for d in dependents[step.id]), default=0.0)
    return ranks
