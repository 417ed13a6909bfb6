"""Submission: getting a task for a step without ever paying twice.

Each generation POST is journalled before it is sent (with a fresh replyRef) and
right after (with its task id). A POST whose outcome is unknown (a 500 that is not
moderation, a reset, a timeout) is recovered before anything is sent again: GET
scheduler by replyRef, then GET tasks for a matching one. On resume, a step's
earlier POST is re-attached to, or recovered, instead of being sent again.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from klingflow.cache.claims import Lease
from klingflow.cache.inflight import InFlight, InFlightRecords, UnreadableRecordError
from klingflow.client import KlingClient, Task
from klingflow.errors import (
    ApiError,
    ClaimLostError,
    RateLimitedError,
    RemoteCacheError,
    ServerError,
    TransportError,
)
from klingflow.journal import Journal
from klingflow.plan import endpoint_of
from klingflow.policy import Backoff, Retrier, RetriesExhausted, RetryPolicy
from klingflow.run.collection import Collector
from klingflow.run.recovery import Recovery
from klingflow.run.results import Event, NotSubmitted, StepFailed, StepResult, step_failure
from klingflow.run.resume import Resume
from klingflow.run.scheduling import Slots
from klingflow.run.uploads import Uploads
from klingflow.run.waiting import Patience
from klingflow.spec.pipeline import Account, Step


class Submitter:
    """Submits steps within their slots; returns each with a slot held for its task."""

    def __init__(self, *, accounts: Mapping[str, Account], prices: Mapping[str, int | None],
                 inflight: InFlightRecords, known: Callable[[str, str], frozenset[int]],
                 client: KlingClient, journal: Journal,
                 slots: Slots, uploads: Uploads, collector: Collector, resume: Resume,
                 patience: Patience, retrier: Retrier, urgency: Mapping[str, float],
                 backoff_base: float, max_rate_limit_wait: float, stopping: Callable[[], bool],
                 on_event: Callable[[Event], None]) -> None:
        self._accounts = accounts
        self._prices = prices
        self._inflight = inflight
        self._known = known  # (step, key) -> tasks of other POSTs: never recovered as ours
        self._owned: set[str] = set()  # keys whose in-flight record this run settles
        self._client = client
        self._journal = journal
        self._slots = slots
        self._uploads = uploads
        self._collector = collector
        self._resume = resume
        self._patience = patience
        self._urgency = urgency
        self._retrier = retrier
        self._rate_limits = RetryPolicy(
            attempts=None, within=max_rate_limit_wait, base=backoff_base, floor=backoff_base,
            cap=4 * backoff_base, retryable=lambda error: isinstance(error, RateLimitedError))
        self._lost_posts = RetryPolicy(base=backoff_base, cap=4 * backoff_base,
                                       retryable=lambda error: isinstance(error, ApiError))
        self._stopping = stopping
        self._on_event = on_event
        self._claimed: set[int] = resume.owned_tasks()
        self._recovery = Recovery(client=client, uploads=uploads, patience=patience,
                                  claimed=self._claimed)
        self._submitted_at: dict[str, float] = {}

    def submitted_at(self, step_id: str) -> float:
        """When the POST that created the step's task was sent (wall clock)."""
        return self._submitted_at[step_id]

    def email(self, alias: str | None) -> str | None:
        account = self._accounts.get(alias) if alias is not None else None
        return account.email if account is not None else None

    # ---- re-attaching on resume -------------------------------------------------------

    async def reattach(self, step: Step, result: StepResult, key: str, *,
                       previous: InFlight | None = None,
                       lease: Lease | None = None) -> tuple[str | None, Task | None]:
        """The task an earlier POST of this request may have created, with a slot for it:
        from this run directory's journal (a resume), else from the cache's in-flight
        record (a run whose directory is gone, or another run's unresolved POST), else
        from `previous`, what the remote claim this machine took over knew. The claim
        (`lease`) learns the task before it is read."""
        found = await self._from_journal(step, result, key)
        if found is None:
            found = await self._from_record(step, result, key, self._sent_before(key))
        if found is None and previous is not None:
            found = await self._from_record(step, result, key, previous)
        if found is None:
            return None, None
        alias, email, task_id = found
        await _tell_claim(lease, step, lambda held: held.reattached(
            task_id, account=alias, email=email), created=task_id)
        return alias, await self._collector.get_task(step, task_id, email)

    def _sent_before(self, key: str) -> InFlight | None:
        """The cache's in-flight record of a POST of this request. One that cannot be read
        stops the step: it may name a task that is paid for, and paying again on a guess
        is what this module exists to prevent."""
        try:
            return self._inflight.get(key)
        except UnreadableRecordError as exc:
            raise StepFailed("inflight", f"{exc}: an earlier POST of this request may have "
                             "created a task that is paid for. Run again with --resume "
                             "RUN_DIR (the folder of the run that sent it) to re-attach to "
                             f"its task, or delete {exc.path} to pay for a new one",
                             unresolved=True) from exc

    async def _from_journal(self, step: Step, result: StepResult,
                            key: str) -> tuple[str | None, str | None, int] | None:
        sub = self._resume.submission(step.id)
        if sub is None:
            return None
        task_id = None
        if sub.key == key:
            result.attempts = self._resume.attempts(step.id)
            task_id = sub.task_id or await self._recovery.recover(
                step, sub.reply_ref, sub.email, sub.at_ms, exclude=self._known(step.id, key))
        if task_id is None:
            self._resume.give_back(step.id)
            return None
        # A task found by the POST's replyRef was created by that POST of this run
        # directory (a kill came before its 'submitted' line): charged to its invocation.
        self._attach(step, result, key, task_id, sub.account, sub.email, sub.reply_ref,
                     sub.at_ms, reattached=sub.task_id is not None,
                     charged_to=sub.invocation or None)
        self._resume.adopt(step.id)
        return sub.account, sub.email, task_id

    async def _from_record(self, step: Step, result: StepResult, key: str,
                           record: InFlight | None) -> tuple[str | None, str | None, int] | None:
        if record is None:
            return None
        self._owned.add(key)  # this run settles it now
        task_id = record.task_id or await self._recovery.recover(
            step, record.reply_ref, record.email, record.at_ms,
            exclude=self._known(step.id, key))
        if task_id is None:
            self._inflight.done(key)  # its POST surely created nothing
            self._owned.discard(key)
            return None
        self._slots.take(record.account)  # the task runs at the service: count it at once
        self._attach(step, result, key, task_id, record.account, record.email,
                     record.reply_ref, record.at_ms, reattached=True)
        return record.account, record.email, task_id

    def settled(self, key: str) -> None:
        """The request's result is in the cache, or its task surely failed: its in-flight
        record goes (only one this run sent or took over)."""
        if key in self._owned:
            self._inflight.done(key)
            self._owned.discard(key)

    # ---- submitting -------------------------------------------------------------------

    async def submit(self, step: Step, result: StepResult, key: str, *,
                     lease: Lease | None = None) -> tuple[str | None, Task]:
        """POST until a task exists, never paying twice; returns with a slot held.

        `step.retries` bounds the POSTs that surely created nothing after an error;
        429s are waited out separately, for at most max_rate_limit_wait seconds.
        """
        busy = self._retrier.backoff(self._rate_limits)
        lost = self._retrier.backoff(self._lost_posts.but(attempts=step.retries + 1))
        while True:
            alias = await self._acquire(step, result)
            try:
                outcome = await self._post(step, result, key, alias, lease)
            except RateLimitedError as refused:
                self._slots.release(alias)
                await self._wait_rate_limit(step, busy, refused)
                continue
            except BaseException:
                self._slots.release(alias)
                raise
            if isinstance(outcome, Task):
                return alias, outcome
            self._slots.release(alias)
            try:
                await lost.wait(outcome)
            except RetriesExhausted:
                raise StepFailed(outcome.category, f"gave up after {result.attempts} "
                                 f"attempts: {outcome}") from outcome

    async def _acquire(self, step: Step, result: StepResult) -> str | None:
        """A slot for a new submission, unless the run stops meanwhile."""
        if self._stopping():
            raise NotSubmitted
        alias = await self._slots.acquire(step.account, any_account=step.account is None,
                                          urgency=self._urgency[step.id])
        result.slot_at, result.account = time.time(), alias
        if self._stopping():
            self._slots.release(alias)
            raise NotSubmitted
        return alias

    async def _post(self, step: Step, result: StepResult, key: str, alias: str | None,
                    lease: Lease | None) -> Task | ApiError:
        """One POST with its journal lines; the error when it surely created no task."""
        email = self.email(alias)
        body = await self._uploads.body(step, email)
        reply_ref = uuid.uuid4().hex
        at_ms = int(time.time() * 1000)
        result.attempts += 1
        self._journal.write({"event": "submitting", "step": step.id, "key": key,
                             "reply_ref": reply_ref, "account": alias, "email": email,
                             "at_ms": at_ms})
        self._inflight.sending(InFlight(key, step.id, reply_ref, alias, email, at_ms,
                                        run_dir=str(self._journal.path.parent)))
        self._owned.add(key)
        await self._journal.sync()  # on disk before anything is sent
        await _tell_claim(lease, step, lambda held: held.submitting(
            reply_ref=reply_ref, account=alias, email=email, at_ms=at_ms))
        created = functools.partial(self._created, step, result, key, alias, email,
                                    reply_ref, at_ms, lease)
        try:
            task = await self._client.submit(endpoint_of(step), {**body, "replyRef": reply_ref})
        except (ServerError, TransportError) as unknown:
            task_id = await self._recovery.recover(step, reply_ref, email, at_ms, body,
                                                   exclude=self._known(step.id, key))
            if task_id is None:
                return unknown
            await created(task_id)  # recorded and charged before reading it can fail
            return await self._collector.get_task(step, task_id, email)
        except RateLimitedError:
            raise  # nothing was created: submit() waits and sends it again
        except ApiError as exc:
            raise step_failure(exc) from exc
        await created(task.id)
        return task

    async def _created(self, step: Step, result: StepResult, key: str, alias: str | None,
                       email: str | None, reply_ref: str, at_ms: int, lease: Lease | None,
                       task_id: int) -> None:
        """The task a POST created: in the journal (charged), the in-flight record and
        the claim."""
        self._attach(step, result, key, task_id, alias, email, reply_ref, at_ms)
        await _tell_claim(lease, step, lambda held: held.submitted(task_id), created=task_id)

    def _attach(self, step: Step, result: StepResult, key: str, task_id: int,
                alias: str | None, email: str | None, reply_ref: str, at_ms: int, *,
                reattached: bool = False, charged_to: str | None = None) -> None:
        """Record the task a step has: a new one (charged at its price, to this invocation
        or to `charged_to`, the one whose POST made it) or one whose charge is already
        recorded (re-attached)."""
        self._claimed.add(task_id)
        self._inflight.created(key, task_id)
        self._owned.add(key)
        self._submitted_at[step.id] = at_ms / 1000
        result.task_id, result.account = task_id, alias
        result.submitted_at = result.submitted_at or time.time()
        charge: dict[str, object] = {"reattached": True} if reattached else \
            {"credits": self._prices.get(step.id)}
        if charged_to and not reattached:
            charge["invocation"] = charged_to
        self._journal.write({"event": "submitted", "step": step.id, "task_id": task_id,
                             "account": alias, "email": email, "reply_ref": reply_ref,
                             **charge})
        found = reattached or charged_to is not None  # an earlier POST's task
        self._on_event(Event(step.id, "re-attached" if found else "submitted",
                             f"task {task_id}"))

    async def _wait_rate_limit(self, step: Step, busy: Backoff,
                               refused: RateLimitedError) -> None:
        try:
            delay = busy.next_delay(refused)
        except RetriesExhausted:
            raise StepFailed("rate_limited", f"every eligible account stayed busy for "
                             f"{busy.waited:.0f} s: {refused}") from refused
        self._on_event(Event(step.id, "waiting",
                             f"account busy (429); retrying in {delay:.1f} s"))
        await self._retrier.sleep(delay)


async def _tell_claim(lease: Lease | None, step: Step,
                      write: Callable[[Lease], Awaitable[None]], *,
                      created: int | None = None) -> None:
    """Tell the remote claim what this machine does, so a machine that takes it over
    finds the task instead of paying. A claim another machine took over means this one
    must not submit (before the POST); after it, the task is this step's all the same."""
    if lease is None:
        return
    try:
        await write(lease)
    except ClaimLostError as lost:
        if created is None:
            raise StepFailed("remote", f"{lost}; nothing was sent") from lost
    except RemoteCacheError as exc:
        if created is None:
            raise StepFailed("remote", f"the remote claim could not be updated, so nothing "
                             f"was sent: {exc}") from exc
