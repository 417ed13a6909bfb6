"""Pushing finished steps to the remote in the background, so a run never waits for
the remote on its critical path: only its end waits for the pushes still going.

A push that fails is reported, never fatal: the step's result is already in the
local cache, and the next run pushes it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc

from klingflow.cache.local import Cache, CacheEntry
from klingflow.cache.remote import PushResult, RemoteCache
from klingflow.errors import RemoteCacheError


class PushQueue:
    """`push_soon(entry)` returns at once; the remote's transfer limit bounds the work."""

    def __init__(self, remote: RemoteCache, local: Cache, group: anyio.abc.TaskGroup,
                 on_done: Callable[[PushResult], None] | None,
                 on_failure: Callable[[str, RemoteCacheError], None] | None) -> None:
        self._remote, self._local, self._group = remote, local, group
        self._on_done, self._on_failure = on_done, on_failure
        self.pushed: list[PushResult] = []
        self.failures: list[tuple[str, RemoteCacheError]] = []  # (key, why)

    def push_soon(self, entry: CacheEntry) -> None:
        self._group.start_soon(self._push, entry, name=f"push {entry.key[:12]}")

    async def _push(self, entry: CacheEntry) -> None:
        try:
            result = await self._remote.push(entry, self._local)
        except RemoteCacheError as exc:
            self.failures.append((entry.key, exc))
            if self._on_failure is not None:
                self._on_failure(entry.key, exc)
            return
        self.pushed.append(result)
        if self._on_done is not None:
            self._on_done(result)


@asynccontextmanager
async def background_pushes(remote: RemoteCache, local: Cache, *,
                            on_done: Callable[[PushResult], None] | None = None,
                            on_failure: Callable[[str, RemoteCacheError], None] | None = None,
                            ) -> AsyncIterator[PushQueue]:
    """A queue for the run's body; leaving the block waits for the pushes under way."""
    async with anyio.create_task_group() as group:
        yield PushQueue(remote, local, group, on_done, on_failure)
