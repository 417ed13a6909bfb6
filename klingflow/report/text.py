"""Reports as text for a terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_report(report: Mapping[str, Any]) -> str:
    """A short human summary: one line per step that did not simply succeed, then totals."""
    lines = []
    for step in report["steps"]:
        detail = f" [{step['error_category']}] {step['error']}" if step["error"] else ""
        task = f" task {step['task_id']}" if step["task_id"] is not None else ""
        lines.append(f"  {step['status']:<11} {step['id']}{task}{detail}")
    totals = report["totals"]
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(totals["by_status"].items()))
    lines.append(f"{report['pipeline']['name']}: {report['status']} ({counts}); "
                 f"{totals['credits']} credits spent; report: {report['run_dir']}/report.json")
    return "\n".join(lines)
