"""Waiting out transient errors of calls that are safe to repeat (GETs, uploads)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from klingflow.policy import Retrier, RetryPolicy

_T = TypeVar("_T")


class Patience:
    """`call()`, again after each transient error (beyond the client's own retries)
    until `within` seconds have passed; for things that exist and are paid for, or
    create nothing billable. Raises the last error when it is not transient or time
    is up."""

    def __init__(self, retrier: Retrier, base: float) -> None:
        self._retrier = retrier
        self._policy = RetryPolicy(attempts=None, base=base, cap=30.0)

    async def __call__(self, within: float, call: Callable[[], Awaitable[_T]]) -> _T:
        return await self._retrier.call(self._policy.but(within=within), call)
