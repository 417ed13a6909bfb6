"""Run directories: RUNS/NAME/RUN-ID, one per run of a pipeline."""

from __future__ import annotations

import os
import time
from pathlib import Path


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 100000:05d}"


def latest_run_dir(runs_root: Path, pipeline_name: str) -> Path | None:
    base = runs_root / pipeline_name
    candidates = sorted(p for p in base.glob("*") if (p / "journal.jsonl").exists()) \
        if base.is_dir() else []
    return candidates[-1] if candidates else None
