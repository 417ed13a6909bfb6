"""The run journal (`journal.jsonl` in the run directory) and its replay.

It is appended and fsync'd before each POST, right after it, and at each outcome,
so a crash at any moment leaves enough to re-attach to every task that was paid for.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Submission:
    """The last POST the journal knows of for one step."""

    key: str
    reply_ref: str
    account: str | None
    email: str | None
    at_ms: int
    task_id: int | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """A task the run created: paid for, whatever became of it."""

    step: str
    credits: int | None  # the plan's price; None when it was unknown
    invocation: str  # which `klingflow run` created it


@dataclass(slots=True)
class JournalState:
    """What a journal says, replayed: whose run it is, uploads, submissions, the tasks
    created (and so paid for) and finished steps."""

    pipeline: str | None = None  # the first invocation's pipeline name,
    pipeline_path: str | None = None  # its file,
    backend: str | None = None  # and its backend
    uploads: dict[str, str] = field(default_factory=dict)  # sha256 -> asset URL
    submissions: dict[str, Submission] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> outcome event
    attempts: dict[str, int] = field(default_factory=dict)
    tasks: dict[int, Charge] = field(default_factory=dict)  # task id -> its charge
    invocation: str = ""  # the latest invocation's id

    def apply(self, event: Mapping[str, Any]) -> None:
        kind, step = event.get("event"), event.get("step", "")
        if kind == "run":
            self._run(event)
        elif kind == "uploaded":
            self.uploads[event["sha256"]] = event["url"]
        elif kind == "submitting":
            self.submissions[step] = Submission(event["key"], event["reply_ref"],
                                                event.get("account"), event.get("email"),
                                                event["at_ms"])
            self.attempts[step] = self.attempts.get(step, 0) + 1
            self.finished.pop(step, None)
        elif kind == "submitted" and step in self.submissions:
            self.submissions[step].task_id = event["task_id"]
            if not event.get("reattached"):
                self.tasks.setdefault(int(event["task_id"]), Charge(
                    step, event.get("credits"), event.get("invocation", self.invocation)))
        elif kind == "failed" and event.get("unresolved"):
            pass  # the POST's outcome is still unknown: a resume recovers it first
        elif kind in ("succeeded", "failed", "cached"):
            self.finished[step] = dict(event)
            if kind != "succeeded":
                self.submissions.pop(step, None)


    def _run(self, event: Mapping[str, Any]) -> None:
        self.pipeline = self.pipeline or event.get("pipeline")
        self.pipeline_path = self.pipeline_path or event.get("path")
        self.backend = self.backend or event.get("backend")
        self.invocation = str(event.get("invocation") or "")

    def charged(self, invocation: str | None = None) -> list[Charge]:
        """The tasks created by one invocation (all of them with None)."""
        return [c for c in self.tasks.values() if invocation in (None, c.invocation)]


class Journal:
    """An append-only JSON-lines log; every line is on disk before `write` returns."""

    def __init__(self, path: Path, *, invocation: str = "") -> None:
        self.path = path
        self.invocation = invocation  # stamped on every line: which `klingflow run` wrote it
        self._handle = path.open("a", encoding="utf-8")

    def write(self, event: Mapping[str, Any]) -> None:
        stamp = {"invocation": self.invocation} if self.invocation else {}
        line = json.dumps({**event, **stamp, "time": round(time.time(), 3)}, sort_keys=True)
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    @staticmethod
    def replay(path: Path) -> JournalState:
        state = JournalState()
        if not path.exists():
            return state
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a crash
                state.apply(json.loads(line))
        return state
