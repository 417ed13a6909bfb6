"""Finished runs read back: the latest run directory, its report.json checked.

`klingflow report` re-renders a run from these alone; nothing is run or fetched.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema

from klingflow.errors import UsageError
from klingflow.files import read_text_file
from klingflow.schema_files import load_schema

REPORT_NAME = "report.json"


def find_run_dir(runs_root: Path) -> Path:
    """The newest run directory with a report under `runs_root` (RUNS/NAME/RUN-ID), of
    any pipeline. Run ids start with their UTC start time, so they sort by it."""
    found = [p.parent for p in runs_root.glob(f"*/*/{REPORT_NAME}")] if runs_root.is_dir() else []
    if not found:
        raise UsageError(f"no run found under {runs_root}/ (expected {runs_root}/NAME/RUN-ID/"
                         f"{REPORT_NAME}): run a pipeline first, or name a run directory")
    return max(found, key=lambda d: (d.name, (d / REPORT_NAME).stat().st_mtime))


def unreported_newer(runs_root: Path, run_dir: Path) -> Path | None:
    """The newest run directory under `runs_root` started after `run_dir` that has a
    journal but no report: a run still running, or killed before it ended."""
    newer = [p.parent for p in runs_root.glob("*/*/journal.jsonl")
             if p.parent.name > run_dir.name and not (p.parent / REPORT_NAME).exists()]
    return max(newer, key=lambda d: d.name) if newer else None


def load_report(run_dir: Path) -> dict[str, Any]:
    """The run's report.json, checked against the report schema."""
    path = run_dir / REPORT_NAME
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    try:
        text = read_text_file(path)
    except FileNotFoundError:
        raise UsageError(f"{run_dir}: no {REPORT_NAME} there (a run writes it when it ends)") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read: "
                         f"{getattr(exc, 'strerror', None) or exc}") from exc
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc
    _check(report, path)
    return dict(report)


def _check(report: Any, path: Path) -> None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(load_schema("report")).iter_errors(report))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise UsageError(f"{path}: not a klingflow run report: {where.lstrip('.') or '<document>'}"
                         f": {error.message}")
    for where, value in _times(report):
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(f"{path}: not a klingflow run report: {where}: {value!r} is "
                             "not an ISO 8601 time") from None


def _times(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Every time the report gives (`..._at`), where it is: the page draws them."""
    found = [(k, v) for k, v in report.items() if k.endswith("_at") and isinstance(v, str)]
    for i, step in enumerate(report.get("steps") or []):
        found += [(f"steps[{i}].{k}", v) for k, v in step.items()
                  if k.endswith("_at") and isinstance(v, str)]
    return found
