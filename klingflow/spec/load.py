"""`load_pipeline`: the one way from a YAML file to a checked `Pipeline`.

YAML -> JSON Schema -> semantic checks -> frozen records. Every problem of the
file is collected in one pass; a value the schema rejected is not checked again.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from klingflow.catalogue import Catalogues
from klingflow.errors import PipelineError, Problem
from klingflow.spec.filenames import file_name_problem
from klingflow.spec.graph import find_cycles
from klingflow.spec.issues import DocPath, Issue, YamlDocument
from klingflow.spec.pipeline import Account, Pipeline, Position, PriceEntry, Step
from klingflow.spec.refs import Names, StepEntry
from klingflow.spec.reported import Reported
from klingflow.spec.schemacheck import schema_issues
from klingflow.spec.sections import (
    read_accounts,
    read_inputs,
    read_outputs,
    read_prices,
    read_vars,
)
from klingflow.spec.source import read_source
from klingflow.spec.steps import API_FIELDS, MAX_EXPANSIONS, StepBuilder, Written
from klingflow.spec.wording import path_text
from klingflow.spec.yamlload import parse_yaml


def load_pipeline(path: Path, *, effects: Catalogues | None = None) -> Pipeline:
    """The checked pipeline at `path`; PipelineError with every problem otherwise.

    Effect steps are judged against the catalogue `effects` gives for their account;
    without one, their effect name, mode and prompt are not judged.
    """
    with _no_gc_pauses():
        return _load(path, effects)


def read_pipeline_accounts(path: Path) -> dict[str, Account]:
    """The accounts a pipeline file declares, by alias, judging nothing else of the file
    (so `klingflow effects` works on a file whose effect steps are still wrong)."""
    shown = str(path)
    doc, issues = _document(path)
    raw = doc.data.get("accounts") if isinstance(doc.data, dict) else None
    if not isinstance(raw, dict):
        return {}
    issues = [i for i in issues + schema_issues(doc) if i.path[:1] == ("accounts",)]
    if issues:
        raise _error(shown, issues, doc)
    return read_accounts(raw)


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Loading builds ~10 objects per value and frees none: cyclic GC passes are pure cost
    (about 10% of a 10,000-step file)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _document(path: Path) -> tuple[YamlDocument, list[Issue]]:
    """The file's YAML with positions, and its issues; PipelineError when unreadable."""
    text, issue = read_source(path)
    if text is None:
        raise _error(str(path), [issue] if issue else [], None)
    doc, issues = parse_yaml(text)
    if doc is None:
        raise _error(str(path), issues, None)
    return doc, issues


def _load(path: Path, effects: Catalogues | None) -> Pipeline:
    shown = str(path)
    doc, issues = _document(path)
    issues += _shape_issues(doc)
    earlier = len(issues)
    pipeline = _Checked(doc, path, shown, effects).run(issues) \
        if isinstance(doc.data, dict) else None
    if issues or pipeline is None:
        raise _error(shown, issues, doc, earlier)
    over_budget = _budget_problems(pipeline)
    if over_budget:
        raise PipelineError(over_budget)
    return pipeline


def _budget_problems(pipeline: Pipeline) -> list[Problem]:
    """A budget the known cost already exceeds; the planner knows the cost."""
    from klingflow.plan import budget_problems  # the planner imports this package

    return budget_problems(pipeline)


def _shape_issues(doc: YamlDocument) -> list[Issue]:
    if doc.data is None:
        return [Issue((), 1, 1, "the file holds no YAML document; a pipeline needs "
                                "version: 1, name and steps")]
    return schema_issues(doc)


def _error(shown: str, issues: list[Issue], doc: YamlDocument | None,
           earlier: int | None = None) -> PipelineError:
    """Problems of `issues`; a later check's issue where an earlier one already is, is dropped."""
    data = doc.data if doc else None
    cut = len(issues) if earlier is None else earlier
    taken = {(i.line, i.col) for i in issues[:cut]}
    kept = issues[:cut] + [i for i in issues[cut:] if (i.line, i.col) not in taken]
    return PipelineError(_unique([
        Problem(shown, i.line, i.col, _printable(i.shown or path_text(i.path, data)),
                _printable(i.message))
        for i in kept]))


def _printable(text: str) -> str:
    """Control characters (YAML escapes can make them) escaped, so a problem stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _unique(problems: list[Problem]) -> list[Problem]:
    """One problem per place and message (a matrix repeats a default's problem)."""
    seen: dict[tuple[int, int, str], Problem] = {}
    for problem in problems:
        seen.setdefault((problem.line, problem.col, problem.message), problem)
    return list(seen.values())


class _Checked:
    """The semantic checks of one schema-checked document."""

    def __init__(self, doc: YamlDocument, path: Path, shown: str,
                 effects: Catalogues | None) -> None:
        self.doc, self.path, self.shown, self.effects = doc, path, shown, effects
        self.data: dict[str, Any] = doc.data
        self.reported = Reported.of([])  # what earlier checks reported: not judged again

    def run(self, issues: list[Issue]) -> Pipeline | None:
        self._file_names(issues)
        table = self._table(issues)
        self.reported = Reported.of(issues)
        names = Names(self._vars(issues), frozenset(self._section("inputs")), table,
                      broken_vars=self.reported.keys("vars"))
        steps = self._steps(names, table, issues)
        outputs = read_outputs(self.doc, self._outputs(), table, issues, self.reported.paths)
        inputs = read_inputs(self.doc, self._usable("inputs"),
                             Names(names.vars, names.inputs, table, runtime=False,
                                   broken_vars=names.broken_vars),
                             self.path.parent, issues)
        prices = read_prices(self.doc, self._prices(), issues)
        if issues:
            return None
        return self._pipeline(steps, inputs, outputs, names, prices)

    def _prices(self) -> list[dict[str, Any]]:
        raw = self.data.get("prices")
        if not isinstance(raw, list):
            return []
        return [p for n, p in enumerate(raw) if n not in self.reported.keys("prices")]

    def _section(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        return value if isinstance(value, dict) else {}

    def _usable(self, key: str) -> dict[str, Any]:
        """The entries of a section that no earlier check reported."""
        reported = self.reported.keys(key)
        return {k: v for k, v in self._section(key).items() if k not in reported}

    def _outputs(self) -> dict[str, Any]:
        """The outputs whose shape holds (a bad item alone is skipped by read_outputs)."""
        paths = self.reported.paths
        return {k: v for k, v in self._section("outputs").items()
                if ("outputs", k) not in paths and ("outputs", k, "concat") not in paths}

    def _vars(self, issues: list[Issue]) -> dict[str, Any]:
        raw = {k: v for k, v in self._section("vars").items()
               if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
        return read_vars(self.doc, raw, issues)

    def _table(self, issues: list[Issue]) -> dict[str, StepEntry]:
        """Every step id and its expansions; a matrix over the limits (its own, or all the
        matrices together) is reported here, before anything is expanded."""
        table: dict[str, StepEntry] = {}
        first: dict[str, int] = {}
        budget = _ExpansionBudget(self.doc, issues)
        matrix_issues = {i.path[1] for i in issues if i.path[:1] == ("steps",)
                         and len(i.path) > 2 and i.path[2] == "matrix"}
        for n, raw in enumerate(self._steps_list()):
            step_id = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(step_id, str):
                continue
            if step_id in table:
                self._duplicate(n, step_id, first[step_id], issues)
                continue
            first[step_id] = n
            self._file_name(step_id, "a step id", ("steps", n, "id"), issues)
            expansions = (step_id,) if "matrix" not in raw else \
                None if n in matrix_issues or not _buildable(raw) else budget.take(n, raw)
            table[step_id] = StepEntry(step_id, expansions, "matrix" in raw)
        return table

    def _file_names(self, issues: list[Issue]) -> None:
        """The pipeline's and the outputs' names, which name folders and files."""
        if isinstance(self.data.get("name"), str):
            self._file_name(self.data["name"], "a pipeline name", ("name",), issues)
        for output in self._section("outputs"):
            self._file_name(output, "an output name", ("outputs", output), issues, key=True)

    def _file_name(self, name: str, what: str, at: DocPath, issues: list[Issue], *,
                   key: bool = False) -> None:
        problem = file_name_problem(name, what)
        if problem:
            issues.append(Issue(at, *(self.doc.key_at(at) if key else self.doc.value_at(at)),
                                problem))

    def _steps_list(self) -> list[Any]:
        steps = self.data.get("steps")
        return steps if isinstance(steps, list) else []

    def _duplicate(self, n: int, step_id: str, first: int, issues: list[Issue]) -> None:
        line = self.doc.value_at(("steps", first, "id"))[0]
        at = ("steps", n, "id")
        issues.append(Issue(at, *self.doc.value_at(at), f"duplicate step id '{step_id}' "
                                                        f"(first at line {line}); ids must be unique"))

    def _steps(self, names: Names, table: Mapping[str, StepEntry],
               issues: list[Issue]) -> list[Step]:
        builder = StepBuilder(self.doc, self.shown, names, self._defaults(),
                              self._accounts(), _order(table), self.effects, self.reported)
        steps = []
        for n, raw in enumerate(self._steps_list()):
            if _buildable(raw):
                steps += builder.build(n, raw, table[raw["id"]])
        issues += builder.issues
        issues += self._cycles(steps, builder.edges)
        return steps

    def _defaults(self) -> dict[str, Written]:
        return {k: Written(v, ("defaults", k)) for k, v in self._section("defaults").items()
                if isinstance(k, str)}

    def _accounts(self) -> dict[str, str] | None:
        """Alias -> email of the declared accounts ('' if it has none that can be used, or it
        was reported); None when the file declares no accounts."""
        if "accounts" not in self.data:
            return None
        reported = self.reported.keys("accounts")
        return {alias: "" if alias in reported else _email(entry)
                for alias, entry in self._section("accounts").items()}

    def _cycles(self, steps: list[Step],
                edges: Mapping[tuple[str, str], tuple[DocPath, str]]) -> list[Issue]:
        issues = []
        for cycle in find_cycles(steps):
            at, shown = edges[(cycle[0], cycle[1] if len(cycle) > 1 else cycle[0])]
            text = " -> ".join([*cycle, cycle[0]])
            issues.append(Issue(at, *self.doc.value_at(at), f"a cycle: {text}; a step cannot "
                                "wait for itself: remove one of these references", shown))
        return issues

    def _pipeline(self, steps: list[Step], inputs: Any, outputs: Any, names: Names,
                  prices: tuple[PriceEntry, ...]) -> Pipeline:
        limits = self._section("limits")
        return Pipeline(
            path=self.path, name=self.data["name"], description=self.data.get("description", ""),
            accounts=read_accounts(self._section("accounts")), inputs=inputs, vars=names.vars,
            max_jobs=limits.get("max_jobs"), budget=limits.get("budget"),
            budget_position=self._where(("limits", "budget")) if "budget" in limits else None,
            prices=prices,
            steps=tuple(steps), outputs=outputs)

    def _where(self, at: DocPath) -> Position:
        return Position(self.shown, *self.doc.value_at(at))


def _buildable(raw: Any) -> bool:
    """A step that can be checked at all: a mapping with an id and a known kind."""
    if not isinstance(raw, dict):
        return False
    kind = raw.get("kind")
    return isinstance(raw.get("id"), str) and isinstance(kind, str) and kind in API_FIELDS


class _ExpansionBudget:
    """The matrices' expansions, counted before any is made: at most MAX_EXPANSIONS for
    one matrix, and for all of them together (reported once, at the matrix that goes
    past; the matrices after it are then not expanded either)."""

    def __init__(self, doc: YamlDocument, issues: list[Issue]) -> None:
        self.doc, self.issues, self.total, self.over = doc, issues, 0, False

    def take(self, n: int, raw: dict[str, Any]) -> tuple[str, ...] | None:
        count = math.prod(len(values) for values in raw["matrix"].values())
        if count > MAX_EXPANSIONS:
            self._refuse(n, f"the matrix expands to {count:,} steps; at most {MAX_EXPANSIONS:,}")
            return None
        self.total += count
        if self.over:
            return None
        if self.total > MAX_EXPANSIONS:
            self.over = True
            self._refuse(n, f"the matrices expand to {self.total:,} steps in all with this one "
                            f"({count:,}); at most {MAX_EXPANSIONS:,} in a pipeline")
            return None
        return tuple(f"{raw['id']}@{i}" for i in range(count))

    def _refuse(self, n: int, message: str) -> None:
        at = ("steps", n, "matrix")
        self.issues.append(Issue(at, *self.doc.value_at(at), message))


def _email(entry: Any) -> str:
    email = entry.get("email") if isinstance(entry, dict) else None
    return email if isinstance(email, str) else ""


def _order(table: Mapping[str, StepEntry]) -> dict[str, int]:
    ids = [i for entry in table.values() for i in (entry.expansions or ())]
    return {step_id: n for n, step_id in enumerate(ids)}
