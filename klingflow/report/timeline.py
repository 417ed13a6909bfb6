"""The run as a Gantt chart per account: queued, waiting for a slot, submitting,
running, downloading.

Each step's row is cut at the moments the report records: `queued_at` (the run
started it), `ready_at` (every step it needs was done), `slot_at` (its account
had room), `submitted_at` (the task existed), `final_at` (the task was final and
its slot free) and `finished_at`. Reports written before the later marks existed
show what they have.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

_MARKS = (("queued", "queued_at"), ("waiting", "ready_at"), ("submitting", "slot_at"),
          ("running", "submitted_at"), ("collecting", "final_at"))
_LABELS = {"queued": "waiting for the steps it needs", "waiting": "waiting for a slot",
           "submitting": "uploading and submitting", "running": "generating",
           "collecting": "downloading, frames"}
_IN_FLIGHT = ("submitting", "running")  # the phases that hold an account's slot
_TICK_STEPS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)
DEFAULT_ACCOUNT = "(the default account)"  # a pipeline without `accounts`
NOT_RUN = "(never given a slot)"


@dataclass(frozen=True, slots=True)
class Span:
    phase: str  # queued | waiting | submitting | running | collecting
    start: float
    end: float


def seconds(value: str | None) -> float | None:
    """An ISO 8601 time of the report as a POSIX timestamp."""
    return dt.datetime.fromisoformat(value).timestamp() if value else None


def spans(step: Mapping[str, Any]) -> list[Span]:
    """The phases of one step, in order; none for a step that never finished."""
    finished = seconds(step.get("finished_at"))
    if finished is None:
        return []
    marks = [(phase, t) for phase, key in _MARKS if (t := seconds(step.get(key))) is not None]
    ends = [t for _, t in marks[1:]] + [finished]
    found = [Span(phase, start, max(start, end)) for (phase, start), end in zip(marks, ends,
                                                                                strict=True)]
    if found and found[-1].phase == "waiting":  # no slot was needed: restored or skipped
        found[-1] = Span("running", found[-1].start, found[-1].end)
    return found


def render_timeline(steps: Sequence[Mapping[str, Any]], run_start: float | None,
                    run_end: float | None) -> str:
    """The Gantt section: a legend, a time axis, then one lane per account."""
    rows = [(step, spans(step)) for step in steps]
    times = [t for _, found in rows for s in found for t in (s.start, s.end)]
    start = min([*times, *([run_start] if run_start else [])], default=0.0)
    end = max([*times, *([run_end] if run_end else [])], default=start)
    scale = _Scale(start, max(end - start, 1e-3))
    lanes: dict[str, list[tuple[Mapping[str, Any], list[Span]]]] = defaultdict(list)
    for step, found in rows:
        lanes[_lane_name(step)].append((step, found))
    order = sorted(lanes, key=lambda name: (name == NOT_RUN, name))
    body = "".join(_lane(name, lanes[name], scale) for name in order)
    return f'<div class="gantt">{_legend()}{_axis(scale)}{body}</div>'


def _lane_name(step: Mapping[str, Any]) -> str:
    if step.get("account"):
        return str(step["account"])
    ran = step.get("slot_at") or step.get("submitted_at")
    return DEFAULT_ACCOUNT if ran or step.get("status") == "cached" else NOT_RUN


@dataclass(frozen=True, slots=True)
class _Scale:
    start: float
    length: float

    def percent(self, moment: float) -> float:
        return (moment - self.start) / self.length * 100


def _legend() -> str:
    colours = {"queued": "var(--queue)", "waiting": "var(--wait)",
               "submitting": "var(--submit)", "running": "var(--run)",
               "collecting": "var(--collect)"}
    items = "".join(f'<span style="--c:{colours[p]}">{escape(_LABELS[p])}</span>'
                    for p in colours)
    extra = ('<span style="--c:var(--ok)">restored from the cache</span>'
             '<span style="--c:var(--fail)">failed</span>')
    return f'<div class="legend">{items}{extra}</div>'


def _axis(scale: _Scale) -> str:
    step = next((s for s in _TICK_STEPS if scale.length / s <= 8), _TICK_STEPS[-1])
    ticks, moment = [], 0.0
    while moment <= scale.length + 1e-9:
        ticks.append(f'<span style="left:{moment / scale.length * 100:.2f}%">'
                     f'{_clock(moment)}</span>')
        moment += step
    return f'<div class="axis"><span></span><div class="ticks">{"".join(ticks)}</div></div>'


def _clock(moment: float) -> str:
    if moment < 60:
        return f"{moment:g} s"
    minutes, rest = divmod(round(moment), 60)
    return f"{minutes}:{rest:02d}"


def _lane(account: str, lane: list[tuple[Mapping[str, Any], list[Span]]],
          scale: _Scale) -> str:
    lane = sorted(lane, key=lambda row: row[1][0].start if row[1] else float("inf"))
    waited = sum(s.end - s.start for _, found in lane for s in found if s.phase == "waiting")
    peak = peak_overlap((s.start, s.end) for _, found in lane for s in found
                        if s.phase in _IN_FLIGHT and s.end > s.start)
    count = len(lane)
    head = (f'<h3>{escape(account)} <small>{count} step{"s" if count != 1 else ""}; '
            f'at most {peak} in flight; {waited:.1f} s waiting for a slot in all</small></h3>')
    return f'<div class="lane">{head}{"".join(_row(step, found, scale) for step, found in lane)}</div>'


def _row(step: Mapping[str, Any], found: list[Span], scale: _Scale) -> str:
    sid = escape(str(step["id"]))
    status = str(step.get("status", ""))
    ending = status if status in ("failed", "cached") else ""
    bars = "".join(_bar(span, ending if i == len(found) - 1 else "", scale)
                   for i, span in enumerate(found))
    return (f'<div class="row"><a href="#step-{sid}" title="{sid}: {escape(status)}">{sid}</a>'
            f'<div class="track">{bars}</div></div>')


def _bar(span: Span, ending: str, scale: _Scale) -> str:
    """One phase; `ending` (failed, cached) colours the step's last phase."""
    left = scale.percent(span.start)
    width = max(scale.percent(span.end) - left, 0.15)
    extra = f" {ending}" if ending else ""
    label = f"{_LABELS[span.phase]}: {span.end - span.start:.1f} s"
    return (f'<i class="{span.phase}{extra}" style="left:{left:.3f}%;width:{width:.3f}%" '
            f'title="{escape(label)}"></i>')


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals [start, end) open at one moment."""
    events = sorted(event for start, end in intervals for event in ((start, 1), (end, -1)))
    peak = current = 0
    for _, delta in events:  # an end sorts before a start at the same moment
        current += delta
        peak = max(peak, current)
    return peak
