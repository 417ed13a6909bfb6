"""`${...}` references: finding them in text and checking what they name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from klingflow.spec.pipeline import STEP_ATTRIBUTES, Ref, Template
from klingflow.spec.wording import did_you_mean

SCOPES = ("inputs", "vars", "steps", "matrix")
_TOKEN = re.compile(r"\$\{([^{}]*)\}")


class RefError(ValueError):
    """A reference that names nothing, or cannot be used where it is."""

    def messages(self) -> list[str]:
        """One message per problem: a text may hold several bad references."""
        return [str(self)]


class RefErrors(RefError):
    """Every bad reference of one text, in the order they are written."""

    def __init__(self, errors: list[RefError]) -> None:
        super().__init__(str(errors[0]))
        self.errors = errors

    def messages(self) -> list[str]:
        return [str(error) for error in self.errors]


class ReportedRef(RefError):
    """A reference to a value whose own problem is already reported: not reported again."""


@dataclass(frozen=True, slots=True)
class StepEntry:
    """What a reference may name of a step: its id and its expansions."""

    id: str
    expansions: tuple[str, ...] | None  # None: a matrix whose size is unknown (invalid)
    matrix: bool


@dataclass(frozen=True, slots=True)
class Names:
    """Everything a reference may name, and the matrix values of one expansion."""

    vars: Mapping[str, str | int | float]
    inputs: frozenset[str]
    steps: Mapping[str, StepEntry]
    matrix: Mapping[str, Any] | None = None  # key -> resolved value; None outside a matrix
    runtime: bool = True  # may ${inputs.*} / ${steps.*} be used here?
    broken_vars: frozenset[str] = frozenset()  # declared, but their value was reported


def has_refs(text: str) -> bool:
    return "${" in text


def resolve_text(text: str, names: Names) -> Any:
    """`text` with vars and matrix values substituted; run-time references as a Template.

    A text that is exactly one reference takes the referenced value's own type.
    Raises RefError if a reference does not hold (RefErrors if several do not: each is
    reported, so that one pass over a file finds them all).
    """
    tokens, unclosed = _tokens(text)
    parts: list[Any] = []
    errors: list[RefError] = []
    for token in tokens:
        if isinstance(token, str):
            parts.append(token)
            continue
        try:
            parts.append(_lookup(token, names))
        except RefError as exc:
            errors.append(exc)
    if unclosed is not None:
        errors.append(unclosed)
    if errors:
        raise _together(errors)
    if len(tokens) == 1 and not isinstance(tokens[0], str):
        return parts[0]
    return _join(parts)


def _together(errors: list[RefError]) -> RefError:
    """The error to raise for a text's bad references: those not reported before (a
    ReportedRef names a value whose own problem is), or a ReportedRef if all were."""
    shown = [error for error in errors if not isinstance(error, ReportedRef)]
    if not shown:
        return errors[0]
    return shown[0] if len(shown) == 1 else RefErrors(shown)


def _tokens(text: str) -> tuple[list[str | tuple[str, ...]], RefError | None]:
    """The text's plain pieces and references, and the error of an unclosed `${` at its
    end (the references before it are still checked)."""
    pieces = _TOKEN.split(text)  # text, reference, text, ..., text (one C call)
    unclosed = None
    if "${" in pieces[-1]:
        unclosed = RefError(f"unclosed '${{' in {pieces[-1]!r}; write ${{scope.name}} with a "
                            "closing '}'")
    tokens: list[str | tuple[str, ...]] = []
    for n, piece in enumerate(pieces):
        if n % 2:
            tokens.append(tuple(piece.strip().split(".")))
        elif piece:
            tokens.append(piece)
    return tokens, unclosed


def _join(parts: list[Any]) -> str | Template:
    if all(type(part) is str for part in parts):  # vars and matrix values only: plain text
        return "".join(parts)
    merged: list[str | Ref] = []
    for part in _flatten(parts):
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    if all(isinstance(p, str) for p in merged):
        return "".join(merged)  # type: ignore[arg-type]
    return Template(tuple(merged))


def _flatten(parts: list[Any]) -> list[str | Ref]:
    flat: list[str | Ref] = []
    for part in parts:
        if isinstance(part, Template):
            flat.extend(part.parts)
        elif isinstance(part, Ref):
            flat.append(part)
        else:
            flat.append(_text_of(part))
    return flat


def _text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(parts: tuple[str, ...], names: Names) -> Any:
    scope = parts[0]
    check = _CHECKS.get(scope)
    if check is None:
        raise RefError(f"unknown reference ${{{'.'.join(parts)}}}: '{scope}' is not one of "
                       f"{', '.join(SCOPES)}{did_you_mean(scope, SCOPES)}")
    return check(parts, names)


def _shape(parts: tuple[str, ...], size: int, example: str) -> None:
    if len(parts) != size or not all(parts):
        raise RefError(f"malformed reference ${{{'.'.join(parts)}}}; write {example}")


def _input(parts: tuple[str, ...], names: Names) -> Template:
    _shape(parts, 2, "${inputs.NAME}")
    _runtime(parts, names)
    _known(parts[1], names.inputs, "input", "inputs")
    return Template((Ref("inputs", parts[1]),))


def _var(parts: tuple[str, ...], names: Names) -> Any:
    _shape(parts, 2, "${vars.NAME}")
    if parts[1] in names.broken_vars:
        raise ReportedRef(f"${{vars.{parts[1]}}} names a var whose value is wrong")
    _known(parts[1], names.vars, "var", "vars")
    return names.vars[parts[1]]


def _matrix(parts: tuple[str, ...], names: Names) -> Any:
    _shape(parts, 2, "${matrix.KEY}")
    if names.matrix is None:
        raise RefError(f"${{matrix.{parts[1]}}} is used outside a matrix; add a matrix to "
                       "this step or write the value itself")
    _known(parts[1], names.matrix, "matrix key", "matrix")
    return names.matrix[parts[1]]


def _runtime(parts: tuple[str, ...], names: Names) -> None:
    if not names.runtime:
        raise RefError(f"${{{'.'.join(parts)}}} is only known at run time and cannot be used "
                       "here; use ${vars.*} or write the value")


def _known(name: str, options: Mapping[str, Any] | frozenset[str], noun: str, scope: str) -> None:
    if name not in options:
        hint = did_you_mean(name, options) or (
            f"; declared: {', '.join(sorted(options))}" if options else f"; no {scope} are declared")
        raise RefError(f"unknown {noun} '{name}' in ${{{scope}.{name}}}{hint}")


def _step(parts: tuple[str, ...], names: Names) -> Template:
    _shape(parts, 3, "${steps.ID.video}, ${steps.ID.first_frame} or ${steps.ID.last_frame}")
    _runtime(parts, names)
    name, attr = parts[1], parts[2]
    step_name(name, names.steps, f"${{steps.{name}.{attr}}}")
    if attr not in STEP_ATTRIBUTES:
        raise RefError(f"unknown attribute '{attr}' in ${{steps.{name}.{attr}}}: a step "
                       f"produces {', '.join(STEP_ATTRIBUTES)}{did_you_mean(attr, STEP_ATTRIBUTES)}")
    return Template((Ref("steps", name, attr),))


def step_name(name: str, steps: Mapping[str, StepEntry], written: str,
              whole_matrix: bool = False) -> tuple[str, ...] | None:
    """The expanded step ids `name` stands for (None: unknown, matrix invalid).

    A matrix step's id alone stands for all its expansions only where
    `whole_matrix` (needs, concat); a reference must name one expansion.
    """
    base, at, index = name.partition("@")
    entry = steps.get(base)
    if entry is None:
        hint = did_you_mean(base, steps) or f"; steps are: {', '.join(list(steps)[:12])}"
        raise RefError(f"unknown step '{base}' in {written}{hint}")
    if entry.expansions is None:
        return None
    if not at:
        return _whole(entry, written, whole_matrix)
    return (_expansion(entry, name, index, written),)


def _whole(entry: StepEntry, written: str, whole_matrix: bool) -> tuple[str, ...]:
    if entry.matrix and not whole_matrix:
        names = entry.expansions or ()
        raise RefError(f"{written}: '{entry.id}' is a matrix step; name one of its "
                       f"{len(names)} expansions: {_span(names)}")
    return entry.expansions or ()


def _expansion(entry: StepEntry, name: str, index: str, written: str) -> str:
    names = entry.expansions or ()
    if not entry.matrix:
        raise RefError(f"{written}: '{entry.id}' is not a matrix step; write '{entry.id}' "
                       "without '@'")
    if not (index.isdigit() and str(int(index)) == index and int(index) < len(names)):
        raise RefError(f"{written}: '{entry.id}' has {len(names)} expansions: {_span(names)}")
    return name  # checked by its number: a 10,000-step matrix is not searched per reference


_CHECKS = {"inputs": _input, "vars": _var, "steps": _step, "matrix": _matrix}


def _span(names: tuple[str, ...]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} .. {names[-1]}"
