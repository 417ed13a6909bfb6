"""The review page: one self-contained HTML file beside a run's report.json.

`render_html` is a pure function of the report document and the run directory (to
link clips and frames by relative path and to notice a file that is not there). The
page loads nothing from the network: its style and script are inline, its media are
the run's own files. Thumbnails load lazily, so pages of thousands of steps stay usable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from klingflow.files import write_atomically
from klingflow.report.html_assets import SCRIPT, STYLE
from klingflow.report.text import PAGE_NAME
from klingflow.report.timeline import render_timeline, seconds, spans
from klingflow.seams import SEAM_WARNING

PROBLEMS = ("failed", "skipped", "not_run", "interrupted")
_FRAME_NAMES = {"first_frame": "first frame", "last_frame": "last frame"}


def write_html(report: Mapping[str, Any], run_dir: Path) -> Path:
    """Render the page into `run_dir/report.html` (replaced whole) and return its path."""
    path = run_dir / PAGE_NAME
    write_atomically(path, render_html(report, run_dir))
    return path


def render_html(report: Mapping[str, Any], run_dir: Path) -> str:
    """The review page of a run, from its report document and its files."""
    page = _Page(run_dir, {s["id"]: s for s in report["steps"]})
    title = f"{report['pipeline']['name']} · {report['status']} · klingflow"
    sections = [
        _section("films", "Films", page.films(report.get("outputs", {}))),
        _section("seams", "Seams", page.seams(report.get("seams"))),
        _section("timeline", "Timeline", render_timeline(
            report["steps"], seconds(report.get("started_at")), seconds(report.get("finished_at")))),
        _section("steps", f"Steps ({len(report['steps'])})", page.cards()),
    ]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{_header(report)}<main>{''.join(sections)}"
            f"{_footer(page)}</main><script>{SCRIPT}</script></body></html>\n")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


# ---- the header -------------------------------------------------------------------


def _header(report: Mapping[str, Any]) -> str:
    pipeline, status = report["pipeline"], str(report["status"])
    facts = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>"
                    for k, v in _facts(report))
    return (f'<header class="top"><div class="title"><h1>{escape(pipeline["name"])}</h1>'
            f'{_badge(status)}<span>{escape(str(pipeline["path"]))}</span></div>'
            f'<dl class="facts">{facts}</dl>{_alerts(report)}</header>')


def _facts(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    totals = report["totals"]
    started, finished = seconds(report.get("started_at")), seconds(report.get("finished_at"))
    wall = _duration(finished - started) if started and finished else "-"
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(
        totals.get("by_status", {}).items()))
    return [("run", str(report["run_id"])), ("backend", str(report["backend"])),
            ("started", str(report.get("started_at") or "-")), ("wall time", wall),
            *_credit_facts(totals), ("steps", counts or "none")]


def _credit_facts(totals: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Credits charged now and in all, and saved, when the report has them; else spent."""
    if "credits_charged" not in totals:
        return [("credits charged", str(totals.get("credits", 0)))]
    facts = [("credits charged by this invocation", str(totals["credits_charged"]))]
    if "credits_charged_run" in totals:
        facts.append(("credits charged in all", str(totals["credits_charged_run"])))
    saved = totals.get("credits_saved")
    if isinstance(saved, Mapping):
        parts = ", ".join(f"{n} by the {what}" for what, n in saved.items())
        facts.append(("credits saved", f"{sum(saved.values())} ({parts})" if parts else "0"))
    return facts


def _alerts(report: Mapping[str, Any]) -> str:
    alerts = []
    if report.get("error"):
        alerts.append(escape(str(report["error"])))
    by_status: dict[str, list[str]] = {}
    for step in report["steps"]:
        if step["status"] in PROBLEMS:
            by_status.setdefault(step["status"], []).append(step["id"])
    for status, ids in by_status.items():
        links = ", ".join(_step_link(sid) for sid in ids)
        alerts.append(f"{len(ids)} {escape(status.replace('_', ' '))}: {links}")
    for name, output in report.get("outputs", {}).items():
        if output["status"] == "incomplete":
            alerts.append(f"film {escape(name)} is incomplete: {_why_incomplete(output)}")
    return "".join(f'<p class="alert">{text}</p>' for text in alerts)


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status.replace("_", " "))}</span>'


def _step_link(step_id: str) -> str:
    return f'<a href="#step-{escape(step_id)}">{escape(step_id)}</a>'


def _why_incomplete(output: Mapping[str, Any]) -> str:
    missing = output.get("missing") or []
    if missing:
        return "missing " + ", ".join(_step_link(sid) for sid in missing)
    return escape(str(output.get("error") or "its parts did not all succeed"))


def _duration(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def _footer(page: _Page) -> str:
    links = " · ".join(f'<a href="{href}">{name}</a>' for name, href in (
        ("report.json", page.url("report.json")), ("journal.jsonl", page.url("journal.jsonl")))
        if href)
    return f"<footer>{links} · written by klingflow</footer>"


# ---- the parts that show the run's files ------------------------------------------


class _Page:
    """Renders what shows the run's files: films, seams and step cards."""

    def __init__(self, run_dir: Path, steps: Mapping[str, Mapping[str, Any]]) -> None:
        self.run_dir = run_dir
        self.steps = steps

    def url(self, relative: str | None) -> str | None:
        """The file's relative URL, or None when it is not in the run directory."""
        if not relative or not (self.run_dir / relative).is_file():
            return None
        return quote(Path(relative).as_posix())

    def output_url(self, step_id: str, attr: str) -> str | None:
        output = self.steps.get(step_id, {}).get("outputs", {}).get(attr)
        return self.url(output["path"]) if output else None

    def picture(self, step_id: str, attr: str, caption: str) -> str:
        src = self.output_url(step_id, attr)
        if src is None:
            name = escape(_FRAME_NAMES.get(attr, attr))
            inner = f'<div class="nofile"><span>no {name}</span></div>'
        else:
            inner = (f'<img class="thumb" loading="lazy" decoding="async" src="{src}" '
                     f'alt="{escape(step_id)}: {escape(_FRAME_NAMES.get(attr, attr))}">')
        return f"<figure>{inner}<figcaption>{caption}</figcaption></figure>"

    # films

    def films(self, outputs: Mapping[str, Mapping[str, Any]]) -> str:
        if not outputs:
            return "<p>This pipeline declares no outputs.</p>"
        return f'<div class="films">{"".join(self.film(n, o) for n, o in outputs.items())}</div>'

    def film(self, name: str, output: Mapping[str, Any]) -> str:
        src = self.url(output.get("path")) if output["status"] == "ready" else None
        if src is None:
            why = _why_incomplete(output) if output["status"] != "ready" \
                else "the film file is missing"
            shown = f'<div class="nofile"><span>{why}</span></div>'
        else:
            poster = self.output_url(output["concat"][0], "first_frame")
            poster_attr = f' poster="{poster}"' if poster else ""
            shown = f'<video controls preload="metadata" src="{src}"{poster_attr}></video>'
        return (f'<figure class="film {escape(output["status"])}" id="film-{escape(name)}">'
                f"{shown}<figcaption><strong>{escape(name)}</strong> {_badge(output['status'])} "
                f"{_film_facts(output)}{self.parts(output)}</figcaption></figure>")

    def parts(self, output: Mapping[str, Any]) -> str:
        missing = set(output.get("missing") or [])
        seams = {p["step"]: p["seam_dropped"] for p in output.get("parts") or []}
        items = []
        for sid in output["concat"]:
            classes = " ".join(c for c, on in (("missing", sid in missing),
                                               ("seam", seams.get(sid, False))) if on)
            status = self.steps.get(sid, {}).get("status", "")
            title = f"{sid}: {status}" + (" (continues the part before: its first frame "
                                          "is shown once)" if seams.get(sid) else "")
            items.append(f'<li class="{classes}" title="{escape(title)}">{_step_link(sid)}</li>')
        return f'<ol class="parts">{"".join(items)}</ol>'

    # seams

    def seams(self, seams: Sequence[Mapping[str, Any]] | None) -> str:
        if seams is None:
            return "<p>This report records no seams (an older klingflow wrote it).</p>"
        if not seams:
            return "<p>No step starts or ends on another step's frame.</p>"
        return f'<div class="seams">{"".join(self.seam(s) for s in seams)}</div>'

    def seam(self, seam: Mapping[str, Any]) -> str:
        parent, child = str(seam["parent"]), str(seam["child"])
        difference = seam.get("difference")
        warn = difference is not None and difference > SEAM_WARNING
        left = self.picture(parent, seam["parent_frame"],
                            f"{_step_link(parent)} {_FRAME_NAMES[seam['parent_frame']]}")
        right = self.picture(child, seam["child_frame"],
                             f"{_step_link(child)} {_FRAME_NAMES[seam['child_frame']]}")
        return (f'<div class="seam{" warn" if warn else ""}"><div class="pair">{left}{right}'
                f'</div><div class="diff">{_difference_text(difference, warn)}</div></div>')

    # step cards

    def cards(self) -> str:
        counts = Counter(str(s["status"]) for s in self.steps.values())
        problems = sum(counts[p] for p in PROBLEMS)
        toolbar = ('<div class="toolbar"><button type="button" data-filter="all" '
                   f'aria-pressed="true">all {len(self.steps)}</button><button type="button" '
                   f'data-filter="problems" aria-pressed="false">problems only {problems}'
                   "</button></div>")
        return f'{toolbar}<div class="cards" id="cards">{"".join(map(self.card, self.steps.values()))}</div>'

    def card(self, step: Mapping[str, Any]) -> str:
        sid, status = str(step["id"]), str(step["status"])
        problem = " problem" if status in PROBLEMS else ""
        frames = (self.picture(sid, "first_frame", "first frame")
                  + self.picture(sid, "last_frame", "last frame"))
        return (f'<article class="card {escape(status)}{problem}" id="step-{escape(sid)}">'
                f"<header><h3>{escape(sid)}</h3>{_badge(status)}</header>"
                f'<div class="frames">{frames}</div>{self.clip(sid)}{_prompt(step)}'
                f"<dl>{_card_facts(step)}</dl>{_error(step)}</article>")

    def clip(self, step_id: str) -> str:
        src = self.output_url(step_id, "video")
        if src is None:
            return ""
        poster = self.output_url(step_id, "first_frame")
        poster_attr = f' data-poster="{poster}"' if poster else ""
        return f'<video controls preload="none" src="{src}"{poster_attr}></video>'


def _film_facts(output: Mapping[str, Any]) -> str:
    if output["status"] != "ready":
        return ""
    facts = []
    if output.get("duration") is not None:
        facts.append(f"{output['duration']:.1f} s")
    if output.get("frames") is not None:
        facts.append(f"{output['frames']} frames")
    method = {"copy": "joined without re-encoding", "reencode": "re-encoded to one size and rate"}
    if output.get("method") in method:
        facts.append(method[output["method"]])
    if output.get("cached"):
        facts.append("from the cache")
    return escape(" · ".join(facts))


def _difference_text(difference: float | None, warn: bool) -> str:
    if difference is None:
        return "not measured: a frame is missing"
    if warn:
        return (f"\u26a0 differs by {difference:.1f} (over {SEAM_WARNING:g}): "
                "the clip does not continue where the other one is")
    return f"differs by {difference:.1f} (mean per pixel, 0-255)"


def _prompt(step: Mapping[str, Any]) -> str:
    prompt = step.get("prompt")
    return f'<p class="prompt">{escape(prompt)}</p>' if prompt else ""


def _card_facts(step: Mapping[str, Any]) -> str:
    needs = step.get("needs") or []
    waits = _waits(step)
    rows = [
        ("kind", escape(str(step.get("kind") or "-"))),
        ("model", escape(str(step.get("model") or "-"))),
        ("mode", escape(str(step.get("mode") or "-"))),
        ("duration", f"{step['duration']} s" if step.get("duration") else "-"),
        ("account", escape(str(step.get("account") or "-"))),
        ("task", escape(str(step["task_id"])) if step.get("task_id") is not None else "-"),
        ("credits", escape(str(step.get("credits", 0)))),
        ("attempts", escape(str(step.get("attempts", 0)))),
        ("waited for", ", ".join(_step_link(n) for n in needs) or "nothing"),
    ]
    if waits:
        rows.append(("waits", escape(waits)))
    return "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)


def _waits(step: Mapping[str, Any]) -> str:
    names = {"queued": "for the steps it needs", "waiting": "for a slot"}
    parts = [f"{s.end - s.start:.1f} s {names[s.phase]}" for s in spans(step)
             if s.phase in names and s.end - s.start >= 0.05]
    return "; ".join(parts)


def _error(step: Mapping[str, Any]) -> str:
    if not step.get("error"):
        return ""
    category = f"[{step['error_category']}] " if step.get("error_category") else ""
    return f'<p class="error">{escape(category + str(step["error"]))}</p>'
