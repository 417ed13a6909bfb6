"""Collecting a task's result: polling until it is final, downloading the clip,
extracting its frames and hashing them, and keeping them in the cache."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio

from klingflow import media
from klingflow.cache import Cache, CacheEntry
from klingflow.client import KlingClient, Task
from klingflow.errors import ApiError, ForbiddenError, NotFoundError, ServerError, TransportError
from klingflow.policy import PollPolicy, Retrier, RetriesExhausted, RetryPolicy
from klingflow.run.results import (
    OUTPUT_FILES,
    OutputFile,
    StepFailed,
    StepResult,
    task_read_failure,
)
from klingflow.run.waiting import Patience
from klingflow.spec.pipeline import Step

DOWNLOADS = RetryPolicy(attempts=8, base=0.5, cap=10.0, retryable=lambda error: isinstance(
    error, ForbiddenError | NotFoundError | TransportError | ServerError))
"""A download that fails is tried again (with a fresh signed URL) up to 8 times, up to
about 45 s in all: the task is paid for, so it is worth the wait."""

FORBIDDEN_IN_A_ROW = 3
"""403s in a row while polling before the task counts as unreadable (undocumented
there: one is waited out like a 5xx; more say something is wrong with this task)."""


class Collector:
    """Reads tasks (they exist and are paid for: transient errors are waited out) and
    turns a finished one into the step's files in the run directory and the cache."""

    def __init__(self, *, client: KlingClient, run_dir: Path, cache: Cache,
                 patience: Patience, poll: PollPolicy, retrier: Retrier,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._run_dir = run_dir
        self._cache = cache
        self._patience = patience
        self._poll = poll
        self._retrier = retrier
        self._clock = clock
        self._sleep = retrier.sleep

    async def get_task(self, step: Step, task_id: int, email: str | None) -> Task:
        """The task, now."""
        try:
            return await self._patience(step.timeout,
                                        lambda: self._client.get_task(task_id, email=email))
        except ApiError as exc:
            raise task_read_failure(exc, task_id) from exc

    async def wait_final(self, step: Step, task: Task, email: str | None, *, since: float,
                         expected: float | None) -> Task:
        """Poll until the task is final. `since`: when it was submitted (wall clock);
        `expected`: how long such tasks took before, if known."""
        deadline = since + step.timeout
        refused = 0  # 403s in a row
        while not task.status_final:
            now = self._clock()
            if now > deadline:
                raise StepFailed("timeout", f"task {task.id} was not done after "
                                 f"{step.timeout:g} s (the step's timeout); it is paid for: "
                                 "run again with --resume later to collect it at no cost",
                                 unresolved=True)
            eta_end = _eta_end(expected, now - since, task.eta_ms)
            wait = self._poll.next_wait(now - since, expected, eta_end)
            await self._sleep(min(wait, max(0.0, deadline - now) + 0.001))
            try:
                task, refused = await self._client.get_task(task.id, email=email), 0
            except ApiError as exc:
                refused = refused + 1 if isinstance(exc, ForbiddenError) else 0
                if not exc.retryable and not 0 < refused < FORBIDDEN_IN_A_ROW:
                    raise task_read_failure(exc, task.id) from exc
                # else the client's own retries are used up: look again at the next poll
        return task

    async def collect(self, step: Step, result: StepResult, task: Task,
                      email: str | None) -> None:
        """Download the clip, extract its first and last frames, hash all three."""
        await self.download(step, result, task, email)
        await self.frames(step, result)

    async def download(self, step: Step, result: StepResult, task: Task,
                       email: str | None) -> None:
        """The clip into the run directory, hashed (`result.outputs["video"]`)."""
        video = self.path_of(step, "video")
        result.outputs["video"] = OutputFile(video, await self._download(step, task, email,
                                                                         video))

    async def frames(self, step: Step, result: StepResult) -> None:
        """The downloaded clip's first and last frames, extracted and hashed."""
        video = result.outputs["video"].path
        first, last = self.path_of(step, "first_frame"), self.path_of(step, "last_frame")
        result.outputs.update(await anyio.to_thread.run_sync(_frames, video, first, last))

    async def _download(self, step: Step, task: Task, email: str | None, dest: Path) -> str:
        """Download at once; the file's SHA-256. A signed URL that expired (403) is
        refreshed by a new GET."""
        backoff = self._retrier.backoff(DOWNLOADS)
        while True:
            if task.video is None:
                raise StepFailed("no_video", f"task {task.id} succeeded without a video")
            try:
                return await self._client.download(task.video.url, dest)
            except (ForbiddenError, NotFoundError, TransportError, ServerError) as exc:
                try:
                    await backoff.wait(exc)
                except RetriesExhausted:
                    raise StepFailed("download", f"task {task.id} is done and paid for, but "
                                     f"its video could not be downloaded ({exc}); run again "
                                     "with --resume to collect it at no cost",
                                     unresolved=True) from exc
                task = await self.get_task(step, task.id, email)

    def path_of(self, step: Step, attr: str) -> Path:
        return self._run_dir / f"{step.id}{OUTPUT_FILES[attr]}"

    def restore_cached(self, step: Step, result: StepResult, key: str) -> bool:
        """Copy the step's cached outputs into the run directory; False if not cached."""
        entry = self._cache.lookup(key)
        if entry is None:
            return False
        for attr, sha in entry.outputs.items():
            dest = self.path_of(step, attr)
            self._cache.restore(sha, dest)
            result.outputs[attr] = OutputFile(dest, sha)
        result.task_id, result.account = entry.task_id, entry.account
        return True

    async def keep(self, result: StepResult, *, task_id: int, account: str | None,
                   credits: int | None, request: Mapping[str, object]) -> None:
        """Store the step's outputs and its cache entry (off the event loop)."""
        assert result.key is not None
        entry = CacheEntry(result.key, task_id, account, credits,
                           {a: o.sha256 for a, o in result.outputs.items()}, request)
        await anyio.to_thread.run_sync(self._cache.store, entry,
                                       {a: o.path for a, o in result.outputs.items()})


def _frames(video: Path, first: Path, last: Path) -> dict[str, OutputFile]:
    """The clip's first and last frames, extracted and hashed in one worker thread."""
    taken = media.extract_frames(video, first, last)
    return {attr: OutputFile(frame.path, frame.sha256)
            for attr, frame in zip(("first_frame", "last_frame"), taken, strict=True)}


def _eta_end(expected: float | None, elapsed: float, eta_ms: int | None) -> float | None:
    """When the service says the task ends (seconds after submit), if that is plausible:
    the ETA's unit is undocumented, so it is trusted only within 4 times what such tasks
    took before, or what this one has taken so far: a task in the long tail, already
    past 4 times the usual, is still told where it ends (another unit is 1,000 times
    off)."""
    if eta_ms is None:
        return None
    end = elapsed + eta_ms / 1000
    return end if expected is None or expected / 4 <= end <= max(expected, elapsed) * 4 \
        else None
