"""What earlier checks already reported, so later checks judge only what is left.

Every problem of a file is reported at once, but a value is judged once: a field
that the YAML reader or the schema found wrong is not resolved, checked against
the rules, or used to judge the fields that depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from klingflow.spec.issues import DocPath, Issue


@dataclass(frozen=True, slots=True)
class Reported:
    """The paths of the issues found so far, and indexes of them by section and step."""

    paths: frozenset[DocPath]
    sections: Mapping[str, frozenset[Any]]  # section -> its keys (or indexes) with an issue
    step_fields: Mapping[int, frozenset[str]]  # step index -> its fields with an issue

    @classmethod
    def of(cls, issues: Iterable[Issue]) -> Reported:
        paths = frozenset(i.path for i in issues)
        sections: dict[str, set[Any]] = {}
        fields: dict[int, set[str]] = {}
        for path in paths:
            if len(path) >= 2 and isinstance(path[0], str):
                sections.setdefault(path[0], set()).add(path[1])
            if len(path) >= 3 and path[0] == "steps" and isinstance(path[1], int):
                fields.setdefault(path[1], set()).add(str(path[2]))
        return cls(paths, {k: frozenset(v) for k, v in sections.items()},
                   {k: frozenset(v) for k, v in fields.items()})

    def keys(self, section: str) -> frozenset[Any]:
        """The keys (or list indexes) of `section` at or under which an issue was found."""
        return self.sections.get(section, frozenset())

    def fields(self, index: int) -> frozenset[str]:
        """The fields of step `index` at or under which an issue was found."""
        return self.step_fields.get(index, frozenset())

    def holds(self, at: DocPath) -> bool:
        """Whether the value written at `at` (a step's or a default's field) was reported."""
        if not self.paths:
            return False
        if at[0] == "defaults":
            return at[1] in self.keys("defaults")
        return len(at) > 2 and at[2] in self.fields(at[1])  # type: ignore[arg-type]
