"""The executor: runs a checked pipeline on anyio within its limits.

A step starts as soon as every step it needs is done. Tasks in flight are capped
per account and for the whole run (`Slots`). Each generation POST is journalled
before and after it; a POST whose outcome is unknown is recovered (GET
scheduler by replyRef, then GET tasks) before anything is sent again. Results
come back as `StepResult`s; this module never prints.
"""

from __future__ import annotations

import bisect
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from klingflow import media
from klingflow.cache import Cache, CacheEntry, Claim
from klingflow.client import KlingClient, Task
from klingflow.errors import (
    ApiError,
    KlingflowError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedError,
)
from klingflow.files import file_hash, sha256_file
from klingflow.journal import Journal, JournalState
from klingflow.media import MediaError
from klingflow.models import DEFAULT_DURATION
from klingflow.plan import endpoint_of, request_body
from klingflow.spec.pipeline import Pipeline, Ref, Step, Template
from klingflow.verdicts import request_key

SUCCEEDED, FAILED, SKIPPED, CACHED = "succeeded", "failed", "skipped", "cached"
NOT_RUN, INTERRUPTED = "not_run", "interrupted"
FINAL_STATUSES = (SUCCEEDED, FAILED, SKIPPED, CACHED, NOT_RUN, INTERRUPTED)
OUTPUT_FILES = {"video": ".mp4", "first_frame": ".first.png", "last_frame": ".last.png"}
_T = TypeVar("_T")
CLAIM_POLL_SECONDS = 0.2
RECOVERY_WINDOW_MS = 10_000  # how far before a POST a task it created may be stamped
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".mp4": "video/mp4"}


@dataclass(frozen=True, slots=True)
class RunOptions:
    max_jobs: int | None = None  # whole-run cap; None: the pipeline's limits.max_jobs
    poll_interval: float = 15.0
    fail_fast: bool = False
    budget: int | None = None  # credits; None: the pipeline's limits.budget
    force: frozenset[str] = frozenset()  # step ids to regenerate even when cached
    backend: str = "useapi"  # part of every cache key: "sim" clips never serve real runs
    max_rate_limit_wait: float = 600.0  # seconds one step may spend waiting out 429s


@dataclass(frozen=True, slots=True)
class OutputFile:
    path: Path
    sha256: str


@dataclass(slots=True)
class StepResult:
    """What happened to one step. Mutable while the run goes; read-only after."""

    step_id: str
    status: str = "pending"
    task_id: int | None = None
    account: str | None = None
    attempts: int = 0
    error_category: str | None = None
    error: str | None = None
    queued_at: float | None = None
    submitted_at: float | None = None
    finished_at: float | None = None
    credits: int = 0
    key: str | None = None
    outputs: dict[str, OutputFile] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """A change the progress display may show."""

    step_id: str
    status: str
    detail: str = ""


class StepFailed(KlingflowError):
    """A step that cannot succeed in this run. `unresolved`: a POST of it may have
    created a task that could not be found yet; a resume must look again first."""

    def __init__(self, category: str, message: str, *, unresolved: bool = False) -> None:
        super().__init__(message)
        self.category = category
        self.unresolved = unresolved


class NotSubmitted(Exception):
    """The run is stopping (fail-fast, Ctrl-C): this step is not sent."""


class RunAborted(KlingflowError):
    """A condition that stops the whole run (401, 402)."""

    def __init__(self, cause: ApiError) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.exit_code = cause.exit_code


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

    def take(self, alias: str | None) -> None:
        """Count a task already running (found on resume), even past the limit."""
        self._used[alias] += 1

    def release(self, alias: str | None) -> None:
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


class Executor:
    """Runs the steps of one pipeline into one run directory."""

    def __init__(self, *, pipeline: Pipeline, order: Sequence[Step],
                 credits: Mapping[str, int | None], client: KlingClient, run_dir: Path,
                 journal: Journal, cache: Cache, options: RunOptions,
                 prior: JournalState | None = None,
                 on_event: Callable[[Event], None] = lambda event: None) -> None:
        self.pipeline = pipeline
        self.order = list(order)
        self.credits = credits
        self.client = client
        self.run_dir = run_dir
        self.journal = journal
        self.cache = cache
        self.options = options
        self.prior = prior or JournalState()
        self.on_event = on_event
        self.results = {s.id: StepResult(s.id) for s in self.order}
        self._done = {s.id: anyio.Event() for s in self.order}
        self._slots = self._make_slots()
        self._urgency = urgency(self.order)
        self._prepaid = self._paid_before()
        self._prior_slots: dict[str, str | None] = {}
        self._budget = Budget(options.budget if options.budget is not None else pipeline.budget,
                              spent=sum(self.credits.get(sid) or 0 for sid in self._prepaid))
        self._uploads: dict[str, str] = dict(self.prior.uploads)
        self._upload_locks: dict[str, anyio.Lock] = {}
        self._claimed: set[int] = self._tasks_before()
        self._stopping = False
        self.aborted: RunAborted | None = None
        self._rng = random.Random()

    # ---- the run ------------------------------------------------------------------

    async def run(self) -> dict[str, StepResult]:
        self._count_running_tasks()
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                for step in self.order:
                    group.start_soon(self._run_step, step)
        finally:
            self._close_unfinished()
        return self.results

    def stop_submitting(self) -> None:
        """No new submissions (fail-fast, Ctrl-C); tasks already paid for go on."""
        self._stopping = True

    def _tasks_before(self) -> set[int]:
        """Task ids this run directory already owns: recovery must never adopt them again."""
        owned = {sub.task_id for sub in self.prior.submissions.values() if sub.task_id}
        owned |= {int(done["task_id"]) for done in self.prior.finished.values()
                  if done.get("task_id")}
        return owned

    def _paid_before(self) -> set[str]:
        """On resume: the steps whose task this run directory already paid for."""
        paid = {sid for sid, sub in self.prior.submissions.items() if sub.task_id is not None}
        paid |= {sid for sid, done in self.prior.finished.items()
                 if done.get("event") == "succeeded"}
        return paid

    def _make_slots(self) -> Slots:
        total = self.options.max_jobs or self.pipeline.max_jobs
        if not self.pipeline.accounts:
            return Slots({None: total or 1}, total)
        return Slots({a.alias: a.max_jobs for a in self.pipeline.accounts.values()}, total)

    def _count_running_tasks(self) -> None:
        """On resume, tasks still running count against their account's limit.

        Each such slot is held for its step: re-attaching uses it, any other
        outcome of the step gives it back (`_give_back_prior_slot`).
        """
        for step_id, sub in self.prior.submissions.items():
            if step_id in self.results and step_id not in self.prior.finished:
                self._slots.take(sub.account)
                self._prior_slots[step_id] = sub.account

    def _give_back_prior_slot(self, step_id: str) -> None:
        if step_id in self._prior_slots:
            self._slots.release(self._prior_slots.pop(step_id))

    def _close_unfinished(self) -> None:
        for result in self.results.values():
            if result.status not in FINAL_STATUSES:
                result.status = INTERRUPTED if result.task_id is not None else NOT_RUN
                result.finished_at = result.finished_at or time.time()

    async def _run_step(self, step: Step) -> None:
        result = self.results[step.id]
        result.queued_at = time.time()
        try:
            await self._run_when_ready(step, result)
        except StepFailed as failure:
            self._fail(step, result, failure)
        except NotSubmitted:
            self._finish(result, NOT_RUN, None, "not submitted: the run was stopping")
        except MediaError as bad:
            self._fail(step, result, StepFailed("media", str(bad)))
        except RunAborted as abort:
            self.aborted = self.aborted or abort
            self._finish(result, FAILED, abort.cause.category, str(abort))
            self.stop_submitting()
            self._group.cancel_scope.cancel()
        finally:
            self._give_back_prior_slot(step.id)  # if the step did not re-attach
            self._done[step.id].set()

    def _fail(self, step: Step, result: StepResult, failure: StepFailed) -> None:
        self._finish(result, FAILED, failure.category, str(failure))
        self.journal.write({"event": "failed", "step": step.id, "category": failure.category,
                            "message": str(failure), "unresolved": failure.unresolved})
        if self.options.fail_fast:
            self.stop_submitting()

    async def _run_when_ready(self, step: Step, result: StepResult) -> None:
        for need in step.needs:
            await self._done[need].wait()
        blocked = [n for n in step.needs if self.results[n].status not in (SUCCEEDED, CACHED)]
        if blocked:
            reason = f"needs {blocked[0]}, which {self.results[blocked[0]].status.replace('_', ' ')}"
            self._finish(result, SKIPPED, None, reason)
            return
        await self._execute(step, result)

    def _finish(self, result: StepResult, status: str, category: str | None,
                message: str | None) -> None:
        result.status, result.error_category, result.error = status, category, message
        result.finished_at = time.time()
        self.on_event(Event(result.step_id, status, message or ""))

    # ---- one step ----------------------------------------------------------------

    async def _execute(self, step: Step, result: StepResult) -> None:
        key, request = self.request_key(step)
        result.key = key
        if self._restore_finished(step, result, key):
            return
        claim = await self._claim(key)
        try:
            if step.id not in self.options.force and self._restore_cached(step, result, key):
                return
            await self._generate(step, result, key, request)
        finally:
            claim.release()

    async def _claim(self, key: str) -> Claim:
        """Wait until no other process works on this request (two runs never pay twice)."""
        while (claim := self.cache.try_claim(key)) is None:
            await anyio.sleep(CLAIM_POLL_SECONDS)
        return claim

    def request_key(self, step: Step) -> tuple[str, dict[str, Any]]:
        """The step's cache key: its canonical request, inputs replaced by content hashes."""
        return request_key(step, self.pipeline, self.options.backend,
                           lambda ref: self.results[ref.name].outputs[ref.attr or "video"].sha256)

    def _restore_finished(self, step: Step, result: StepResult, key: str) -> bool:
        """On resume: a step this run directory already finished is not done again."""
        done = self.prior.finished.get(step.id)
        if not done or done.get("event") not in ("succeeded", "cached") or done.get("key") != key:
            return False
        outputs = {a: OutputFile(self.run_dir / p, s) for a, (p, s) in done["outputs"].items()}
        if not all(o.path.exists() for o in outputs.values()):
            return False
        result.outputs, result.task_id = outputs, done.get("task_id")
        result.account, result.credits = done.get("account"), int(done.get("credits") or 0)
        result.attempts = self.prior.attempts.get(step.id, 0)
        self._finish(result, SUCCEEDED if done["event"] == "succeeded" else CACHED, None, None)
        return True

    def _restore_cached(self, step: Step, result: StepResult, key: str) -> bool:
        entry = self.cache.lookup(key)
        if entry is None:
            return False
        for attr, sha in entry.outputs.items():
            dest = self.run_dir / f"{step.id}{OUTPUT_FILES[attr]}"
            self.cache.restore(sha, dest)
            result.outputs[attr] = OutputFile(dest, sha)
        result.task_id, result.account = entry.task_id, entry.account
        self._record_success(step, result, "cached")
        return True

    async def _generate(self, step: Step, result: StepResult, key: str,
                        request: Mapping[str, Any]) -> None:
        credits = self.credits.get(step.id)
        reserved = step.id not in self._prepaid  # a task paid before a crash is counted
        if reserved:
            self._budget.reserve(step.id, credits)
        try:
            task, email, alias = await self._submit_and_wait(step, result, key)
        except BaseException:
            if reserved and result.task_id is None:
                self._budget.refund(credits)
            raise
        result.credits = credits or 0
        await self._collect(step, result, task, email)
        entry = CacheEntry(key, task.id, alias, credits,
                           {a: o.sha256 for a, o in result.outputs.items()}, request)
        await anyio.to_thread.run_sync(self.cache.store, entry,
                                       {a: o.path for a, o in result.outputs.items()})
        self._record_success(step, result, "succeeded")

    def _record_success(self, step: Step, result: StepResult, event: str) -> None:
        outputs = {a: [o.path.name, o.sha256] for a, o in result.outputs.items()}
        self.journal.write({"event": event, "step": step.id, "key": result.key,
                            "task_id": result.task_id, "account": result.account,
                            "credits": result.credits, "outputs": outputs})
        self._finish(result, SUCCEEDED if event == "succeeded" else CACHED, None, None)

    # ---- submitting and waiting ------------------------------------------------

    async def _submit_and_wait(self, step: Step, result: StepResult,
                               key: str) -> tuple[Task, str | None, str | None]:
        """Hold a slot from submit until the task is final; returns (task, email, alias)."""
        alias, task = await self._reattach(step, result, key)
        if task is None:
            alias, task = await self._submit(step, result, key)
        email = self._email(alias)
        try:
            task = await self._wait_final(step, task, email)
        finally:
            self._slots.release(alias)
        if task.failed:
            category = "moderation" if "violate" in task.error.lower() else "generation_failed"
            raise StepFailed(category, f"task {task.id} failed: "
                             f"{task.error or task.message or task.status_name}")
        return task, email, alias

    async def _reattach(self, step: Step, result: StepResult,
                        key: str) -> tuple[str | None, Task | None]:
        """On resume: find the task an earlier POST of this step may have created."""
        sub = self.prior.submissions.get(step.id)
        if sub is None or step.id not in self._prior_slots:
            return None, None
        task_id = None
        if sub.key == key:
            result.attempts = self.prior.attempts.get(step.id, 0)
            task_id = sub.task_id or await self._recover(step, sub.reply_ref, sub.email,
                                                         sub.at_ms)
        if task_id is None:
            self._give_back_prior_slot(step.id)
            return None, None
        self._attach(step, result, task_id, sub.account, sub.email, sub.reply_ref)
        task = await self._get_task(step, task_id, sub.email)
        del self._prior_slots[step.id]  # the slot is this attempt's now: freed when final
        return sub.account, task

    async def _submit(self, step: Step, result: StepResult,
                      key: str) -> tuple[str | None, Task]:
        """POST until a task exists, never paying twice; returns with a slot held.

        `step.retries` bounds the POSTs that surely created nothing after an
        error; 429s are waited out separately (within max_rate_limit_wait).
        """
        rate_limited_since: float | None = None
        lost = 0
        while True:
            alias = await self._acquire_to_submit(step)
            try:
                outcome = await self._post(step, result, key, alias)
            except RateLimitedError as busy:
                self._slots.release(alias)
                rate_limited_since = rate_limited_since or anyio.current_time()
                await self._wait_rate_limit(step, busy, rate_limited_since)
                continue
            except BaseException:
                self._slots.release(alias)
                raise
            if isinstance(outcome, Task):
                return alias, outcome
            self._slots.release(alias)
            lost += 1
            if lost > step.retries:
                raise StepFailed(outcome.category,
                                 f"gave up after {result.attempts} attempts: {outcome}")

    async def _acquire_to_submit(self, step: Step) -> str | None:
        """A slot for a new submission, unless the run stops meanwhile."""
        if self._stopping:
            raise NotSubmitted
        alias = await self._slots.acquire(step.account, any_account=step.account is None,
                                          urgency=self._urgency[step.id])
        if self._stopping:
            self._slots.release(alias)
            raise NotSubmitted
        return alias

    async def _post(self, step: Step, result: StepResult, key: str,
                    alias: str | None) -> Task | ApiError:
        """One POST with its journal lines; the error when it surely created no task."""
        email = self._email(alias)
        body = await self._request(step, email)
        reply_ref = uuid.uuid4().hex
        at_ms = int(time.time() * 1000)
        result.attempts += 1
        self.journal.write({"event": "submitting", "step": step.id, "key": key,
                            "reply_ref": reply_ref, "account": alias, "email": email,
                            "at_ms": at_ms})
        try:
            task = await self.client.submit(endpoint_of(step), {**body, "replyRef": reply_ref})
        except (ServerError, TransportError) as unknown:
            task_id = await self._recover(step, reply_ref, email, at_ms, body)
            if task_id is None:
                return unknown
            task = await self._get_task(step, task_id, email)
        except RateLimitedError:
            raise  # nothing was created: _submit waits and sends it again
        except ApiError as exc:
            raise self._failure(exc) from exc
        self._attach(step, result, task.id, alias, email, reply_ref)
        return task

    def _attach(self, step: Step, result: StepResult, task_id: int, alias: str | None,
                email: str | None, reply_ref: str) -> None:
        self._claimed.add(task_id)
        result.task_id, result.account = task_id, alias
        result.submitted_at = result.submitted_at or time.time()
        self.journal.write({"event": "submitted", "step": step.id, "task_id": task_id,
                            "account": alias, "email": email, "reply_ref": reply_ref})
        self.on_event(Event(step.id, "submitted", f"task {task_id}"))

    async def _wait_rate_limit(self, step: Step, busy: RateLimitedError, since: float) -> None:
        waited = anyio.current_time() - since
        if waited > self.options.max_rate_limit_wait:
            raise StepFailed("rate_limited", f"every eligible account stayed busy for "
                             f"{waited:.0f} s: {busy}")
        delay = busy.retry_after if busy.retry_after is not None else self._backoff(waited)
        self.on_event(Event(step.id, "waiting", f"account busy (429); retrying in {delay:.1f} s"))
        await anyio.sleep(delay)

    def _backoff(self, waited: float) -> float:
        base = max(self.options.poll_interval, 0.05)
        return self._rng.uniform(base, base * 2 + min(waited, 10 * base) / 2)

    def _failure(self, exc: ApiError) -> KlingflowError:
        if isinstance(exc, UnauthorizedError | PaymentRequiredError):
            return RunAborted(exc)
        return StepFailed(exc.category, str(exc))

    # ---- recovering a POST whose outcome is unknown -----------------------------

    async def _recover(self, step: Step, reply_ref: str, email: str | None, at_ms: int,
                       body: Mapping[str, Any] | None = None) -> int | None:
        """The task a POST created, or None when it surely created none.

        Looks for its replyRef in GET scheduler, then for a matching task in GET
        tasks. Until those answer, nothing is known, so it keeps asking (within
        the step's timeout) rather than risk paying twice.
        """
        try:
            return await self._patiently(
                step, lambda: self._find_created(step, reply_ref, email, at_ms, body))
        except ApiError as exc:
            if not exc.retryable:
                raise self._failure(exc) from exc
            raise StepFailed("recovery", "could not tell whether a task was created "
                             f"(resume to try again): {exc}", unresolved=True) from exc

    async def _find_created(self, step: Step, reply_ref: str, email: str | None, at_ms: int,
                            body: Mapping[str, Any] | None) -> int | None:
        for entry in await self.client.scheduler():
            if entry.reply_ref == reply_ref and entry.task_id not in self._claimed:
                return entry.task_id
        if body is None:
            body = await self._request(step, email)
        since = at_ms - RECOVERY_WINDOW_MS
        for task in await self.client.list_tasks(email=email, created_after_ms=since):
            if task.id not in self._claimed and _matches(task, body):
                return task.id
        return None

    # ---- polling and collecting -------------------------------------------------

    async def _get_task(self, step: Step, task_id: int, email: str | None) -> Task:
        """The task, now. It exists and is paid for: transient errors are waited out."""
        try:
            return await self._patiently(step, lambda: self.client.get_task(task_id, email=email))
        except NotFoundError as gone:
            raise StepFailed("not_found", f"task {task_id} is gone: {gone}") from gone
        except ApiError as exc:
            raise self._failure(exc) from exc

    async def _patiently(self, step: Step, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()`, again after each transient error (beyond the client's own retries)
        until the step's timeout; for calls that are safe to repeat. Raises the last
        error when it is not transient or time is up."""
        deadline = anyio.current_time() + step.timeout
        attempt = 0
        while True:
            try:
                return await call()
            except ApiError as exc:
                if not exc.retryable or anyio.current_time() > deadline:
                    raise
            attempt += 1
            await anyio.sleep(self._rng.uniform(0, min(30.0, self.options.poll_interval * 2**attempt)))

    async def _wait_final(self, step: Step, task: Task, email: str | None) -> Task:
        deadline = anyio.current_time() + step.timeout
        while not task.status_final:
            if anyio.current_time() > deadline:
                raise StepFailed("timeout", f"task {task.id} was not done after "
                                 f"{step.timeout:g} s (the step's timeout)")
            await anyio.sleep(self.options.poll_interval)
            task = await self._poll_once(task, email)
        return task

    async def _poll_once(self, task: Task, email: str | None) -> Task:
        try:
            return await self.client.get_task(task.id, email=email)
        except NotFoundError as gone:
            raise StepFailed("not_found", f"task {task.id} is gone: {gone}") from gone
        except ApiError as exc:
            if exc.retryable:
                return task  # the client's own retries are used up: try at the next poll
            raise self._failure(exc) from exc

    async def _collect(self, step: Step, result: StepResult, task: Task,
                       email: str | None) -> None:
        video = self.run_dir / f"{step.id}.mp4"
        await self._download(step, task, email, video)
        first = self.run_dir / f"{step.id}.first.png"
        last = self.run_dir / f"{step.id}.last.png"
        await anyio.to_thread.run_sync(media.extract_first_frame, video, first)
        await anyio.to_thread.run_sync(media.extract_last_frame, video, last)
        for attr, path in (("video", video), ("first_frame", first), ("last_frame", last)):
            result.outputs[attr] = OutputFile(path, await anyio.to_thread.run_sync(
                sha256_file, path))

    async def _download(self, step: Step, task: Task, email: str | None, dest: Path) -> None:
        """Download at once; a signed URL that expired (403) is refreshed by a new GET."""
        for attempt in range(4):
            if task.video is None:
                raise StepFailed("no_video", f"task {task.id} succeeded without a video")
            try:
                await self.client.download(task.video.url, dest)
                return
            except (NotFoundError, TransportError, ServerError) as exc:
                if attempt == 3:
                    raise StepFailed("download", f"could not download task {task.id}'s video: "
                                     f"{exc}") from exc
                task = await self._get_task(step, task.id, email)

    # ---- inputs ----------------------------------------------------------------

    async def _request(self, step: Step, email: str | None) -> dict[str, Any]:
        urls = {ref: await self._url_of(step, ref, email) for ref in _refs_of(step)}
        return request_body(step, self.pipeline, urls.__getitem__, email=email)

    async def _url_of(self, step: Step, ref: Ref, email: str | None) -> str:
        if ref.scope == "inputs":
            source = self.pipeline.inputs[ref.name]
            if source.path is None:
                return str(source.url)
            return await self._upload(step, source.path, file_hash(source.path), email,
                                      source.content_type)
        output = self.results[ref.name].outputs[ref.attr or "video"]
        return await self._upload(step, output.path, output.sha256, email)

    async def _upload(self, step: Step, path: Path, sha: str, email: str | None,
                      content_type: str | None = None) -> str:
        """Each file (whose hash is known) is uploaded at most once per run. An upload
        creates nothing billable, so transient errors are simply waited out. An input
        goes as the type its content called for at validation (a phone's .MPO: JPEG)."""
        async with self._upload_locks.setdefault(sha, anyio.Lock()):
            if sha not in self._uploads:
                content_type = content_type or _IMAGE_TYPES.get(path.suffix.lower(),
                                                                "image/png")
                data = path.read_bytes()
                try:
                    asset = await self._patiently(step, lambda: self.client.upload_asset(
                        data, content_type, email=email))
                except ApiError as exc:
                    raise self._failure(exc) from exc
                self._uploads[sha] = asset.url
                self.journal.write({"event": "uploaded", "sha256": sha, "url": asset.url})
        return self._uploads[sha]

    def _email(self, alias: str | None) -> str | None:
        return self.pipeline.accounts[alias].email if alias is not None else None


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


def _refs_of(step: Step) -> list[Ref]:
    refs: list[Ref] = []
    for value in step.params.values():
        if isinstance(value, Template):
            refs.extend(r for r in value.refs if r not in refs)
    return refs


def _matches(task: Task, body: Mapping[str, Any]) -> bool:
    """Whether a task from GET tasks is the one `body` asked for (no replyRef there)."""
    wanted_urls = {str(body[k]) for k in ("image", "image_tail") if body.get(k)}
    if not wanted_urls <= set(task.input_urls):
        return False
    for field_name, argument in (("prompt", "prompt"), ("effect", "special_effect")):
        if body.get(field_name) and task.arguments.get(argument) != body[field_name]:
            return False
    return True
