"""The top-level sections other than steps: accounts, inputs, vars, limits, prices, outputs.

Each function takes the (schema-checked) raw section and returns records; what is
wrong is appended to `issues`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from klingflow.files import real_path
from klingflow.spec.images import check_image, is_http_url, url_problem
from klingflow.spec.issues import DocPath, Issue, YamlDocument
from klingflow.spec.pipeline import Account, Input, Output, PriceEntry
from klingflow.spec.refs import (
    Names,
    RefError,
    ReportedRef,
    StepEntry,
    has_refs,
    resolve_text,
    step_name,
)

Vars = Mapping[str, str | int | float]


def read_vars(doc: YamlDocument, raw: Mapping[str, Any], issues: list[Issue]) -> dict[str, Any]:
    values = {}
    for name, value in raw.items():
        if isinstance(value, str) and has_refs(value):
            issues.append(Issue(("vars", name), *doc.value_at(("vars", name)),
                                "a var cannot hold a reference; write the text itself"))
        values[name] = value
    return values


def read_accounts(raw: Mapping[str, Any]) -> dict[str, Account]:
    return {alias: Account(alias, entry["email"], entry.get("max_jobs", 1))
            for alias, entry in raw.items()}


def read_inputs(doc: YamlDocument, raw: Mapping[str, Any], names: Names, base: Path,
                issues: list[Issue]) -> dict[str, Input]:
    inputs = {}
    for name, written in raw.items():
        problems, record = _input(name, written, names, base)
        issues += [Issue(("inputs", name), *doc.value_at(("inputs", name)), problem)
                   for problem in problems]
        if not problems and record:
            inputs[name] = record
    return inputs


def _input(name: str, written: str, names: Names, base: Path) -> tuple[list[str], Input | None]:
    """The input's problems (each bad reference of its text is one), or its record."""
    try:
        text = resolve_text(written, names) if has_refs(written) else written
    except ReportedRef:
        return [], None
    except RefError as exc:
        return exc.messages(), None
    text = str(text)
    if is_http_url(text):
        return _listed(url_problem(text)), Input(name, url=text)
    if "://" in text or "\x00" in text:
        return [f"{text!r} is neither an http(s) URL nor a local path"], None
    path = real_path(base / text)
    checked = check_image(path, text)
    return _listed(checked.problem), Input(name, path=path, content_type=checked.content_type)


def _listed(problem: str | None) -> list[str]:
    return [problem] if problem else []


def read_prices(doc: YamlDocument, raw: list[dict[str, Any]],
                issues: list[Issue]) -> tuple[PriceEntry, ...]:
    entries: dict[tuple[str, str, int, bool], int] = {}
    prices = []
    for n, item in enumerate(raw):
        entry = PriceEntry(item["model"], item["mode"], item["duration"], item["credits"],
                           item.get("audio", False))
        key = (entry.model, entry.mode, entry.duration, entry.audio)
        if key in entries:
            issues.append(Issue(("prices", n), *doc.value_at(("prices", n)),
                                f"a second price for {entry.model} {entry.mode} "
                                f"{entry.duration} s (first is prices[{entries[key]}]); "
                                "remove one"))
        entries.setdefault(key, n)
        prices.append(entry)
    return tuple(prices)


def read_outputs(doc: YamlDocument, raw: Mapping[str, Any], steps: Mapping[str, StepEntry],
                 issues: list[Issue], reported: frozenset[DocPath] = frozenset()
                 ) -> dict[str, Output]:
    """The outputs; a concat item at a `reported` path is not judged again."""
    outputs = {}
    for name, entry in raw.items():
        ids: list[str] = []
        for n, step_id in enumerate(entry["concat"]):
            at = ("outputs", name, "concat", n)
            if at in reported:
                continue
            try:
                ids += step_name(step_id, steps, f"concat: {step_id}", whole_matrix=True) or ()
            except RefError as exc:
                issues.append(Issue(at, *doc.value_at(at), str(exc)))
        outputs[name] = Output(name, tuple(ids))
    return outputs
