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


@dataclass(slots=True)
class JournalState:
    """What a journal says, replayed: uploads, submissions and finished steps."""

    uploads: dict[str, str] = field(default_factory=dict)  # sha256 -> asset URL
    submissions: dict[str, Submission] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> outcome event
    attempts: dict[str, int] = field(default_factory=dict)

    def apply(self, event: Mapping[str, Any]) -> None:
        kind, step = event.get("event"), event.get("step", "")
        if kind == "uploaded":
            self.uploads[event["sha256"]] = event["url"]
        elif kind == "submitting":
            self.submissions[step] = Submission(event["key"], event["reply_ref"],
                                                event.get("account"), event.get("email"),
                                                event["at_ms"])
            self.attempts[step] = self.attempts.get(step, 0) + 1
            self.finished.pop(step, None)
        elif kind == "submitted" and step in self.submissions:
            self.submissions[step].task_id = event["task_id"]
        elif kind == "failed" and event.get("unresolved"):
            pass  # the POST's outcome is still unknown: a resume recovers it first
        elif kind in ("succeeded", "failed", "cached"):
            self.finished[step] = dict(event)
            if kind != "succeeded":
                self.submissions.pop(step, None)


class Journal:
    """An append-only JSON-lines log; every line is on disk before `write` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("a", encoding="utf-8")

    def write(self, event: Mapping[str, Any]) -> None:
        line = json.dumps({**event, "time": round(time.time(), 3)}, sort_keys=True)
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
