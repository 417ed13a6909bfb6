"""Plans as text for a terminal: one row per step with its body, then the totals."""

from __future__ import annotations

import json
from collections.abc import Mapping

from klingflow.plan import Plan, PlannedStep

_COLUMNS = ("step", "kind", "model", "mode", "duration", "audio", "account", "waits for",
            "credits")


def format_plan(plan: Plan) -> str:
    """The plan as readable text: one row per step with its body, then the totals."""
    rows = [_row(s) for s in plan.steps]
    columns = _COLUMNS + (("cache",) if plan.steps[0].cache else ())
    rows = [r + ((_cache_text(s),) if s.cache else ()) for r, s in zip(rows, plan.steps,
                                                                       strict=True)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [_headline(plan), "", _line(columns, widths)]
    for step, row in zip(plan.steps, rows, strict=True):
        lines.append(_line(row, widths))
        lines.append(f"    POST {step.endpoint} {_compact(step.body)}")
    lines += ["", "totals:", *_total_lines(plan)]
    return "\n".join(lines)


def _headline(plan: Plan) -> str:
    count = len(plan.steps)
    return f"plan of {plan.name} ({plan.path}): {count} step{'s' if count != 1 else ''}"


def _row(step: PlannedStep) -> tuple[str, ...]:
    return (step.id, step.kind, step.model, step.mode, f"{step.duration} s",
            "yes" if step.audio else "no", _account_text(step.account, step.email),
            ", ".join(step.waits_for) or "-", _credits_text(step))


def _cache_text(step: PlannedStep) -> str:
    return f"{step.cache} ({step.reason})" if step.reason else str(step.cache)


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _account_text(alias: str | None, email: str | None) -> str:
    if alias is None:
        return "(any account)"
    return f"{alias} <{email}>" if email else alias


def _credits_text(step: PlannedStep) -> str:
    if step.credits is None:
        return f"unknown ({step.price_note})"
    return f"{step.credits}" + (" (pipeline price)" if step.price_source == "pipeline" else "")


def _compact(body: Mapping[str, object]) -> str:
    return json.dumps(dict(body), ensure_ascii=False)


def _total_lines(plan: Plan) -> list[str]:
    lines = [f"  {_account_text(a.account, a.email)}: {_cost_text(a.steps, a.credits, a.unknown)}"
             for a in plan.accounts]
    running = len(plan.steps) - len(plan.cached) - len(plan.restored) - len(plan.reattached)
    free = [f"{len(plan.cached)} cached"] if plan.cached else []
    free += [f"{len(plan.restored)} restored"] if plan.restored else []
    free += [f"{len(plan.reattached)} re-attached"] if plan.reattached else []
    at_no_cost = f" ({', '.join(free)}, at no cost)" if free else ""
    lines.append(f"  overall: {_cost_text(running, plan.credits, plan.unknown)}{at_no_cost}")
    if plan.budget is not None:
        lines.append(f"  budget: {plan.budget} credits, {plan.budget - plan.credits} left "
                     "after the known cost")
    if plan.budget is not None and plan.unknown:
        lines.append(f"  warning: under a budget the run refuses a step of unknown price "
                     f"({', '.join(plan.unknown)}); add its price under prices:")
    return lines


def _cost_text(steps: int, credits: int, unknown: tuple[str, ...]) -> str:
    text = f"{steps} step{'s' if steps != 1 else ''}, {credits} credits"
    if unknown:
        text += f" known + unknown for {', '.join(unknown)}"
    return text

