"""Strict YAML: plain data plus the 1-based position of every value and key.

Built from the parser's events (libyaml when available) rather than PyYAML's
composer, so that nesting depth and alias expansion are bounded before any
recursion, scalars follow the YAML 1.2 core schema (see `scalars`), and a
duplicate key is an issue at the second key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from klingflow.spec.issues import DocPath, Issue, YamlDocument
from klingflow.spec.scalars import TagError, construct_tagged, resolve_plain

_FAST_PARSER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PURE_PARSER: type = yaml.SafeLoader

MAX_DEPTH = 64
MAX_ALIAS_NODES = 100_000
_PARSER_DEPTH_TEXT = "exceeded maximum nesting depth"  # libyaml's own limit, since 0.2.6
_SKIPPED: DocPath = ("\x00skipped",)  # where values that are dropped are built
_SCALAR, _MAPPING_START, _MAPPING_END = yaml.ScalarEvent, yaml.MappingStartEvent, \
    yaml.MappingEndEvent
_SEQUENCE_START, _SEQUENCE_END = yaml.SequenceStartEvent, yaml.SequenceEndEvent


class _Abort(Exception):
    """Stop reading: the rest of the document cannot be trusted."""

    def __init__(self, issue: Issue) -> None:
        self.issue = issue


@dataclass(slots=True)
class _Frame:
    """A mapping or sequence being built."""

    container: dict[str, Any] | list[Any]
    path: DocPath
    anchor: str | None
    count0: int
    key: str | None = None  # the mapping key whose value comes next
    skip: bool = False  # the value that comes next is dropped (duplicate or bad key)


@dataclass(slots=True)
class _Builder:
    parser: Any
    values: dict[DocPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[DocPath, tuple[int, int]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    anchors: dict[str, tuple[Any, int]] = field(default_factory=dict)
    count: int = 0
    aliased: int = 0

    def document(self) -> Any:
        self._expect(yaml.StreamStartEvent)
        event = self.parser.get_event()
        if isinstance(event, yaml.StreamEndEvent):
            return None
        data = self._node(self.parser.get_event(), ())
        self._expect(yaml.DocumentEndEvent)
        event = self.parser.get_event()
        if isinstance(event, yaml.DocumentStartEvent):
            self._issue((), event, "a second YAML document starts here; a pipeline file "
                                   "holds exactly one (remove the '---' or split the file)")
        return data

    def _expect(self, kind: type) -> None:
        event = self.parser.get_event()
        if not isinstance(event, kind):  # pragma: no cover - the parser guarantees it
            raise _Abort(Issue((), *_where(event), f"unexpected YAML event {event}"))

    def _issue(self, path: DocPath, event: Any, message: str) -> None:
        self.issues.append(Issue(path, *_where(event), message))

    def _node(self, event: Any, path: DocPath) -> Any:
        """Build one node (iteratively, however deep) starting at `event`.

        The loop runs once per YAML event (~400,000 in a 10,000-step file), so the
        common cases, a plain untagged scalar and a new plain key, are handled inline;
        `_next_slot` handles the rest."""
        get_event, values, keys = self.parser.get_event, self.values, self.keys
        stack: list[_Frame] = []
        while True:
            kind = type(event)
            if kind is _SCALAR and event.anchor is None and event.tag is None:
                mark = event.start_mark
                values[path] = (mark.line + 1, mark.column + 1)
                self.count += 1
                value = resolve_plain(event.value) if event.implicit[0] else event.value
            elif kind is _MAPPING_START or kind is _SEQUENCE_START:
                stack.append(self._open(event, path, len(stack)))
                path, event = self._next_slot(stack[-1], get_event())
                continue
            elif kind is _MAPPING_END or kind is _SEQUENCE_END:
                value = self._close(stack.pop())
            else:
                value = self._leaf(event, path)
            if not stack:
                return value
            frame = stack[-1]
            container = frame.container
            if type(container) is list:
                container.append(value)
                path, event = (*frame.path, len(container)), get_event()
                continue
            if not frame.skip:
                container[frame.key] = value  # type: ignore[index,call-overload]
            event = get_event()
            key = event.value if type(event) is _SCALAR else None
            if key is None or key in container:  # the end, a duplicate or a complex key
                path, event = self._next_slot(frame, event)
                continue
            frame.key, frame.skip = key, False
            path = (*frame.path, key)
            mark = event.start_mark
            keys[path] = (mark.line + 1, mark.column + 1)
            event = get_event()

    def _open(self, event: Any, path: DocPath, depth: int) -> _Frame:
        if depth >= MAX_DEPTH:
            raise _Abort(Issue(path, *_where(event), f"nested deeper than {MAX_DEPTH} levels; "
                                                     "a pipeline is only a few levels deep"))
        self._mark(path, event)
        self.count += 1
        mapping = isinstance(event, yaml.MappingStartEvent)
        return _Frame({} if mapping else [], path, event.anchor, self.count)

    def _close(self, frame: _Frame) -> Any:
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (frame.container, self.count - frame.count0 + 1)
        return frame.container

    def _next_slot(self, frame: _Frame, event: Any) -> tuple[DocPath, Any]:
        """The path of the value `event` starts; reads a mapping's key first."""
        container = frame.container
        if isinstance(container, list):
            return (*frame.path, len(container)), event
        if isinstance(event, yaml.MappingEndEvent):
            return frame.path, event
        self._key(frame, event)
        value_event = self.parser.get_event()
        if frame.skip or frame.key is None:
            return _SKIPPED, value_event
        return (*frame.path, frame.key), value_event

    def _key(self, frame: _Frame, event: Any) -> None:
        frame.skip = False
        if not isinstance(event, yaml.ScalarEvent):
            self._issue(frame.path, event, "a key must be plain text, not a list, a mapping or "
                                           "an alias")
            self._discard(event)
            frame.key, frame.skip = None, True
            return
        key = event.value
        frame.key = key
        path = (*frame.path, key)
        if key in frame.container:
            line = self.keys[path][0]
            self._issue(path, event, f"duplicate key '{key}' (first at line {line}); remove "
                                     "one of them")
            frame.skip = True
            return
        self.keys[path] = _where(event)

    def _discard(self, event: Any) -> None:
        """Read past a node that cannot be used (a complex key)."""
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._node(event, _SKIPPED)

    def _leaf(self, event: Any, path: DocPath) -> Any:
        self._mark(path, event)
        if isinstance(event, yaml.AliasEvent):
            return self._alias(event, path)
        self.count += 1
        value = self._scalar(event, path)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1)
        return value

    def _mark(self, path: DocPath, event: Any) -> None:
        self.values[path] = _where(event)

    def _scalar(self, event: Any, path: DocPath) -> Any:
        tag = event.tag
        if tag is None:
            return resolve_plain(event.value) if event.implicit[0] else event.value
        try:
            return construct_tagged(tag, event.value)
        except TagError as exc:
            self._issue(path, event, str(exc))
            return event.value

    def _alias(self, event: Any, path: DocPath) -> Any:
        if event.anchor not in self.anchors:
            self._issue(path, event, f"unknown alias '*{event.anchor}'; define '&{event.anchor}' "
                                     "before using it")
            return None
        value, size = self.anchors[event.anchor]
        self.count += size
        self.aliased += size
        if self.aliased > MAX_ALIAS_NODES:
            raise _Abort(Issue(path, *_where(event), f"aliases expand to more than "
                                                     f"{MAX_ALIAS_NODES:,} values (an alias "
                                                     "bomb?); write the values out instead"))
        return value


def _where(event: Any) -> tuple[int, int]:
    mark = event.start_mark
    return mark.line + 1, mark.column + 1


def parse_yaml(text: str) -> tuple[YamlDocument | None, list[Issue]]:
    """The document and the issues found; no document when it cannot be trusted.

    libyaml (PyYAML 6.0.4 and later) refuses flow nesting past its own limit while it
    scans ahead (up to a line's first 1,024 characters), before the events reach
    `MAX_DEPTH`. Such a text is read again with the pure-Python parser, which has no
    limit of its own, so the answer is klingflow's located message on any PyYAML.
    """
    found = _parse(text, _FAST_PARSER)
    if _FAST_PARSER is not _PURE_PARSER and _parser_refused_depth(found[1]):
        found = _parse(text, _PURE_PARSER)
    return found


def _parse(text: str, parser: type) -> tuple[YamlDocument | None, list[Issue]]:
    builder = _Builder(parser(text))
    try:
        data = builder.document()
    except _Abort as stop:
        return None, [*builder.issues, stop.issue]
    except yaml.YAMLError as exc:
        return None, [*builder.issues, _syntax_issue(exc, text)]
    finally:
        builder.parser.dispose()
    return YamlDocument(data, builder.values, builder.keys), builder.issues


def _parser_refused_depth(issues: list[Issue]) -> bool:
    return bool(issues) and _PARSER_DEPTH_TEXT in issues[-1].message


def _syntax_issue(exc: yaml.YAMLError, text: str) -> Issue:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        line, col = mark.line + 1, mark.column + 1
    else:
        before = text[: getattr(exc, "position", 0)]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
    return Issue((), line, col, f"YAML syntax error: {describe_yaml_error(exc)}")


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """What the YAML reader found, and what it was reading then (its line)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        return f"{problem} ({context} at line {context_mark.line + 1})"
    return f"{problem} ({context})" if context else str(problem)
