"""The run journal (`journal.jsonl` in the run directory) and its replay.

A line is written before each POST (and put on disk before the POST is sent), right
after it, and at each outcome, so a crash at any moment leaves enough to re-attach to
every task that was paid for.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio

from klingflow.errors import JournalError, UsageError
from klingflow.files import read_file

MAX_TAIL = 1 << 20  # a journal line is far shorter than this


@dataclass(slots=True)
class Submission:
    """The last POST the journal knows of for one step."""

    key: str
    reply_ref: str
    account: str | None
    email: str | None
    at_ms: int
    task_id: int | None = None
    invocation: str = ""  # the `klingflow run` that sent it


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
    seen: set[int] = field(default_factory=set)  # every task a step had here, charged or not
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
                                                event["at_ms"],
                                                invocation=event.get("invocation", ""))
            self.attempts[step] = self.attempts.get(step, 0) + 1
            self.finished.pop(step, None)
        elif kind == "submitted":
            # `seen` alone remembers every task the run directory had: one taken over
            # from an in-flight record has no 'submitting' line here, and a later POST of
            # its step replaces the submission.
            self.seen.add(int(event["task_id"]))
            if step in self.submissions:
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
    """An append-only JSON-lines log.

    `write` hands each line to the operating system before it returns, so a killed
    process loses nothing; `await sync()` puts every line written so far on the disk
    (fsync), so a power cut loses nothing either: the executor syncs before each POST.
    Concurrent `sync`s share one fsync (a group commit) in a worker thread, so the
    event loop never waits for the disk. The file is made by the first line written,
    preceded by `header`: a run that records nothing leaves no journal. Every line is
    stamped with `invocation`: which `klingflow run` wrote it.
    """

    def __init__(self, path: Path, *, header: Mapping[str, Any] | None = None,
                 invocation: str = "") -> None:
        self.path = path
        self.invocation = invocation
        self._header = header
        self._handle: IO[str] | None = None
        self._written = 0  # lines handed to the OS
        self._synced = 0  # lines known to be on disk
        self._syncing = anyio.Lock()

    @property
    def started(self) -> bool:
        """Whether this journal has written its first line."""
        return self._handle is not None

    def write(self, event: Mapping[str, Any]) -> None:
        if self._handle is None:
            self.start()
        self._append(event)

    def start(self) -> None:
        """Open the file and write the header, if not done yet."""
        if self._handle is not None:
            return
        self._handle = open_for_append(self.path)
        if self._header is not None:
            self._append(self._header)

    def _append(self, event: Mapping[str, Any]) -> None:
        assert self._handle is not None
        stamp = {"invocation": self.invocation} if self.invocation else {}
        line = json.dumps({**stamp, **event, "time": round(time.time(), 3)}, sort_keys=True)
        self._handle.write(line + "\n")
        self._handle.flush()
        self._written += 1

    async def sync(self) -> None:
        """Every line written so far is on disk when this returns."""
        wanted = self._written
        async with self._syncing:
            if self._synced >= wanted or self._handle is None:
                return
            covered = self._written  # one fsync for every line written until now
            await anyio.to_thread.run_sync(os.fsync, self._handle.fileno())
            self._synced = covered

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    @staticmethod
    def replay(path: Path) -> JournalState:
        """What the journal at `path` says. A last line cut short by a crash is ignored;
        any other line that is not a journal event is a JournalError naming it."""
        state = JournalState()
        for number, event in read_events(path):
            try:
                state.apply(event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise JournalError(path, number, f"not a journal event ({_missing(exc)})") \
                    from None
        return state


def read_events(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, event) for each line of the journal at `path`; none if it is absent."""
    try:
        data = read_file(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise JournalError(path, None, f"cannot read it: {exc.strerror}") from None
    lines = data.split(b"\n")
    for index, raw in enumerate(lines, start=1):
        last = index == len(lines)
        if not raw.strip():
            continue
        try:
            event = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            if last:
                continue  # cut short by a crash, perhaps within a character
            raise JournalError(path, index, "not UTF-8 text") from None
        except ValueError as exc:
            if last:
                continue  # cut short by a crash: never complete, never relied on
            raise JournalError(path, index, f"not JSON ({_json_problem(exc)})") from None
        if not isinstance(event, dict):
            raise JournalError(path, index, "not a journal event (expected a JSON object)")
        yield index, event


def open_for_append(path: Path) -> IO[str]:
    """`path` opened for appending. A last line cut short by a crash is completed when it
    is whole JSON, else cut off, so that the next line starts afresh."""
    try:
        with path.open("a+b") as handle:
            _end_cleanly(handle)
        return path.open("a", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the run journal {path}: {exc.strerror}") from None


def _end_cleanly(handle: IO[bytes]) -> None:
    size = handle.seek(0, os.SEEK_END)
    if size == 0 or _last_byte(handle, size) == b"\n":
        return
    handle.seek(max(0, size - MAX_TAIL))
    tail = handle.read()
    start = tail.rfind(b"\n") + 1
    try:
        json.loads(tail[start:].decode("utf-8"))
    except ValueError:
        handle.truncate(size - (len(tail) - start))
    else:
        handle.write(b"\n")
    handle.flush()
    os.fsync(handle.fileno())


def _last_byte(handle: IO[bytes], size: int) -> bytes:
    handle.seek(size - 1)
    return handle.read(1)


def _json_problem(exc: ValueError) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


def _missing(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}"
    return "a field of the wrong type"
