"""Run directories: RUNS/NAME/RUN-ID, one per run of a pipeline, continued with --resume."""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from klingflow.errors import UsageError
from klingflow.journal import Journal, JournalState

LOCK_NAME = ".in-use"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 100000:05d}"


def latest_run_dir(runs_root: Path, pipeline_name: str) -> Path | None:
    base = runs_root / pipeline_name
    candidates = sorted(p for p in base.glob("*") if (p / "journal.jsonl").exists()) \
        if base.is_dir() else []
    return candidates[-1] if candidates else None


@dataclass(slots=True)
class RunDirectory:
    """A run directory this invocation holds (no other invocation may use it meanwhile),
    and what its journal said when it was opened."""

    path: Path
    prior: JournalState
    _held: IO[str]

    def close(self) -> None:
        fcntl.flock(self._held, fcntl.LOCK_UN)
        self._held.close()


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose runs a run directory may hold: one pipeline file on one backend."""

    name: str
    path: Path
    backend: str


def open_run_dir(runs_root: Path, owner: Owner, resume: str | None) -> RunDirectory:
    """A new run directory, or with `resume` the one to continue.

    `resume` is "latest" or a run directory. "latest" with no earlier run starts a new
    one: a run without a journal never sent a POST (the journal line comes first), so
    nothing can be lost. A run directory of another pipeline, another file or another
    backend is refused before anything is sent, and so is one in use by another run.
    """
    if resume == "latest":
        path = latest_run_dir(runs_root, owner.name)
    elif resume is not None:
        path = Path(resume)
        if not (path / "journal.jsonl").is_file():
            raise UsageError(f"--resume {resume}: no run journal there "
                             "(expected RUN_DIR/journal.jsonl)")
    else:
        path = None
    if path is None:
        path = runs_root / owner.name / new_run_id()
        path.mkdir(parents=True)
        return RunDirectory(path, JournalState(), _hold(path, resume))
    held = _hold(path, resume)
    prior = Journal.replay(path / "journal.jsonl")
    _check_owner(path, prior, owner)
    return RunDirectory(path, prior, held)


def _hold(path: Path, resume: str | None) -> IO[str]:
    handle = (path / LOCK_NAME).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"--resume {resume}: {path} is in use by another klingflow run; "
                         "wait for it to finish, or resume when it has stopped") from None
    return handle


def _check_owner(path: Path, prior: JournalState, owner: Owner) -> None:
    mine = (owner.name, str(owner.path.resolve()), owner.backend)
    theirs = (prior.pipeline, prior.pipeline_path, prior.backend)
    for what, ours, recorded in zip(("pipeline", "pipeline file", "backend"), mine, theirs,
                                    strict=True):
        if recorded is not None and recorded != ours:
            raise UsageError(f"--resume {path}: that run directory belongs to {what} "
                             f"{recorded}, not {ours}; nothing was sent. Resume it with its "
                             "own pipeline, or start a new run without --resume")
