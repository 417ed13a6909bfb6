"""Reports as text for a terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PAGE_NAME = "report.html"


def format_report(report: Mapping[str, Any]) -> str:
    """A short human summary: one line per step, the totals, then the films and the page."""
    lines = []
    for step in report["steps"]:
        lines.append(_step_line(step))
    totals = report["totals"]
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(totals["by_status"].items()))
    lines.append(f"{report['pipeline']['name']}: {report['status']} ({counts}); "
                 f"{credits_text(totals)}; report: {report['run_dir']}/report.json")
    lines.append(films_line(report))
    return "\n".join(lines)


def _step_line(step: Mapping[str, Any]) -> str:
    category = f" [{step['error_category']}]" if step.get("error_category") else ""
    detail = f"{category} {step['error']}" if step.get("error") else ""
    task = f" task {step['task_id']}" if step["task_id"] is not None else ""
    served = f" (from the {step['served_by']})" if step.get("served_by") else ""
    return f"  {step['status']:<11} {step['id']}{task}{served}{detail}"


def credits_text(totals: Mapping[str, Any]) -> str:
    """`20 credits charged now (60 in this run); 40 saved by the cache`."""
    now = totals.get("credits_charged", totals["credits"])
    run = totals.get("credits_charged_run", now)
    text = f"{now} credits charged now" + (f" ({run} in this run)" if run != now else "")
    saved = {k: v for k, v in (totals.get("credits_saved") or {}).items() if v}
    if saved:
        text += "; " + ", ".join(f"{v} saved by the {k}" for k, v in saved.items())
    if totals.get("credits_refundable"):
        text += (f"; {totals['credits_refundable']} of them for tasks that failed (the "
                 "service may refund them)")
    if totals.get("credits_unknown"):
        text += f"; plus unknown prices for {', '.join(totals['credits_unknown'])}"
    return text


def films_line(report: Mapping[str, Any]) -> str:
    """`film: RUN_DIR/outputs/film.mp4 (15.0 s)   review: RUN_DIR/report.html`."""
    statuses = {s["id"]: s["status"] for s in report["steps"]}
    films = [_film_text(name, output, report["run_dir"], statuses)
             for name, output in report.get("outputs", {}).items()]
    return "   ".join([*films, f"review: {report['run_dir']}/{PAGE_NAME}"])


def _film_text(name: str, output: Mapping[str, Any], run_dir: str,
               statuses: Mapping[str, str]) -> str:
    if output["status"] == "ready" and output.get("path"):
        duration = output.get("duration")
        length = f" ({duration:.1f} s)" if duration is not None else ""
        return f"{name}: {run_dir}/{output['path']}{length}"
    missing = output.get("missing") or []
    if missing:
        why = ", ".join(f"{sid} ({statuses.get(sid, 'missing').replace('_', ' ')})"
                        for sid in missing)
        return f"{name}: incomplete, missing {why}"
    return f"{name}: incomplete, {output.get('error') or 'not made'}"
