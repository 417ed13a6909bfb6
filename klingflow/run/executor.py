"""The executor: runs a plan's steps on anyio within their limits.

A step starts as soon as every step it needs is done; it is served from the cache,
or submitted (`Submitter`: never paying twice), waited for and collected
(`Collector`). Tasks in flight are capped per account and for the whole run
(`Slots`), and credits by the budget (`Budget`). Results come back as
`StepResult`s; this module never prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from klingflow.cache import Cache, Claim
from klingflow.cache.inflight import InFlightRecords
from klingflow.client import KlingClient
from klingflow.journal import Journal, JournalState
from klingflow.plan import Plan, PlannedStep
from klingflow.policy import PollPolicy, Retrier
from klingflow.run.collection import Collector
from klingflow.run.durations import Durations
from klingflow.run.payment import SERVED, Payer
from klingflow.run.results import (
    Event,
    NotSubmitted,
    RunAborted,
    StepFailed,
    StepResult,
    StepStatus,
)
from klingflow.run.resume import Resume
from klingflow.run.scheduling import Budget, Slots, urgency
from klingflow.run.sources import Sharing, Sources
from klingflow.run.submission import Submitter
from klingflow.run.uploads import Uploads
from klingflow.run.waiting import Patience
from klingflow.spec.pipeline import Account, Pipeline, Ref, Step
from klingflow.verdicts import request_key

CLAIM_POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class RunOptions:
    max_jobs: int | None = None  # whole-run cap; None: the pipeline's limits.max_jobs
    backoff: float = 15.0  # the base of the waits after a 429, a lost POST or a failed GET
    poll: PollPolicy = field(default_factory=PollPolicy)  # when to look at a running task
    fail_fast: bool = False
    budget: int | None = None  # credits; None: the pipeline's limits.budget
    force: frozenset[str] = field(default_factory=frozenset)  # regenerate even when cached
    backend: str = "useapi"  # part of every cache key: "sim" clips never serve real runs
    max_rate_limit_wait: float = 600.0  # seconds one step may spend waiting out 429s


class Executor:
    """Runs the steps of one plan into one run directory."""

    def __init__(self, *, pipeline: Pipeline, plan: Plan, client: KlingClient, run_dir: Path,
                 journal: Journal, cache: Cache, options: RunOptions,
                 accounts: Mapping[str, Account],
                 prior: JournalState | None = None,
                 on_event: Callable[[Event], None] = lambda event: None,
                 retrier: Retrier | None = None, sharing: Sharing | None = None) -> None:
        self.pipeline = pipeline
        self.planned = {s.id: s for s in plan.steps}
        self.run_dir = run_dir
        self.journal = journal
        self.cache = cache
        self.options = options
        self.on_event = on_event
        self.accounts = dict(accounts)
        self.results = {sid: StepResult(sid) for sid in self.planned}
        self.aborted: RunAborted | None = None
        self._done = {sid: anyio.Event() for sid in self.planned}
        self._stopping = False
        self._slots = self._make_slots()
        self._resume = Resume(prior or JournalState(), self._slots)
        prepaid = self._resume.paid()
        budget = Budget(options.budget if options.budget is not None else pipeline.budget,
                        spent=sum(self.planned[sid].credits or 0 for sid in prepaid
                                  if sid in self.planned))
        retrier, sharing = retrier or Retrier(), sharing or Sharing()
        self._locked = sharing.locked
        patience = Patience(retrier, options.backoff)
        self._durations = Durations(cache.root / "durations.json")
        self._collector = Collector(client=client, run_dir=run_dir, cache=cache,
                                    patience=patience, retrier=retrier,
                                    poll=options.poll)
        uploads = Uploads(pipeline=pipeline, client=client, journal=journal,
                          uploaded=self._resume.prior.uploads, output_of=self._output_of,
                          patience=patience)
        self._submitter = Submitter(
            accounts=self.accounts, prices={s.id: s.credits for s in plan.steps},
            inflight=InFlightRecords(cache.root), known=self._known_tasks,
            client=client, journal=journal, slots=self._slots,
            uploads=uploads, collector=self._collector, resume=self._resume,
            patience=patience, retrier=retrier, urgency=urgency([s.step for s in plan.steps]),
            backoff_base=options.backoff,
            max_rate_limit_wait=options.max_rate_limit_wait,
            stopping=lambda: self._stopping, on_event=on_event)
        self._sources = Sources(sharing=sharing, collector=self._collector, cache=cache,
                                accounts=self.accounts, on_event=on_event)
        self._payer = Payer(submitter=self._submitter, collector=self._collector, cache=cache,
                            sharing=sharing, slots=self._slots, budget=budget,
                            prepaid=self._resume.paid(), durations=self._durations,
                            backend=options.backend, on_event=on_event)

    def _make_slots(self) -> Slots:
        total = self.options.max_jobs or self.pipeline.max_jobs
        return Slots({a.alias: a.max_jobs for a in self.accounts.values()}, total)

    def _known_tasks(self, step_id: str, key: str) -> frozenset[int]:
        """The tasks the cache and the lock hold for this request or step, and those this
        machine saw fail or could not use: other POSTs'."""
        entry, locked = self.cache.lookup(key), self._locked.get(step_id)
        return frozenset(task for task in (entry.task_id if entry else None,
                                           locked.task_id if locked else None) if task) \
            | frozenset(self.cache.unusable_tasks())

    def _output_of(self, ref: Ref) -> Any:
        return self.results[ref.name].outputs[ref.attr or "video"]

    # ---- the run ------------------------------------------------------------------

    async def run(self) -> dict[str, StepResult]:
        self._resume.hold_running_slots(self.planned)
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                for planned in self.planned.values():
                    group.start_soon(self._run_step, planned)
        finally:
            self._close_unfinished()
            self._durations.save()
        return self.results

    def stop_submitting(self) -> None:
        """No new submissions (fail-fast, Ctrl-C); tasks already paid for go on."""
        self._stopping = True

    def _close_unfinished(self) -> None:
        for result in self.results.values():
            if not result.status.final:
                result.status = (StepStatus.INTERRUPTED if result.task_id is not None
                                 else StepStatus.NOT_RUN)
                result.finished_at = result.finished_at or time.time()

    async def _run_step(self, planned: PlannedStep) -> None:
        step = planned.step
        result = self.results[step.id]
        result.queued_at = time.time()
        try:
            await self._run_when_ready(planned, result)
        except StepFailed as failure:
            self._fail(result, failure)
        except NotSubmitted:
            self._finish(result, StepStatus.NOT_RUN, None, "not submitted: the run was stopping")
        except RunAborted as abort:
            self.aborted = self.aborted or abort
            self._finish(result, StepStatus.FAILED, abort.cause.category, str(abort))
            self.stop_submitting()
            self._group.cancel_scope.cancel()
        finally:
            self._resume.give_back(step.id)  # if the step did not re-attach
            self._done[step.id].set()

    def _fail(self, result: StepResult, failure: StepFailed) -> None:
        if not failure.unresolved and result.key is not None:
            self._submitter.settled(result.key)  # no task, or one that surely failed
        self._finish(result, StepStatus.FAILED, failure.category, str(failure))
        self.journal.write({"event": "failed", "step": result.step_id,
                            "category": failure.category, "message": str(failure),
                            "unresolved": failure.unresolved})
        if self.options.fail_fast:
            self.stop_submitting()

    async def _run_when_ready(self, planned: PlannedStep, result: StepResult) -> None:
        step = planned.step
        for need in step.needs:
            await self._done[need].wait()
        result.ready_at = time.time()
        blocked = [n for n in step.needs if not self.results[n].status.done]
        if blocked:
            reason = f"needs {blocked[0]}, which {self.results[blocked[0]].status.replace('_', ' ')}"
            self._finish(result, StepStatus.SKIPPED, None, reason)
            return
        await self._execute(planned, result)

    def _finish(self, result: StepResult, status: StepStatus, category: str | None,
                message: str | None) -> None:
        result.status, result.error_category, result.error = status, category, message
        result.finished_at = time.time()
        self.on_event(Event(result.step_id, status, message or ""))

    # ---- one step ----------------------------------------------------------------

    async def _execute(self, planned: PlannedStep, result: StepResult) -> None:
        step = planned.step
        key, request = self.request_key(step)
        result.key = key
        if self._restore_finished(step, result, key):
            return
        claim = await self._claim(key)
        try:
            if step.id not in self.options.force and not self._resume.owes(step.id, key) \
                    and await self._serve(planned, result, key, request):
                return
            paid = await self._payer.pay(planned, result, request, kept=lambda: self._paid(
                result))
            if paid == SERVED:
                self._collector.restore_cached(step, result, key)
                self._served(planned, result, "remote")
        finally:
            claim.release()

    async def _serve(self, planned: PlannedStep, result: StepResult, key: str,
                     request: dict[str, Any]) -> bool:
        """Served at no cost: the local cache, then the remote, then the lock."""
        step, sources = planned.step, self._sources
        if self._collector.restore_cached(step, result, key):
            source = "cache"
        elif await sources.from_remote(step, result, key):
            source = "remote"
        elif await sources.from_lock(step, result, key, request):
            source = "lock"
        else:
            return False
        self._served(planned, result, source)
        sources.share(key)
        return True

    async def _claim(self, key: str) -> Claim:
        """Wait until no other process works on this request (two runs never pay twice)."""
        while (claim := self.cache.try_claim(key)) is None:
            await anyio.sleep(CLAIM_POLL_SECONDS)
        return claim

    def request_key(self, step: Step) -> tuple[str, dict[str, Any]]:
        """The step's cache key: its canonical request, inputs replaced by content hashes."""
        return request_key(step, self.pipeline, self.options.backend,
                           lambda step_id: self.results[step_id].outputs["video"].sha256)

    def _restore_finished(self, step: Step, result: StepResult, key: str) -> bool:
        """On resume: a step this run directory already finished is not done again."""
        found = self._resume.finished(step.id, key, self.run_dir)
        if found is None:
            return False
        done, result.outputs = found
        result.task_id, result.account = done.get("task_id"), done.get("account")
        result.attempts = self._resume.attempts(step.id)
        status = StepStatus.SUCCEEDED if done["event"] == "succeeded" else StepStatus.CACHED
        self._finish(result, status, None, None)
        return True

    def _served(self, planned: PlannedStep, result: StepResult, source: str) -> None:
        """A step served at no cost; one whose task this run paid for (before a crash)
        counts as paid, not as served."""
        if result.task_id in self._resume.prior.tasks:
            self._record_success(result, StepStatus.SUCCEEDED)
            return
        result.served_by, result.saved = source, planned.credits or 0
        self._record_success(result, StepStatus.CACHED)

    def _paid(self, result: StepResult) -> None:
        """The step's result is in the cache: it succeeded, and the steps that need it may
        start (even while its result is still being pushed to the remote)."""
        self._record_success(result, StepStatus.SUCCEEDED)
        self._done[result.step_id].set()

    def _record_success(self, result: StepResult, status: StepStatus) -> None:
        outputs = {a: [o.path.name, o.sha256] for a, o in result.outputs.items()}
        self.journal.write({"event": str(status), "step": result.step_id, "key": result.key,
                            "task_id": result.task_id, "account": result.account,
                            "served_by": result.served_by, "outputs": outputs})
        self._finish(result, status, None, None)
