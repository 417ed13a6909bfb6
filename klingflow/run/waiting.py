"""Waiting out transient errors of calls that are safe to repeat (GETs, uploads)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from klingflow.errors import ApiError

_T = TypeVar("_T")


class Patience:
    """`call()`, again after each transient error (beyond the client's own retries)
    until `within` seconds have passed; raises the last error when it is not
    transient or time is up."""

    def __init__(self, poll_interval: float, rng: random.Random | None = None) -> None:
        self._interval = poll_interval
        self._rng = rng or random.Random()

    async def __call__(self, within: float, call: Callable[[], Awaitable[_T]]) -> _T:
        deadline = anyio.current_time() + within
        attempt = 0
        while True:
            try:
                return await call()
            except ApiError as exc:
                if not exc.retryable or anyio.current_time() > deadline:
                    raise
            attempt += 1
            await anyio.sleep(self._rng.uniform(0, min(30.0, self._interval * 2**attempt)))
