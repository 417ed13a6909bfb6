"""Run reports and plans: the typed report, and its renderers (text, JSON, HTML).

Compute first, present second: nothing here calls the API or runs anything.
"""

from __future__ import annotations

from klingflow.report.build import report_document, write_report
from klingflow.report.model import RunReport, RunStatus
from klingflow.report.plan_text import format_plan
from klingflow.report.text import format_report

__all__ = ["RunReport", "RunStatus", "format_plan", "format_report", "report_document",
           "write_report"]
