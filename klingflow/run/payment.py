"""Paying for a step, once: the remote claim (no other machine pays for the request
meanwhile), the budget, the task (re-attached, or new) held in its slot until it is
final, then its files kept in the cache and shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from klingflow.cache import Cache
from klingflow.cache.claims import ClaimState, Lease, ResultReady, WaitNotice
from klingflow.cache.inflight import InFlight
from klingflow.client import Task
from klingflow.errors import RemoteCacheError, is_moderation
from klingflow.media import MediaError
from klingflow.plan import PlannedStep
from klingflow.run.collection import Collector
from klingflow.run.durations import Durations
from klingflow.run.results import Event, StepFailed, StepResult
from klingflow.run.scheduling import Budget, Slots
from klingflow.run.sources import Sharing
from klingflow.run.submission import Submitter

PAID, SERVED = "paid", "served by another machine"


class Payer:
    def __init__(self, *, submitter: Submitter, collector: Collector, cache: Cache,
                 sharing: Sharing, slots: Slots, budget: Budget, prepaid: set[str],
                 durations: Durations, backend: str,
                 on_event: Callable[[Event], None]) -> None:
        self._submitter = submitter
        self._collector = collector
        self._cache = cache
        self._sharing = sharing
        self._slots = slots
        self._budget = budget
        self._prepaid = prepaid
        self._durations = durations
        self._backend = backend
        self._on_event = on_event

    async def pay(self, planned: PlannedStep, result: StepResult, request: dict[str, Any], *,
                  kept: Callable[[], None]) -> str:
        """PAID (`kept()` is called as soon as the result is in the cache, so the steps
        that need it can start), or SERVED when another machine made the result while
        this one waited."""
        board, remote, key = self._sharing.board, self._sharing.remote, result.key
        if board is None or remote is None or key is None:
            await self._generate(planned, result, request, lease=None, previous=None)
            kept()
            if key is not None:  # a remote without shared claims still gets the result
                self._sharing.share(self._cache, key)
            return PAID
        async with board.claim(key, step=planned.id, serve=remote.fetcher(key, self._cache),
                               on_wait=self._waiting(planned.id)) as got:
            if isinstance(got, ResultReady):
                return SERVED
            lease = got if isinstance(got, Lease) else None
            await self._generate(planned, result, request, lease=lease, previous=got.previous)
            kept()  # the run goes on; this step's task still pushes, then lets the claim go
            await self._push(planned.id, key)  # before the claim goes: waiters find it
        return PAID

    def _waiting(self, step_id: str) -> Callable[[WaitNotice], None]:
        return lambda notice: self._on_event(Event(step_id, "waiting", str(notice)))

    async def _push(self, step_id: str, key: str) -> None:
        entry, remote = self._cache.lookup(key), self._sharing.remote
        if entry is None or remote is None:
            return
        try:
            await remote.push(entry, self._cache)
        except RemoteCacheError as exc:  # the result is safe here; the next run pushes it
            self._on_event(Event(step_id, "remote", f"not pushed: {exc}"))

    async def _generate(self, planned: PlannedStep, result: StepResult,
                        request: dict[str, Any], *, lease: Lease | None,
                        previous: ClaimState | None) -> None:
        step, credits = planned.step, planned.credits
        task, email, alias = await self._submit_and_wait(planned, result, lease,
                                                         _record(previous))
        try:
            await self._collector.collect(step, result, task, email)
            await self._collector.keep(result, task_id=task.id, account=alias,
                                       credits=credits, request=request)
        except (OSError, MediaError) as exc:
            raise _uncollected(task, exc) from exc
        self._submitter.settled(result.key or "")

    async def _submit(self, planned: PlannedStep, result: StepResult, key: str,
                      lease: Lease | None) -> tuple[str | None, Task]:
        """A new task, its credits reserved against the budget first, and given back if
        nothing was sent. A task re-attached to was paid for by the run that sent it, so
        it needs no budget; one this run directory paid before a crash is counted in the
        budget's start (`prepaid`)."""
        reserved = planned.id not in self._prepaid
        if reserved:
            self._budget.reserve(planned.id, planned.credits)
        try:
            return await self._submitter.submit(planned.step, result, key, lease=lease)
        except BaseException:
            if reserved and result.task_id is None:
                self._budget.refund(planned.credits)
            raise

    async def _submit_and_wait(self, planned: PlannedStep, result: StepResult,
                               lease: Lease | None, previous: InFlight | None,
                               ) -> tuple[Task, str | None, str | None]:
        """Hold a slot from submit until the task is final; returns (task, email, alias)."""
        step, key = planned.step, result.key
        assert key is not None
        alias, task = await self._submitter.reattach(step, result, key, previous=previous,
                                                     lease=lease)
        if task is None:
            alias, task = await self._submit(planned, result, key, lease)
        email = self._submitter.email(alias)
        since = self._submitter.submitted_at(step.id)
        kind = Durations.key(self._backend, step.kind, planned.model, planned.mode,
                             planned.duration)
        try:
            task = await self._collector.wait_final(step, task, email, since=since,
                                                    expected=self._durations.expected(kind))
        finally:
            self._slots.release(alias)
            result.final_at = time.time()
        if task.succeeded:
            self._durations.record(kind, time.time() - since)
        if task.failed:
            category = "moderation" if is_moderation(task.error) else "generation_failed"
            # Remembered on this machine, so that no later recovery of a POST of this
            # request (its run directory deleted, say) takes this task for its own.
            self._cache.mark_unusable(task.id, f"failed at the service ({category})")
            raise StepFailed(category, f"task {task.id} failed: "
                             f"{task.error or task.message or task.status_name}")
        return task, email, alias


def _record(previous: ClaimState | None) -> InFlight | None:
    """What a stale claim this machine took over knew of its POST, as an in-flight record."""
    if previous is None or (previous.task_id is None and previous.reply_ref is None):
        return None
    return InFlight(previous.key, previous.step or "", previous.reply_ref or "",
                    previous.account, previous.email, previous.at_ms or 0, previous.task_id)


def _uncollected(task: Task, exc: OSError | MediaError) -> StepFailed:
    """A task that is done and paid for whose files could not be made here: the journal
    and the in-flight record keep it, so `--resume` collects it without paying again."""
    category = "media" if isinstance(exc, MediaError) else "local_files"
    reason = str(exc) if isinstance(exc, MediaError) else \
        f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return StepFailed(category, f"task {task.id} is done and paid for, but its result could "
                      f"not be kept: {reason}; fix that and run again with --resume to "
                      "collect it at no cost", unresolved=True)
