"""Run directories: RUNS/NAME/RUN-ID, one per run of a pipeline, continued with --resume."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from klingflow.errors import UsageError
from klingflow.files import real_path
from klingflow.journal import Journal, JournalState


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 100000:05d}"


def latest_run_dir(runs_root: Path, owner: Owner) -> Path | None:
    """The newest run directory under RUNS/NAME whose journal is this pipeline file's on
    this backend: two files may share a `name:`, and a simulated run and a real one sit
    side by side."""
    base = runs_root / owner.name
    candidates = sorted(p for p in base.glob("*") if (p / "journal.jsonl").exists()) \
        if base.is_dir() else []
    for path in reversed(candidates):
        if _mismatch(Journal.replay(path / "journal.jsonl"), owner) is None:
            return path
    return None


@dataclass(slots=True)
class RunDirectory:
    """A run directory this invocation holds (no other invocation may use it meanwhile),
    and what its journal said when it was opened."""

    path: Path
    prior: JournalState
    _held: int  # the directory, opened and flock'ed: released with it, or when we die
    new: bool = False  # made by this invocation (not resumed)

    def close(self) -> None:
        if self._held >= 0:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            os.close(self._held)
            self._held = -1


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
        path = latest_run_dir(runs_root, owner)
    elif resume is not None:
        path = Path(resume)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--resume {resume}: a file, not a run directory (expected "
                             "RUN_DIR, the folder that holds journal.jsonl)")
        if not (path / "journal.jsonl").is_file():
            raise UsageError(f"--resume {resume}: no run journal there "
                             "(expected RUN_DIR/journal.jsonl)")
    else:
        path = None
    if path is None:
        path = _new_run_dir(runs_root / owner.name)
        return RunDirectory(path, JournalState(), _hold(path, resume), new=True)
    held = _hold(path, resume)
    prior = Journal.replay(path / "journal.jsonl")
    _check_owner(path, prior, owner)
    return RunDirectory(path, prior, held)


def _new_run_dir(parent: Path) -> Path:
    path = parent / new_run_id()
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"--out {parent.parent}: cannot make the run directory {path}: "
                         f"{exc.strerror}") from None
    return path


def _hold(path: Path, resume: str | None) -> int:
    """The run directory itself, locked for this invocation (no file is written)."""
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise UsageError(f"--resume {resume}: {path} is in use by another klingflow run; "
                         "wait for it to finish, or resume when it has stopped") from None
    return handle


def _check_owner(path: Path, prior: JournalState, owner: Owner) -> None:
    found = _mismatch(prior, owner)
    if found is not None:
        what, recorded, ours = found
        raise UsageError(f"--resume {path}: that run directory belongs to {what} "
                         f"{recorded}, not {ours}; nothing was sent. Resume it with its "
                         "own pipeline, or start a new run without --resume")


def _mismatch(prior: JournalState, owner: Owner) -> tuple[str, str, str] | None:
    """(what, the journal's, ours) of the first of pipeline, file and backend that differ."""
    mine = (owner.name, str(real_path(owner.path)), owner.backend)
    theirs = (prior.pipeline, prior.pipeline_path, prior.backend)
    for what, ours, recorded in zip(("pipeline", "pipeline file", "backend"), mine, theirs,
                                    strict=True):
        if recorded is not None and recorded != ours:
            return what, recorded, ours
    return None


def discard_run_dir(run_dir: Path) -> None:
    """Remove a new run directory whose journal has no line: nothing in it (at most
    outputs copied from the cache) is needed to resume, so a failed start leaves none."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # RUNS/NAME too, when it holds no other run
        run_dir.parent.rmdir()
