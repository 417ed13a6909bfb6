"""Renderers of plans and run reports (text, JSON, HTML), and the report builder.

Compute first, present second: nothing here calls the API or runs anything.
"""

from __future__ import annotations

from klingflow.report.build import RunInfo, build_report, write_report
from klingflow.report.plan_text import format_plan
from klingflow.report.text import format_report

__all__ = ["RunInfo", "build_report", "format_plan", "format_report", "write_report"]
