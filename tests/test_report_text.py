"""The summary `run` prints: one line per step, then credits as the journal tells them."""

from __future__ import annotations

from klingflow.report import format_report
from tests.test_report_html import _report


def test_a_step_without_an_error_category_shows_no_brackets() -> None:
    lines = format_report(_report()).splitlines()
    assert "  skipped     after needs bad, which failed" in lines
    assert ("  failed      bad [moderation] HTTP 500: The content you uploaded appears to "
            "violate the community guidelines. (CM_EXT.POther)") in lines


def test_credits_say_what_this_invocation_charged_and_what_the_run_did() -> None:
    totals = {"steps": 4, "by_status": {"succeeded": 4}, "credits": 0,
              "credits_by_account": {}, "tasks_created": 0, "credits_charged": 0,
              "credits_charged_run": 85, "credits_saved": {"cache": 20, "remote": 0, "lock": 35},
              "credits_refundable": 0, "credits_unknown": []}
    summary = format_report(_report(status="succeeded", totals=totals)).splitlines()[-2]
    assert summary.startswith("rocket: succeeded (4 succeeded); 0 credits charged now (85 in "
                              "this run); 20 saved by the cache, 35 saved by the lock; report: ")


def test_charges_for_tasks_that_failed_and_unknown_prices_are_said() -> None:
    totals = {"steps": 4, "by_status": {"failed": 4}, "credits": 40, "credits_by_account": {},
              "tasks_created": 2, "credits_charged": 40, "credits_charged_run": 40,
              "credits_saved": {"cache": 0, "remote": 0, "lock": 0}, "credits_refundable": 20,
              "credits_unknown": ["fx"]}
    summary = format_report(_report(totals=totals)).splitlines()[-2]
    assert ("40 credits charged now; 20 of them for tasks that failed (the service may refund "
            "them); plus unknown prices for fx; report: ") in summary
