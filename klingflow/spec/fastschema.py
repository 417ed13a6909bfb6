"""A compiled yes/no check for the keywords the pipeline schema uses.

jsonschema gives the verdicts and their messages, but walks a 10,000-step file in
seconds. This predicate answers only "valid or not", in a fraction of that time,
so jsonschema runs only on the parts that are invalid. It must agree with
jsonschema (a differential property test checks it); any keyword it does not
know makes compilation fail, so the schema cannot outgrow it silently.
"""

# The checks loop with `for`, not all()/any() over a generator: they run once per value
# of the file, and a generator per call was over 40% of the schema check's instructions.
# ruff: noqa: SIM110

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]
Root = dict[str, Any]
_IGNORED = frozenset(("$schema", "$id", "$defs", "title", "description", "default",
                      "then", "else", "properties", "additionalProperties", "required"))


def _always(value: Any) -> bool:
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def compile_check(schema: Any, root: Root) -> Check:
    """A predicate equivalent to `jsonschema.Draft202012Validator(root).is_valid` at `schema`."""
    if isinstance(schema, bool):
        return _always if schema else lambda v: False
    checks = [_keyword(name, value, schema, root) for name, value in schema.items()
              if name not in _IGNORED]
    if {"properties", "additionalProperties", "required"} & schema.keys():
        checks.append(_object(schema, root))
    return _all(checks)


def _all(checks: list[Check]) -> Check:
    checks = [c for c in checks if c is not _always]
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)

    def check(v: Any) -> bool:
        for each in checks:
            if not each(v):
                return False
        return True
    return check


def _keyword(name: str, value: Any, schema: dict[str, Any], root: Root) -> Check:
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"fastschema does not know the keyword {name!r}")
    return builder(value, schema, root)


def _ref(value: str, schema: dict[str, Any], root: Root) -> Check:
    if not value.startswith("#/$defs/"):
        raise ValueError(f"fastschema only follows local $defs references, not {value!r}")
    return compile_check(root["$defs"][value.removeprefix("#/$defs/")], root)


def _type(value: str | list[str], schema: dict[str, Any], root: Root) -> Check:
    if isinstance(value, str):
        return _TYPES[value]
    return _any([_TYPES[t] for t in value])


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1.0 is 1, also inside lists and objects."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return type(a) is type(b) and a == b


def _enum(value: list[Any], schema: dict[str, Any], root: Root) -> Check:
    texts = frozenset(v for v in value if isinstance(v, str))
    others = [v for v in value if not isinstance(v, str)]
    return lambda v: v in texts if isinstance(v, str) else any(_same(v, o) for o in others)


def _const(value: Any, schema: dict[str, Any], root: Root) -> Check:
    if isinstance(value, str):
        return lambda v: v == value and isinstance(v, str)
    return lambda v: _same(v, value)


def _pattern(value: str, schema: dict[str, Any], root: Root) -> Check:
    search = re.compile(value).search
    return lambda v: not isinstance(v, str) or search(v) is not None


def _numeric(test: Callable[[Any, Any], bool]) -> Callable[..., Check]:
    def build(value: float, schema: dict[str, Any], root: Root) -> Check:
        return lambda v: not _is_number(v) or test(v, value)
    return build


def _sized(kind: type, test: Callable[[int, int], bool]) -> Callable[..., Check]:
    def build(value: int, schema: dict[str, Any], root: Root) -> Check:
        return lambda v: not isinstance(v, kind) or test(len(v), value)  # type: ignore[arg-type]
    return build


def _object(schema: dict[str, Any], root: Root) -> Check:
    """properties, additionalProperties and required, in one pass over the mapping."""
    known = {key: compile_check(sub, root) for key, sub in schema.get("properties", {}).items()}
    other = compile_check(schema.get("additionalProperties", True), root)
    required = tuple(schema.get("required", ()))

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        for key, item in v.items():
            if not known.get(key, other)(item):
                return False
        for key in required:
            if key not in v:
                return False
        return True

    def check_known(v: Any) -> bool:  # any other key is allowed: look up the known ones
        if not isinstance(v, dict):
            return True
        for key in required:
            if key not in v:
                return False
        for key, test in known_items:
            if key in v and not test(v[key]):
                return False
        return True

    known_items = tuple(known.items())
    return check_known if other is _always else check


def _every(kind: type[list[Any]] | type[dict[Any, Any]]) -> Callable[..., Check]:
    """`items` (kind list) and `propertyNames` (kind dict, whose members are its keys)."""
    def build(value: Any, schema: dict[str, Any], root: Root) -> Check:
        check = compile_check(value, root)

        def every(v: Any) -> bool:
            if isinstance(v, kind):
                for member in v:
                    if not check(member):
                        return False
            return True
        return every
    return build


def _any_of(value: list[Any], schema: dict[str, Any], root: Root) -> Check:
    return _any([compile_check(sub, root) for sub in value])


def _any(checks: list[Check]) -> Check:
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) or second(v)

    def check(v: Any) -> bool:
        for each in checks:
            if each(v):
                return True
        return False
    return check


def _if(value: Any, schema: dict[str, Any], root: Root) -> Check:
    test = compile_check(value, root)
    then = compile_check(schema.get("then", True), root)
    other = compile_check(schema.get("else", True), root)
    return lambda v: then(v) if test(v) else other(v)


_BUILDERS: dict[str, Callable[[Any, dict[str, Any], Root], Check]] = {
    "$ref": _ref,
    "type": _type,
    "enum": _enum,
    "const": _const,
    "pattern": _pattern,
    "minimum": _numeric(lambda v, limit: v >= limit),
    "maximum": _numeric(lambda v, limit: v <= limit),
    "exclusiveMinimum": _numeric(lambda v, limit: v > limit),
    "minLength": _sized(str, lambda n, limit: n >= limit),
    "maxLength": _sized(str, lambda n, limit: n <= limit),
    "minItems": _sized(list, lambda n, limit: n >= limit),
    "minProperties": _sized(dict, lambda n, limit: n >= limit),
    "propertyNames": _every(dict),
    "items": _every(list),
    "anyOf": _any_of,
    "if": _if,
}
