"""Run directories: RUNS/NAME/RUN-ID, one per run of a pipeline."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from klingflow.errors import UsageError
from klingflow.journal import Journal, JournalState


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 100000:05d}"


def latest_run_dir(runs_root: Path, pipeline_name: str) -> Path | None:
    base = runs_root / pipeline_name
    candidates = sorted(p for p in base.glob("*") if (p / "journal.jsonl").exists()) \
        if base.is_dir() else []
    return candidates[-1] if candidates else None


def open_run_dir(runs_root: Path, pipeline_name: str,
                 resume: str | None) -> tuple[Path, JournalState]:
    """A new run directory, or with `resume` the one to continue and what its journal says.

    `resume` is "latest" or a run directory. "latest" with no earlier run starts a new
    one: a run without a journal never sent a POST (the journal line comes first), so
    nothing can be lost.
    """
    if resume == "latest":
        latest = latest_run_dir(runs_root, pipeline_name)
        if latest is not None:
            return latest, Journal.replay(latest / "journal.jsonl")
    elif resume is not None:
        run_dir = Path(resume)
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"--resume {resume}: a file, not a run directory (expected "
                             "RUN_DIR, the folder that holds journal.jsonl)")
        if not (run_dir / "journal.jsonl").is_file():
            raise UsageError(f"--resume {resume}: no run journal there "
                             "(expected RUN_DIR/journal.jsonl)")
        return run_dir, Journal.replay(run_dir / "journal.jsonl")
    run_dir = runs_root / pipeline_name / new_run_id()
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"--out {runs_root}: cannot make the run directory {run_dir}: "
                         f"{exc.strerror}") from None
    return run_dir, JournalState()


def discard_run_dir(run_dir: Path) -> None:
    """Remove a new run directory whose journal has no line: nothing in it (at most
    outputs copied from the cache) is needed to resume, so a failed start leaves none."""
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # RUNS/NAME too, when it holds no other run
        run_dir.parent.rmdir()
