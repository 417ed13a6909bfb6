"""How long tasks took, kept in the cache: the poll policy's idea of when a task ends."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path

from klingflow.files import read_text_file, write_atomically

KEPT = 20  # observations per kind of task


class Durations:
    """Seconds from submit to final per (backend, kind, model, mode, duration)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen = _read(path)
        self._new: dict[str, list[float]] = {}

    @staticmethod
    def key(backend: str, kind: str, model: str, mode: str, duration: int) -> str:
        return f"{backend}|{kind}|{model}|{mode}|{duration}"

    def expected(self, key: str) -> float | None:
        """The median of the latest observations, or None before the first."""
        seen = self._seen.get(key, []) + self._new.get(key, [])
        return statistics.median(seen[-KEPT:]) if seen else None

    def record(self, key: str, seconds: float) -> None:
        self._new.setdefault(key, []).append(round(seconds, 3))

    def save(self) -> None:
        """Merge this run's observations into the file (other runs may have written it)."""
        if not self._new:
            return
        merged = _read(self._path)
        for key, values in self._new.items():
            merged[key] = (merged.get(key, []) + values)[-KEPT:]
        write_atomically(self._path, json.dumps(merged, indent=0, sort_keys=True))
        self._seen, self._new = merged, {}


def _read(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(read_text_file(path))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, Mapping):
        return {}
    return {str(k): [float(x) for x in v if isinstance(x, int | float)]
            for k, v in data.items() if isinstance(v, list)}
