"""What a run produces per step: its status, its result, the events, and how a step fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from klingflow.errors import (
    ApiError,
    KlingflowError,
    NotFoundError,
    PaymentRequiredError,
    UnauthorizedError,
)


class StepStatus(StrEnum):
    """Where a step stands; the values are what reports and journals say."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"  # paid for in this run directory
    CACHED = "cached"  # served by the cache, at no cost
    FAILED = "failed"
    SKIPPED = "skipped"  # a step it needs did not succeed
    NOT_RUN = "not_run"  # the run stopped before submitting it
    INTERRUPTED = "interrupted"  # its task was still running when the run stopped

    @property
    def final(self) -> bool:
        return self is not StepStatus.PENDING

    @property
    def done(self) -> bool:
        """Its outputs exist: steps that need it can go on."""
        return self in (StepStatus.SUCCEEDED, StepStatus.CACHED)


OUTPUT_FILES = {"video": ".mp4", "first_frame": ".first.png", "last_frame": ".last.png"}
"""A step's outputs, by attribute, and the suffix of their files in the run directory."""


@dataclass(frozen=True, slots=True)
class OutputFile:
    path: Path
    sha256: str


@dataclass(slots=True)
class StepResult:
    """What happened to one step. Mutable while the run goes; read-only after."""

    step_id: str
    status: StepStatus = StepStatus.PENDING
    task_id: int | None = None
    account: str | None = None
    attempts: int = 0
    error_category: str | None = None
    error: str | None = None
    queued_at: float | None = None
    ready_at: float | None = None  # every step it needs is done: it waits for a slot
    slot_at: float | None = None  # a slot was granted (the last time, after 429s)
    submitted_at: float | None = None
    final_at: float | None = None  # its task was final and its slot freed; downloading follows
    finished_at: float | None = None
    credits: int = 0  # charged for its tasks in this run (all invocations); known prices
    charged_now: int = 0  # of which by this invocation
    tasks: int = 0  # tasks created for it in this run (all invocations)
    tasks_now: int = 0  # of which by this invocation
    price_unknown: bool = False  # a task of it was created at a price the plan did not know
    served_by: str | None = None  # what served it at no cost: cache, remote or lock
    saved: int = 0  # the credits that saved (its known price)
    key: str | None = None
    outputs: dict[str, OutputFile] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """A change the progress display may show."""

    step_id: str
    status: str
    detail: str = ""


FAILED_AT_THE_SERVICE = frozenset({"moderation", "generation_failed"})
"""Failure categories of a step whose task itself failed: the service may refund it.
(A task that succeeded but could not be downloaded or kept here is not refundable.)"""


class StepFailed(KlingflowError):
    """A step that cannot succeed in this run. `unresolved`: a POST of it may have
    created a task that could not be found yet, or its task exists and is paid for but
    was not collected; a later run must look for it (and collect it) before paying."""

    def __init__(self, category: str, message: str, *, unresolved: bool = False) -> None:
        super().__init__(message)
        self.category = category
        self.unresolved = unresolved


class NotSubmitted(Exception):
    """The run is stopping (fail-fast, Ctrl-C): this step is not sent."""


class RunAborted(KlingflowError):
    """A condition that stops the whole run (401, 402). `unresolved`: it came while
    reading a task that exists, which a later run must still collect."""

    def __init__(self, cause: ApiError, *, unresolved: bool = False) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.exit_code = cause.exit_code
        self.unresolved = unresolved


def step_failure(exc: ApiError) -> KlingflowError:
    """What an API error means for the run: 401 and 402 stop it, anything else fails the step."""
    if isinstance(exc, UnauthorizedError | PaymentRequiredError):
        return RunAborted(exc)
    return StepFailed(exc.category, str(exc))


def task_read_failure(exc: ApiError, task_id: int) -> KlingflowError:
    """What an API error on reading a task that exists (and is paid for) means: 401 and
    402 stop the run; a 404 says it is gone; anything else leaves it for a resume to
    collect, never to pay for again."""
    if isinstance(exc, UnauthorizedError | PaymentRequiredError):
        return RunAborted(exc, unresolved=True)
    if isinstance(exc, NotFoundError):
        return StepFailed("not_found", f"task {task_id} is gone: {exc}")
    return StepFailed(exc.category, f"task {task_id} is paid for, but could not be read "
                      f"({exc}); run again with --resume to collect it at no cost",
                      unresolved=True)
