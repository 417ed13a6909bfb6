"""Located issues, before they become `Problem`s with a file name and a path text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DocPath = tuple[str | int, ...]
"""A path into the document: `("steps", 2, "duration")`."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One thing wrong, at a 1-based line and column, about the value at `path`."""

    path: DocPath
    line: int
    col: int
    message: str
    shown: str = ""  # the path as shown, when it differs from `path` (an expanded step)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """Plain data (dicts, lists, scalars) and where each value and key was written."""

    data: Any
    values: dict[DocPath, tuple[int, int]]
    keys: dict[DocPath, tuple[int, int]]

    def value_at(self, path: DocPath) -> tuple[int, int]:
        """Where the value at `path` was written, or its nearest written ancestor."""
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, (1, 1))

    def key_at(self, path: DocPath) -> tuple[int, int]:
        """Where the key of the value at `path` was written (the value's place if none)."""
        return self.keys.get(path) or self.value_at(path)
