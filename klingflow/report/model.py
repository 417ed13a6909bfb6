"""The typed result of a run: `RunReport`, whose status gives the exit code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from klingflow.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_STEP_FAILED
from klingflow.outputs import FilmResult
from klingflow.plan import Plan
from klingflow.run.results import StepResult


class RunStatus(StrEnum):
    SUCCEEDED = "succeeded"  # every step succeeded or was served by the cache
    FAILED = "failed"  # a step failed, was skipped or was not run
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM; continue with --resume
    ABORTED = "aborted"  # the service refused the whole run (401, 402)

    @property
    def exit_code(self) -> int:
        return {RunStatus.SUCCEEDED: EXIT_OK, RunStatus.FAILED: EXIT_STEP_FAILED,
                RunStatus.INTERRUPTED: EXIT_INTERRUPTED, RunStatus.ABORTED: EXIT_INVALID}[self]


@dataclass(frozen=True, slots=True)
class RunReport:
    """One invocation of a run: where it ran, how it ended, each step's result, the films
    made of them and the seams measured between chained clips."""

    plan: Plan
    run_id: str
    run_dir: Path
    backend: str
    status: RunStatus
    error: str | None
    started_at: float
    finished_at: float
    results: Mapping[str, StepResult]
    films: Mapping[str, FilmResult] = field(default_factory=dict)
    seams: Sequence[Mapping[str, object]] = ()

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    def to_json(self) -> dict[str, Any]:
        """The report document (report.json), valid against the report schema."""
        from klingflow.report.build import report_document

        return report_document(self)
