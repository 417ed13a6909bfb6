"""What earlier invocations of a run directory left behind, as its journal tells it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from klingflow.journal import JournalState, Submission
from klingflow.run.results import OutputFile
from klingflow.run.scheduling import Slots


class Resume:
    """Paid steps, owned tasks, and the slots of tasks that may still be running.

    On resume, a task still running counts against its account's limit from the
    start. Each such slot is held for its step: re-attaching adopts it, any other
    outcome of the step gives it back.
    """

    def __init__(self, prior: JournalState, slots: Slots) -> None:
        self.prior = prior
        self._slots = slots
        self._held: dict[str, str | None] = {}

    def paid(self) -> set[str]:
        """The steps whose task this run directory already paid for."""
        paid = {sid for sid, sub in self.prior.submissions.items() if sub.task_id is not None}
        paid |= {sid for sid, done in self.prior.finished.items()
                 if done.get("event") == "succeeded"}
        return paid

    def owes(self, step_id: str, key: str) -> bool:
        """Whether this run directory paid for a task of this request and has not collected
        it. A resume collects it, even when the cache could serve the step: a paid result
        is not dropped (after `--force`, the cache's copy is what it was paid to replace)."""
        sub = self.prior.submissions.get(step_id)
        return sub is not None and sub.key == key and sub.task_id is not None and \
            step_id not in self.prior.finished

    def owned_tasks(self) -> set[int]:
        """Task ids this run directory already owns: recovery must never adopt them again.
        Every task a step of its journal had counts (charged, re-attached, or taken over
        from another run's in-flight record), also an earlier invocation's that failed."""
        owned = set(self.prior.seen)
        owned |= {int(done["task_id"]) for done in self.prior.finished.values()
                  if done.get("task_id")}
        return owned

    def hold_running_slots(self, step_ids: Iterable[str]) -> None:
        wanted = set(step_ids)
        for step_id, sub in self.prior.submissions.items():
            if step_id in wanted and step_id not in self.prior.finished and \
                    self._slots.knows(sub.account):
                self._slots.take(sub.account)
                self._held[step_id] = sub.account

    def submission(self, step_id: str) -> Submission | None:
        """The earlier POST of a step whose task may still be running (its slot is held)."""
        return self.prior.submissions.get(step_id) if step_id in self._held else None

    def adopt(self, step_id: str) -> None:
        """The held slot is the re-attached task's now: freed when it is final."""
        del self._held[step_id]

    def give_back(self, step_id: str) -> None:
        if step_id in self._held:
            self._slots.release(self._held.pop(step_id))

    def attempts(self, step_id: str) -> int:
        return self.prior.attempts.get(step_id, 0)

    def finished(self, step_id: str, key: str,
                 run_dir: Path) -> tuple[dict[str, Any], dict[str, OutputFile]] | None:
        """The step's earlier success (or cache hit) for this same key, if its files are there."""
        done = self.prior.finished.get(step_id)
        if not done or done.get("event") not in ("succeeded", "cached") or done.get("key") != key:
            return None
        outputs = {a: OutputFile(run_dir / p, s) for a, (p, s) in done["outputs"].items()}
        if not all(o.path.exists() for o in outputs.values()):
            return None
        return done, outputs
