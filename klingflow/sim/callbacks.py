"""replyUrl callbacks: the task JSON POSTed on each status change and at the end.

One ticker for all tasks (a heap of due transitions), run in the app's lifespan
task group; deliveries never block a task and their failures are ignored, as the
docs promise nothing (no signature, no retry).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from klingflow.sim.state import SimState, Task

TICK_SECONDS = 0.05
DELIVERY_TIMEOUT = 5.0
MAX_DELIVERIES = 32

Payload = Callable[[Task], dict[str, Any]]


@dataclass(slots=True)
class Notifier:
    state: SimState
    payload: Payload
    transport: httpx.AsyncBaseTransport | None = None
    sent: list[tuple[int, str]] = field(default_factory=list)  # (task id, status) delivered
    _due: list[tuple[float, int, int]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _limit: anyio.CapacityLimiter | None = None

    def schedule(self, task: Task, *, after: float | None = None) -> None:
        """Queue the callbacks of a task that has a replyUrl (those due after `after`:
        a restarted service does not repeat what its predecessor may have sent)."""
        if not task.order.reply_url:
            return
        for when in (self.state.processing_time(task), self.state.end_time(task)):
            if after is None or when > after:
                heapq.heappush(self._due, (when, next(self._order), task.id))

    def due(self) -> list[Task]:
        now = self.state.now()
        ready: list[Task] = []
        while self._due and self._due[0][0] <= now:
            ready.append(self.state.tasks[heapq.heappop(self._due)[2]])
        return ready

    async def run(self, group: TaskGroup) -> None:
        """Tick forever, handing each due callback to the group."""
        self._limit = anyio.CapacityLimiter(MAX_DELIVERIES)
        async with httpx.AsyncClient(transport=self.transport,
                                     timeout=DELIVERY_TIMEOUT) as client:
            while True:
                for task in self.due():
                    group.start_soon(self._deliver, client, task)
                await anyio.sleep(TICK_SECONDS)

    async def _deliver(self, client: httpx.AsyncClient, task: Task) -> None:
        assert self._limit is not None and task.order.reply_url
        body = self.payload(task)
        async with self._limit:
            try:
                await client.post(task.order.reply_url, json=body)
            except Exception:  # an unreachable receiver is the receiver's problem
                return
        self.sent.append((task.id, body["status_name"]))
