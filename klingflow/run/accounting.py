"""What a run was charged, from its journal: every task created counts, whatever became of it.

The journal records each task when it is created, with the plan's price and the
invocation that created it, so a resumed run knows what its earlier invocations paid,
and two runs that shared a run directory never count each other's tasks.
"""

from __future__ import annotations

from collections.abc import Mapping

from klingflow.journal import JournalState
from klingflow.run.results import StepResult


def charge(results: Mapping[str, StepResult], journal: JournalState, invocation: str) -> None:
    """Set each step's charges: `credits` over the whole run, `charged_now` by this
    invocation, `tasks` and `tasks_now` the tasks created; unknown prices are flagged."""
    for result in results.values():
        result.credits = result.charged_now = result.tasks = result.tasks_now = 0
    for charged in journal.tasks.values():
        step = results.get(charged.step)
        if step is None:
            continue
        now = charged.invocation == invocation
        step.tasks += 1
        step.tasks_now += now
        step.price_unknown = step.price_unknown or charged.credits is None
        step.credits += charged.credits or 0
        step.charged_now += (charged.credits or 0) if now else 0
