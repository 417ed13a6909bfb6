"""Steps: defaults merged, matrix expanded, references resolved, rules checked."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from klingflow.catalogue import Catalogue, Catalogues
from klingflow.kinds import EFFECT, FRAMES, KINDS
from klingflow.models import DEFAULT_MODEL, MODELS
from klingflow.spec.images import is_http_url, url_problem
from klingflow.spec.issues import DocPath, Issue, YamlDocument
from klingflow.spec.pipeline import Position, Positions, Ref, Step, Template, Value
from klingflow.spec.refs import (
    Names,
    RefError,
    ReportedRef,
    StepEntry,
    has_refs,
    resolve_text,
    step_name,
)
from klingflow.spec.reported import Reported
from klingflow.spec.rules import (
    Finding,
    decided_effect_mode,
    effect_findings,
    frames_findings,
    required_findings,
)
from klingflow.spec.schemacheck import value_issues
from klingflow.spec.wording import did_you_mean, show

API_FIELDS = {kind.name: kind.fields for kind in KINDS.values()}
RUN_FIELDS = ("account", "retries", "timeout")
_STEP_FIELDS = {name: frozenset(fields + RUN_FIELDS) for name, fields in API_FIELDS.items()}
TYPED_FIELDS = frozenset(("account", "retries", "timeout", "cfg_scale", "duration",
                          "model_name", "mode", "enable_audio", "effect"))
IMAGE_FIELDS = frozenset(("image", "image_tail"))
RUNTIME_FIELDS = IMAGE_FIELDS | {"prompt", "negative_prompt"}
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 1800.0
MAX_EXPANSIONS = 10_000
_DECISIVE = frozenset(("model_name", "effect", "mode"))  # the rules depend on these
_WHOLE_MATRIX = re.compile(r"\$\{\s*matrix\.([^{}.\s]+)\s*\}")
_MATRIX_REF = re.compile(r"\$\{\s*matrix\.")


class _Bad(Exception):
    """A value already reported; the step is not checked further."""


class Written(NamedTuple):
    """A value and where it was written (a tuple: a 10,000-step file makes ~80,000)."""

    value: Any
    at: DocPath


@dataclass(slots=True)
class StepBuilder:
    doc: YamlDocument
    file: str
    names: Names
    defaults: Mapping[str, Written]
    accounts: Mapping[str, str] | None  # alias -> email; None: the file declares no accounts
    order: Mapping[str, int]  # expanded step id -> its place in the file
    effects: Catalogues | None = None  # None: effect names, modes and prompts are not judged
    reported: Reported = field(default_factory=lambda: Reported.of([]))
    issues: list[Issue] = field(default_factory=list)
    edges: dict[tuple[str, str], tuple[DocPath, str]] = field(default_factory=dict)
    _resolved_texts: dict[tuple[str, bool], Any] = field(default_factory=dict)
    _positions: dict[DocPath, Position] = field(default_factory=dict)
    _kind_defaults: dict[str, dict[str, Written]] = field(default_factory=dict)

    def build(self, index: int, raw: dict[str, Any], entry: StepEntry) -> list[Step]:
        """The step's expansions (one without a matrix). A matrix already reported, or
        with a value that cannot be resolved, gives one probe (id as written) whose fields
        that use the matrix are not judged; the others still are."""
        fields = self._fields(index, raw)
        combos: list[dict[str, Written]] | None = None
        if "matrix" not in raw:
            combos = [{}]
        elif entry.expansions is not None and "matrix" not in self.reported.fields(index):
            combos = self._combos(index, raw["matrix"])
        if combos is None:
            return [self._expansion(index, raw, raw["id"], fields, None)]
        steps = []
        for n, combo in enumerate(combos):
            step_id = f"{raw['id']}@{n}" if "matrix" in raw else raw["id"]
            steps.append(self._expansion(index, raw, step_id, fields, combo))
        return steps

    def _fields(self, index: int, raw: dict[str, Any]) -> dict[str, Written]:
        kind = raw["kind"]
        kind_fields = _STEP_FIELDS[kind]
        defaults = self._kind_defaults.get(kind)
        if defaults is None:
            defaults = self._kind_defaults[kind] = {
                k: w for k, w in self.defaults.items() if k in kind_fields}
        merged = dict(defaults)
        merged.update({k: Written(v, ("steps", index, k)) for k, v in raw.items()
                       if k in kind_fields})
        return merged

    def _combos(self, index: int, matrix: Any) -> list[dict[str, Written]] | None:
        if matrix is None:
            return [{}]
        columns = []
        for key, values in matrix.items():
            column = [self._matrix_value(v, ("steps", index, "matrix", key, j))
                      for j, v in enumerate(values)]
            columns.append([(key, w) for w in column])
        if any(w is None for column in columns for _, w in column):
            return None
        return [dict(combo) for combo in itertools.product(*columns)]  # type: ignore[arg-type]

    def _matrix_value(self, value: Any, at: DocPath) -> Written | None:
        if not (isinstance(value, str) and has_refs(value)):
            return Written(value, at)
        try:
            return Written(resolve_text(value, self.names), at)
        except RefError as exc:
            if not isinstance(exc, ReportedRef):
                for message in exc.messages():
                    self._report(at, message)
            return None

    def _report(self, at: DocPath, message: str, shown: str = "") -> None:
        self.issues.append(Issue(at, *self.doc.value_at(at), message, shown))

    def _expansion(self, index: int, raw: dict[str, Any], step_id: str,
                   fields: Mapping[str, Written], combo: dict[str, Written] | None) -> Step:
        """One expansion; `combo` None is the probe of a matrix that cannot be expanded."""
        label = f"steps[{index}] (id: {step_id})"
        names = replace(self.names, matrix={k: w.value for k, w in (combo or {}).items()}) \
            if "matrix" in raw else self.names
        values, bad = self._values(fields, names, combo, label)
        values = _applicable(raw["kind"], values)
        needs = self._needs(index, raw, step_id, values, label)
        if "account" not in bad:
            self._account_holds(values.get("account"), label)
        values = self._check_rules(raw["kind"], values, bad, label, index)
        return self._step(index, raw, step_id, values, needs, bad)

    def _values(self, fields: Mapping[str, Written], names: Names,
                combo: dict[str, Written] | None,
                label: str) -> tuple[dict[str, Written], set[str]]:
        """The fields' values resolved, and the names of those that could not be (or
        were reported before, or use a matrix that cannot be expanded)."""
        values: dict[str, Written] = {}
        bad: set[str] = set()
        for key, written in fields.items():
            values[key] = written
            if self.reported.holds(written.at) or (combo is None and _uses_matrix(written)):
                bad.add(key)
            elif _worked(key, written.value):
                try:
                    values[key] = self._value(key, written, names, combo or {},
                                              f"{label}.{key}")
                except _Bad:
                    bad.add(key)
        return values, bad

    def _value(self, name: str, written: Written, names: Names, combo: dict[str, Written],
               shown: str) -> Written:
        value, at = written.value, written.at
        if isinstance(value, str) and has_refs(value):
            at = (_matrix_origin(value, combo) or at) if combo else at
            value = self._resolved(name, value, names, at, shown)
        if name == "duration" and isinstance(value, str):
            value = int(value)
        if name in ("prompt", "negative_prompt") and not isinstance(value, (str, Template)):
            value = str(value)
        if name in IMAGE_FIELDS:
            problem = _image_problem(value)
            if problem:
                self._fail(at, problem, shown)
        return Written(value, at)

    def _resolved(self, name: str, text: str, names: Names, at: DocPath, shown: str) -> Any:
        try:
            value = self._resolve_text(text, names, name in RUNTIME_FIELDS)
        except ReportedRef:
            raise _Bad from None
        except RefError as exc:
            *first, last = exc.messages()
            for message in first:
                self._report(at, message, shown)
            self._fail(at, last, shown)
        if name in TYPED_FIELDS and isinstance(value, Template):
            self._fail(at, f"{name} must be known before the run; a reference to an input or "
                           "a step cannot be used here", shown)
        problems = value_issues(value, name, at, self.doc) if name in TYPED_FIELDS else []
        if problems:
            self._fail(at, problems[0].message, shown)
        return value

    def _resolve_text(self, text: str, names: Names, runtime: bool) -> Any:
        """`resolve_text`, remembered outside a matrix (texts repeat across steps)."""
        if names.runtime != runtime:
            names = replace(names, runtime=runtime)
        if names.matrix is not None:
            return resolve_text(text, names)
        key = (text, runtime)
        if key not in self._resolved_texts:
            try:
                self._resolved_texts[key] = resolve_text(text, names)
            except RefError as exc:
                self._resolved_texts[key] = exc
        found = self._resolved_texts[key]
        if isinstance(found, RefError):
            raise found
        return found

    def _fail(self, at: DocPath, message: str, shown: str) -> None:
        self._report(at, message, shown)
        raise _Bad

    def _needs(self, index: int, raw: dict[str, Any], step_id: str,
               values: Mapping[str, Written], label: str) -> list[str]:
        needs: list[str] = []
        written = raw.get("needs")
        for j, name in enumerate(written if isinstance(written, list) else ()):
            at = ("steps", index, "needs", j)
            if at in self.reported.paths or ("steps", index, "needs") in self.reported.paths:
                continue
            try:
                ids = step_name(name, self.names.steps, f"needs: {name}", whole_matrix=True)
            except RefError as exc:
                self._report(at, str(exc), f"{label}.needs[{j}]")
                continue
            needs += self._edges(step_id, ids or (), at, f"{label}.needs[{j}]")
        for key, value in values.items():
            if isinstance(value.value, Template):
                refs = [r.name for r in value.value.refs if r.scope == "steps"]
                needs += self._edges(step_id, refs, value.at, f"{label}.{key}")
        return needs

    def _edges(self, step_id: str, ids: Any, at: DocPath, shown: str) -> list[str]:
        for needed in ids:
            self.edges.setdefault((step_id, needed), (at, shown))
        return list(ids)

    def _check_rules(self, kind: str, values: dict[str, Written], bad: set[str], label: str,
                     index: int) -> dict[str, Written]:
        """The model's or effect's rules, not on values already reported (none at all when
        the model, effect or mode is); the values with the mode the catalogue decides for
        an effect that lists only one."""
        params = {k: w.value for k, w in values.items() if k not in RUN_FIELDS}
        findings = list(required_findings(kind, params))
        catalogues: list[Catalogue] = []
        if not bad & _DECISIVE:
            catalogues = self._catalogues(kind, values.get("account"), bad)
            findings += _RULES[kind](params, catalogues)
        for name, message in findings:
            if name not in bad:
                at = values[name].at if name else ("steps", index)
                self._report(at, message, f"{label}.{name}" if name else label)
        mode = decided_effect_mode(params, catalogues) if kind == "effect" and not findings \
            else None
        return {**values, "mode": Written(mode, values["effect"].at)} if mode else values

    def _catalogues(self, kind: str, account: Written | None, bad: set[str]) -> list[Catalogue]:
        if kind != "effect" or self.effects is None or "account" in bad:
            return []
        found = [self.effects.get(e) for e in _accounts_of(account, self.accounts)]
        return [c for c in found if c is not None]

    def _account_holds(self, written: Written | None, label: str) -> None:
        if written is not None and isinstance(written.value, str):
            message = _account_problem(written.value, self.accounts)
            if message:
                self._report(written.at, message, f"{label}.account")

    def _step(self, index: int, raw: dict[str, Any], step_id: str,
              values: Mapping[str, Written], needs: list[str], bad: set[str]) -> Step:
        params: dict[str, Value] = {}
        run: dict[str, Any] = {}
        places: dict[str, int] = {}
        for key, written in values.items():  # one pass: this runs for every step
            if key in bad:
                continue
            if key in RUN_FIELDS:
                run[key] = written.value
            else:
                params[key] = written.value
                places[key] = Positions.pack(*self._line_col(written.at))
        return Step(
            id=step_id, kind=raw["kind"], params=params, account=run.get("account"),
            needs=_in_file_order(needs, self.order), retries=run.get("retries", DEFAULT_RETRIES),
            timeout=float(run.get("timeout", DEFAULT_TIMEOUT)),
            position=self._position(("steps", index)), base_id=raw["id"],
            positions=Positions(self.file, places))

    def _position(self, at: DocPath) -> Position:
        found = self._positions.get(at)
        if found is None:
            found = self._positions[at] = Position(self.file, *self._line_col(at))
        return found

    def _line_col(self, at: DocPath) -> tuple[int, int]:
        return self.doc.values.get(at) or self.doc.value_at(at)


def _image_problem(value: Any) -> str | None:
    """Why a resolved image or image_tail value is not an image (None: it is)."""
    if isinstance(value, Template) and len(value.parts) == 1:
        ref = value.parts[0]
        if isinstance(ref, Ref) and ref.attr == "video":
            return (f"{ref.text} is a clip, not an image; use ${{steps.{ref.name}.first_frame}} "
                    f"or ${{steps.{ref.name}.last_frame}}")
        return None
    if isinstance(value, str) and is_http_url(value):
        return url_problem(value)
    return (f"{show(value) if not isinstance(value, Template) else 'this text'} is not an "
            "image: write ${inputs.NAME}, ${steps.ID.last_frame} or an http(s) URL")


def _in_file_order(needs: list[str], order: Mapping[str, int]) -> tuple[str, ...]:
    if len(needs) < 2:  # most steps wait for one step or none
        return tuple(needs)
    return tuple(sorted(set(needs), key=lambda n: order.get(n, -1)))


def _accounts_of(account: Written | None,
                 accounts: Mapping[str, str] | None) -> list[str | None]:
    """The accounts (emails; None: the default one) whose catalogue judges an effect step:
    its account's, or with none named every declared account's, any of which may run it.
    An account that is unknown, or whose email was reported, gives none."""
    if account is not None:
        email = (accounts or {}).get(str(account.value))
        return [email] if email else []
    return [e for e in accounts.values() if e] if accounts else [None]


def _account_problem(alias: str, accounts: Mapping[str, str] | None) -> str | None:
    if accounts is None:
        return (f"account '{alias}' is not declared: the file has no accounts; add "
                f"accounts: {{{alias}: {{email: ...}}}}")
    if alias not in accounts:
        hint = did_you_mean(alias, accounts) or f"; declared: {', '.join(accounts)}"
        return f"unknown account '{alias}'{hint}"
    return None


def _worked(name: str, value: Any) -> bool:
    """Whether a value needs more than taking as written (most values do not)."""
    if type(value) is str:
        return "${" in value or name in IMAGE_FIELDS or name == "duration"
    return name in IMAGE_FIELDS or name == "prompt" or name == "negative_prompt"


def _uses_matrix(written: Written) -> bool:
    return isinstance(written.value, str) and _MATRIX_REF.search(written.value) is not None


def _applicable(kind: str, values: dict[str, Written]) -> dict[str, Written]:
    """Without a default `mode` on a pro-only model, which takes no mode at all."""
    mode = values.get("mode")
    model = values.get("model_name")
    rules = MODELS.get(str(model.value) if model else DEFAULT_MODEL)
    if kind == "frames" and mode and mode.at[0] == "defaults" and rules and rules.pro_only:
        return {k: w for k, w in values.items() if k != "mode"}
    return values


def _matrix_origin(text: str, combo: dict[str, Written]) -> DocPath | None:
    """Where the matrix value came from, for a text that is exactly `${matrix.KEY}`."""
    match = _WHOLE_MATRIX.fullmatch(text)
    written = combo.get(match.group(1)) if match else None
    return written.at if written else None


_RULES: dict[str, Callable[[Mapping[str, Value], list[Catalogue]], Iterable[Finding]]] = {
    FRAMES.name: lambda params, catalogues: frames_findings(params),
    EFFECT.name: effect_findings,
}
"""Each kind's rules (klingflow.kinds has a row per kind; the loader refuses any other)."""
