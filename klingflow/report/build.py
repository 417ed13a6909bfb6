"""The run report: built from the executor's results; written as report.json.

The reporter never calls the API; it only presents what the executor returned.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from klingflow.files import write_atomically
from klingflow.report.model import RunReport
from klingflow.run import StepResult, StepStatus

REPORT_FORMAT = 1


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="milliseconds")


def _step_json(result: StepResult, run_dir: Path) -> dict[str, Any]:
    outputs = {attr: {"path": str(out.path.relative_to(run_dir)), "sha256": out.sha256}
               for attr, out in result.outputs.items()}  # every output is in the run dir
    return {
        "id": result.step_id, "status": str(result.status), "task_id": result.task_id,
        "account": result.account, "attempts": result.attempts,
        "error_category": result.error_category, "error": result.error,
        "queued_at": _iso(result.queued_at), "submitted_at": _iso(result.submitted_at),
        "finished_at": _iso(result.finished_at), "credits": result.credits,
        "key": result.key, "outputs": outputs,
    }


def _totals(results: Mapping[str, StepResult]) -> dict[str, Any]:
    by_account: Counter[str] = Counter()
    for r in results.values():
        if r.credits:
            by_account[r.account or "(default)"] += r.credits
    return {
        "steps": len(results),
        "by_status": dict(Counter(r.status for r in results.values())),
        "credits": sum(r.credits for r in results.values()),
        "credits_by_account": dict(by_account),
        "tasks_created": sum(1 for r in results.values()
                             if r.task_id is not None and r.status != StepStatus.CACHED),
    }


def report_document(report: RunReport) -> dict[str, Any]:
    """The report document; valid against `schemas/report.schema.json` (the tests check
    every report they read against it; a run does not pay for checking its own)."""
    results = report.results
    done = {sid for sid, r in results.items() if r.status.done}
    document = {
        "format": REPORT_FORMAT,
        "pipeline": {"name": report.pipeline.name, "path": str(report.pipeline.path)},
        "run_id": report.run_id, "run_dir": str(report.run_dir), "backend": report.backend,
        "status": str(report.status), "error": report.error,
        "started_at": _iso(report.started_at), "finished_at": _iso(report.finished_at),
        "steps": [_step_json(r, report.run_dir) for r in results.values()],
        "outputs": {o.name: {"concat": list(o.concat),
                             "status": "ready" if set(o.concat) <= done else "incomplete"}
                    for o in report.pipeline.outputs.values()},
        "totals": _totals(results),
    }
    return document


def write_report(document: Mapping[str, Any], run_dir: Path) -> Path:
    path = run_dir / "report.json"
    write_atomically(path, json.dumps(document, indent=2) + "\n")
    return path
