"""Running a plan: the executor and its parts (scheduling, submission, collection)."""

from __future__ import annotations

from klingflow.run.executor import Executor, RunOptions
from klingflow.run.results import Event, OutputFile, StepFailed, StepResult, StepStatus

__all__ = ["Event", "Executor", "OutputFile", "RunOptions", "StepFailed", "StepResult",
           "StepStatus"]
