"""The report document (report.json): a RunReport rendered as JSON data.

The reporter never calls the API; it only presents what the run computed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from klingflow.files import write_atomically
from klingflow.plan import PlannedStep
from klingflow.report.model import RunReport
from klingflow.run import StepResult, StepStatus
from klingflow.run.results import FAILED_AT_THE_SERVICE
from klingflow.spec.pipeline import Pipeline

REPORT_FORMAT = 1


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="milliseconds")


def _step_json(result: StepResult, planned: PlannedStep | None,
               run_dir: Path) -> dict[str, Any]:
    outputs = {attr: {"path": str(out.path.relative_to(run_dir)), "sha256": out.sha256}
               for attr, out in result.outputs.items()}  # every output is in the run dir
    return {
        "id": result.step_id, **_request_json(planned), "status": str(result.status),
        "task_id": result.task_id, "account": result.account, "attempts": result.attempts,
        "error_category": result.error_category, "error": result.error,
        "queued_at": _iso(result.queued_at), "ready_at": _iso(result.ready_at),
        "slot_at": _iso(result.slot_at), "submitted_at": _iso(result.submitted_at),
        "final_at": _iso(result.final_at), "finished_at": _iso(result.finished_at),
        "credits": result.credits, "charged_now": result.charged_now, "tasks": result.tasks,
        "served_by": result.served_by, "saved": result.saved, "key": result.key,
        "outputs": outputs,
    }


def _request_json(planned: PlannedStep | None) -> dict[str, Any]:
    """What the step asked for, as the plan has it."""
    if planned is None:
        return {}
    prompt = planned.body.get("prompt")
    return {"kind": planned.kind, "model": planned.model, "mode": planned.mode,
            "duration": planned.duration, "prompt": prompt if isinstance(prompt, str) else None,
            "needs": list(planned.waits_for)}


def _totals(results: Mapping[str, StepResult]) -> dict[str, Any]:
    """Credits as the journal tells them: charged by this invocation and by the whole run
    (every task created counts, whatever became of it), and saved by what served steps."""
    steps = results.values()
    by_account: Counter[str] = Counter()
    saved = dict.fromkeys(("cache", "remote", "lock"), 0)
    for r in steps:
        if r.charged_now:
            by_account[r.account or "(default)"] += r.charged_now
        if r.served_by:
            saved[r.served_by] += r.saved
    charged_now = sum(r.charged_now for r in steps)
    return {
        "steps": len(results),
        "by_status": dict(Counter(str(r.status) for r in steps)),
        "credits": charged_now,
        "credits_charged": charged_now,
        "credits_charged_run": sum(r.credits for r in steps),
        "credits_saved": saved,
        "credits_refundable": sum(r.credits for r in steps if r.status == StepStatus.FAILED
                                  and r.error_category in FAILED_AT_THE_SERVICE),
        "credits_unknown": [r.step_id for r in steps if r.price_unknown],
        "credits_by_account": dict(by_account),
        "tasks_created": sum(r.tasks_now for r in steps),
        "tasks_created_run": sum(r.tasks for r in steps),
    }


def _outputs(report: RunReport) -> dict[str, Any]:
    if report.films:
        return {name: film.to_json(report.run_dir) for name, film in report.films.items()}
    return outputs_without_films(report.plan.pipeline, report.results)


def outputs_without_films(pipeline: Pipeline,
                          results: Mapping[str, StepResult]) -> dict[str, Any]:
    done = {sid for sid, r in results.items() if r.status.done}
    return {o.name: {"concat": list(o.concat),
                     "status": "ready" if set(o.concat) <= done else "incomplete"}
            for o in pipeline.outputs.values()}


def report_document(report: RunReport) -> dict[str, Any]:
    """The report document; valid against `schemas/report.schema.json` (the tests check
    every report they read against it; a run does not pay for checking its own)."""
    planned = {s.id: s for s in report.plan.steps}
    pipeline = report.plan.pipeline
    return {
        "format": REPORT_FORMAT,
        "pipeline": {"name": pipeline.name, "path": str(pipeline.path)},
        "run_id": report.run_id, "run_dir": str(report.run_dir), "backend": report.backend,
        "status": str(report.status), "error": report.error,
        "started_at": _iso(report.started_at), "finished_at": _iso(report.finished_at),
        "steps": [_step_json(r, planned.get(sid), report.run_dir)
                  for sid, r in report.results.items()],
        "outputs": _outputs(report),
        "seams": list(report.seams),
        "totals": _totals(report.results),
    }


def write_report(document: Mapping[str, Any], run_dir: Path) -> Path:
    path = run_dir / "report.json"
    write_atomically(path, json.dumps(document, indent=2) + "\n")
    return path

