"""The JSON Schema's verdicts, each located at the offending value (or key)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from klingflow.kinds import KINDS
from klingflow.schema_files import load_schema
from klingflow.spec.fastschema import Check, compile_check
from klingflow.spec.issues import DocPath, Issue, YamlDocument
from klingflow.spec.wording import did_you_mean, one_of, show

if TYPE_CHECKING:  # jsonschema is imported only when a file is invalid (it costs ~80 ms)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

_TYPE_HINTS = {
    "boolean": "write true or false",
    "integer": "write a whole number",
    "number": "write a number",
    "string": "write it as text (in quotes if it looks like a number)",
    "array": "write a list: [a, b] or one '- item' per line",
    "object": "write 'key: value' lines under it",
}
_PATTERN_WORDS = {
    "^[a-z0-9][a-z0-9_-]*$": "is not a slug; use lowercase letters, digits, '-' and '_', "
                             "starting with a letter or a digit",
    "^[A-Za-z0-9][A-Za-z0-9_-]*$": "is not a valid name; use letters, digits, '-' and '_', "
                                   "starting with a letter or a digit",
    "^[a-z0-9][a-z0-9_-]*(@[0-9]+)?$": "is not a step id; write an id such as 'intro' or "
                                       "one matrix expansion such as 'looks@1'",
    "^[^@\\s]+@[^@\\s]+$": "is not an email address",
    "^[0-9]+$": "is not a whole number of seconds; write e.g. 5 or 10",
}


@cache
def _schema() -> dict[str, Any]:
    return load_schema("pipeline")


@cache
def _validator(definition: str) -> Draft202012Validator:
    """The validator of one `$defs` entry."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator({"$defs": _schema()["$defs"], "$ref": f"#/$defs/{definition}"})


@cache
def _fast(definition: str | None) -> Check:
    schema = _schema()
    return compile_check(schema if definition is None else schema["$defs"][definition], schema)


@cache
def _top_validator() -> Draft202012Validator:
    """The whole file's validator without the steps' items (checked one by one)."""
    schema = _schema()
    steps = {k: v for k, v in schema["properties"]["steps"].items() if k != "items"}
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**schema, "properties": {**schema["properties"], "steps": steps}})


def schema_issues(doc: YamlDocument) -> list[Issue]:
    """Every verdict of the schema on the document, located."""
    data = doc.data
    if _fast(None)(data):
        return []
    issues = list(_issues(_top_validator().iter_errors(data), doc))
    steps = data.get("steps") if isinstance(data, dict) else None
    for n, step in enumerate(steps if isinstance(steps, list) else ()):
        issues += value_issues(step, "step", ("steps", n), doc)
    return issues


def value_issues(value: Any, definition: str, at: DocPath, doc: YamlDocument) -> list[Issue]:
    """The verdicts of `$defs/DEFINITION` on a value written at `at`."""
    if _fast(definition)(value):
        return []
    return list(_issues(_validator(definition).iter_errors(value), doc, at))


def _issues(errors: Iterator[ValidationError], doc: YamlDocument,
            prefix: DocPath = ()) -> Iterator[Issue]:
    for error in errors:
        yield from _located(error, doc, prefix)


def _located(error: ValidationError, doc: YamlDocument, prefix: DocPath) -> Iterator[Issue]:
    path = prefix + tuple(error.absolute_path)
    kind = error.validator
    if kind == "anyOf":
        yield from _issues(iter(_first_branch(error)), doc, prefix)
    elif kind == "additionalProperties":
        yield from _unknown_keys(error, path, doc)
    elif "propertyNames" in error.absolute_schema_path:
        key_path = (*path, error.instance)
        yield Issue(key_path, *doc.key_at(key_path), _message(error))
    else:
        yield Issue(path, *doc.value_at(path), _message(error))


def _first_branch(error: ValidationError) -> list[ValidationError]:
    """What the real (first) alternative says; the others only allow `${...}`."""
    return [e for e in error.context or () if e.relative_schema_path[0] == 0]


def _unknown_keys(error: ValidationError, path: DocPath, doc: YamlDocument) -> Iterator[Issue]:
    allowed = list(error.schema.get("properties", {}))
    for key in error.instance:
        if key not in allowed:
            key_path = (*path, key)
            yield Issue(key_path, *doc.key_at(key_path), _unknown_key(key, allowed, error.schema))


def _unknown_key(key: str, allowed: list[str], schema: dict[str, Any]) -> str:
    if key == "<<":
        return "YAML merge keys (<<) are not supported; put shared values under defaults"
    kind = schema.get("properties", {}).get("kind", {}).get("const")
    others = [k.schema for k in KINDS.values() if k.name != kind] if kind else []
    if any(key in _schema()["$defs"][other]["properties"] for other in others):
        return (f"unknown key '{key}': it is not a field of {kind} steps; remove it "
                "or change kind")
    hint = did_you_mean(key, allowed) or f"; expected one of: {', '.join(allowed)}"
    return f"unknown key '{key}'{hint}"


def _message(error: ValidationError) -> str:
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        types = [value] if isinstance(value, str) else value
        expected = " or ".join(f"'{t}'" for t in types)
        return f"{show(instance)} is not of type {expected}; {_TYPE_HINTS[types[0]]}"
    if kind == "enum":
        hint = did_you_mean(instance, map(str, value)) if isinstance(instance, str) else ""
        return f"{show(instance)} is not one of {one_of(value)}{hint}"
    if kind == "const":
        return f"{show(instance)} is not {show(value)}"
    if kind == "pattern":
        return f"{show(instance)} {_PATTERN_WORDS.get(value, f'does not match {value!r}')}"
    if kind == "required":
        return f"missing required key {error.message.removesuffix(' is a required property')}"
    return _size_message(error)


def _size_message(error: ValidationError) -> str:
    if error.validator == "maxLength":
        return (f"{show(error.instance)} is {len(error.instance)} characters long; at most "
                f"{error.validator_value}")
    words = {"minItems": "an empty list; give at least one item",
             "minProperties": "an empty mapping; give at least one key",
             "minLength": "an empty text; write a value"}
    return words.get(str(error.validator), error.message)
