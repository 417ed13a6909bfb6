"""Scalar values the YAML 1.2 core schema way, so YAML 1.1 surprises never happen.

`yes`, `no`, `on`, `off`, dates and sexagesimal numbers stay text; `0777` (a
leading zero) stays text as written instead of becoming octal or 777; `.inf`
and `.nan` stay text because no pipeline field can use them.
"""

from __future__ import annotations

import math
import re

STR_TAG = "tag:yaml.org,2002:str"
_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null")}
_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NUMBER_START = frozenset("-+.0123456789")
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_INT_BASE = re.compile(r"0o[0-7]+|0x[0-9a-fA-F]+")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")

Scalar = str | int | float | bool | None


class TagError(ValueError):
    """A scalar with a tag klingflow does not read, or a value its tag rejects."""


def resolve_plain(text: str) -> Scalar:
    """The value of an untagged plain scalar under the YAML 1.2 core schema."""
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if text[0] in _NUMBER_START:
        return _number(text)
    return text


def _number(text: str) -> Scalar:
    if text.isascii() and text.isdigit():  # the common case: 5, 10, 1800 (not ²: ascii only)
        return text if len(text) > 1 and text[0] == "0" else int(text)
    if _LEADING_ZERO.match(text):
        return text
    if _INT.fullmatch(text):
        return int(text)
    if _INT_BASE.fullmatch(text):
        return int(text, 0)
    if _FLOAT.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else text
    return text


def construct_tagged(tag: str, text: str) -> Scalar:
    """The value of a scalar with an explicit tag such as `!!str`; TagError otherwise."""
    if tag in ("!", STR_TAG):
        return text
    if tag not in _TAGS:
        raise TagError(f"unsupported tag '{tag}'; write a plain value without a tag")
    value = resolve_plain(text)
    kind = tag.rsplit(":", 1)[1]
    if not _has_kind(value, kind):
        raise TagError(f"'{text}' is not a valid !!{kind}")
    return value


def _has_kind(value: Scalar, kind: str) -> bool:
    expected: dict[str, tuple[type, ...]] = {
        "int": (int,), "float": (int, float), "bool": (bool,), "null": (type(None),)}
    if kind != "bool" and isinstance(value, bool):
        return False
    return isinstance(value, expected[kind])
