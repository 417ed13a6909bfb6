"""The run report: built from the executor's results; written as report.json.

The reporter never calls the API; it only presents what the executor returned.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from klingflow.executor import CACHED, SUCCEEDED, StepResult
from klingflow.outputs import INCOMPLETE, FilmResult
from klingflow.outputs import INTERRUPTED as NOT_MADE_INTERRUPTED
from klingflow.plan import Plan, PlannedStep
from klingflow.schema_files import load_schema
from klingflow.seams import find_seams, measure_seams
from klingflow.spec.pipeline import Pipeline

REPORT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    run_dir: Path
    backend: str
    status: str  # succeeded | failed | interrupted | aborted
    error: str | None
    started_at: float
    finished_at: float


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="milliseconds")


def _step_json(result: StepResult, planned: PlannedStep | None,
               run_dir: Path) -> dict[str, Any]:
    outputs = {attr: {"path": str(out.path.relative_to(run_dir)), "sha256": out.sha256}
               for attr, out in result.outputs.items()}  # every output is in the run dir
    return {
        "id": result.step_id, **_request_json(planned), "status": result.status,
        "task_id": result.task_id, "account": result.account, "attempts": result.attempts,
        "error_category": result.error_category, "error": result.error,
        "queued_at": _iso(result.queued_at), "ready_at": _iso(result.ready_at),
        "slot_at": _iso(result.slot_at), "submitted_at": _iso(result.submitted_at),
        "final_at": _iso(result.final_at), "finished_at": _iso(result.finished_at), "credits": result.credits,
        "key": result.key, "outputs": outputs,
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
                             if r.task_id is not None and r.status != CACHED),
    }


def build_report(pipeline: Pipeline, results: Mapping[str, StepResult], info: RunInfo, *,
                 plan: Plan | None = None, films: Mapping[str, FilmResult] | None = None,
                 seam_memo: Path | None = None) -> dict[str, Any]:
    """The report document; valid against `schemas/report.schema.json`.

    `plan` adds each step's request (kind, model, mode, duration, prompt, needs);
    `films` are the outputs as `klingflow.outputs.make_outputs` made them. A run
    whose steps all succeeded but whose film could not be made has failed. Seams are
    measured from the frames, each difference kept in `seam_memo` for the next run.
    """
    planned = {s.id: s for s in plan.steps} if plan is not None else {}
    outputs = {name: film.to_json(info.run_dir) for name, film in (films or {}).items()} \
        or _outputs_without_films(pipeline, results)
    status, error = _status(info, outputs, films or {})
    report = {
        "format": REPORT_FORMAT,
        "pipeline": {"name": pipeline.name, "path": str(pipeline.path)},
        "run_id": info.run_id, "run_dir": str(info.run_dir), "backend": info.backend,
        "status": status, "error": error,
        "started_at": _iso(info.started_at), "finished_at": _iso(info.finished_at),
        "steps": [_step_json(r, planned.get(sid), info.run_dir) for sid, r in results.items()],
        "outputs": outputs,
        "seams": measure_seams(find_seams(pipeline), results, memo=seam_memo),
        "totals": _totals(results),
    }
    jsonschema.validate(report, load_schema("report"))
    return report


def _outputs_without_films(pipeline: Pipeline,
                           results: Mapping[str, StepResult]) -> dict[str, Any]:
    done = {sid for sid, r in results.items() if r.status in (SUCCEEDED, CACHED)}
    return {o.name: {"concat": list(o.concat),
                     "status": "ready" if set(o.concat) <= done else "incomplete"}
            for o in pipeline.outputs.values()}


def _status(info: RunInfo, outputs: Mapping[str, Mapping[str, Any]],
            films: Mapping[str, FilmResult]) -> tuple[str, str | None]:
    """The run's status: `succeeded` only when every film was made too (Ctrl-C while
    films were made: `interrupted`)."""
    if info.status != "succeeded":
        return info.status, info.error
    if any(film.error == NOT_MADE_INTERRUPTED for film in films.values()):
        return "interrupted", NOT_MADE_INTERRUPTED
    broken = [(name, o["error"]) for name, o in outputs.items()
              if o["status"] == INCOMPLETE and o.get("error")]
    if not broken:
        return info.status, info.error
    return "failed", "; ".join(f"output {name}: {error}" for name, error in broken)


def write_report(report: Mapping[str, Any], run_dir: Path) -> Path:
    path = run_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
