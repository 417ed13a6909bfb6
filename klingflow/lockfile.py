"""The lock file beside a pipeline (`NAME.lock.yaml`): what each step last produced.

Per step: its request key, task id, account alias, model, mode, duration,
credits and output hashes, in a stable order so it diffs and merges cleanly in
git. With the cache it reproduces a run at no cost; lost, it can be rebuilt
from the cache (`klingflow lock PIPELINE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from klingflow.files import write_atomically
from klingflow.plan import Plan

LOCK_VERSION = 1
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on big locks
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
LOCK_MARK = b"# klingflow lock file:"
HEADER = ("# klingflow lock file: what each step of {name} last produced.\n"
          "# Written by `klingflow run`; commit it with the pipeline. Do not edit.\n")


@dataclass(frozen=True, slots=True)
class LockEntry:
    key: str
    task_id: int | None
    account: str | None
    model: str
    mode: str
    duration: int
    credits: int | None
    outputs: Mapping[str, str]  # attribute -> sha256

    def to_yaml(self) -> dict[str, Any]:
        return {"key": self.key, "task_id": self.task_id, "account": self.account,
                "model": self.model, "mode": self.mode, "duration": self.duration,
                "credits": self.credits, "outputs": dict(sorted(self.outputs.items()))}


@dataclass(frozen=True, slots=True)
class Lock:
    backend: str | None
    steps: Mapping[str, LockEntry]


def lock_path(pipeline_path: Path) -> Path:
    name = pipeline_path.name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else pipeline_path.stem
    return pipeline_path.with_name(f"{stem}.lock.yaml")


def is_lock_file(path: Path) -> bool:
    """Whether `path` is a lock file klingflow wrote: NAME.lock.yaml, with the lock's header."""
    if not path.name.endswith(".lock.yaml"):
        return False
    try:
        with path.open("rb") as handle:
            start = handle.read(len(LOCK_MARK))
    except OSError:
        return False
    return start == LOCK_MARK


def read_lock(path: Path) -> Lock:
    """The lock at `path`; an empty lock when there is none or it is unreadable."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER) or {}
        steps = {sid: LockEntry(**{**entry, "outputs": entry.get("outputs") or {}})
                 for sid, entry in (data.get("steps") or {}).items()}
    except (OSError, yaml.YAMLError, TypeError, AttributeError):
        return Lock(None, {})
    return Lock(data.get("backend"), steps)


def entry_for(plan: Plan, step_id: str, *, key: str, task_id: int | None,
              account: str | None, credits: int | None,
              outputs: Mapping[str, str]) -> LockEntry:
    planned = next(s for s in plan.steps if s.id == step_id)
    return LockEntry(key=key, task_id=task_id, account=account, model=planned.model,
                     mode=planned.mode, duration=planned.duration, credits=credits,
                     outputs=outputs)


def write_lock(path: Path, *, name: str, backend: str, plan: Plan,
               entries: Mapping[str, LockEntry]) -> None:
    """Write the steps of `plan` that have an entry, in execution order."""
    steps = {s.id: entries[s.id].to_yaml() for s in plan.steps if s.id in entries}
    document = {"version": LOCK_VERSION, "pipeline": name, "backend": backend, "steps": steps}
    text = yaml.dump(document, Dumper=_DUMPER, sort_keys=False, default_flow_style=False,
                     width=100)
    write_atomically(path, HEADER.format(name=name) + text)
