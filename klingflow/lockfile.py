"""The lock file beside a pipeline (`NAME.lock.yaml`): what each step last produced.

One section per backend (the real service, the simulator, another API base), so a
simulated run never touches the results of real ones. Per step: its request key,
task id, account (alias and email), model, mode, duration, credits and output
hashes, in a stable order so it diffs and merges cleanly in git. Commit it: with
the cache, or through the service's task (restore from the lock), it reproduces a
run at no cost; lost, it can be rebuilt from the cache (`klingflow lock PIPELINE`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from klingflow.errors import UsageError
from klingflow.files import read_file, write_atomically
from klingflow.plan import Plan
from klingflow.spec.yamlload import describe_yaml_error

LOCK_VERSION = 2
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on big locks
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
LOCK_MARK = b"# klingflow lock file:"
# As git writes them: 7 by default, more with a conflict-marker-size attribute.
_CONFLICT_MARKER = re.compile(r"^\ufeff?(<{7,}|={7,}|>{7,})(?: |$)", re.MULTILINE)
MAX_BYTES = 256 * 1024 * 1024
"""Far more than any lock klingflow writes (about 400 bytes a step); a file over it is
refused, not read whole."""
HEADER = ("# klingflow lock file: what each step of {name} last produced, per backend.\n"
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
    email: str | None = None  # the account's: restoring through the service needs it

    def to_yaml(self) -> dict[str, Any]:
        return {"key": self.key, "task_id": self.task_id, "account": self.account,
                "email": self.email, "model": self.model, "mode": self.mode,
                "duration": self.duration, "credits": self.credits,
                "outputs": dict(sorted(self.outputs.items()))}


_FIELDS = frozenset(f.name for f in fields(LockEntry))
Section = Mapping[str, LockEntry]  # step id -> entry


@dataclass(frozen=True, slots=True)
class Lock:
    backends: Mapping[str, Section]

    def steps(self, backend: str) -> Section:
        return self.backends.get(backend, {})


LOCK_SUFFIX = ".lock.yaml"


def lock_path(pipeline_path: Path) -> Path:
    name = pipeline_path.name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else pipeline_path.stem
    return pipeline_path.with_name(stem + LOCK_SUFFIX)


def is_lock_file(path: Path) -> bool:
    """Whether `path` is a lock file: NAME.lock.yaml with the lock's header, or beside its
    pipeline NAME.yaml whatever it holds now (a merge conflict may have replaced the
    header)."""
    name = path.name
    if not name.endswith(LOCK_SUFFIX):
        return False
    if path.with_name(name[: -len(LOCK_SUFFIX)] + ".yaml").is_file():
        return True
    try:
        return read_file(path, len(LOCK_MARK)).startswith(LOCK_MARK)
    except OSError:
        return False


def read_lock(path: Path) -> Lock:
    """The lock at `path` (version 1 locks read as one section); an empty lock when there
    is none. A lock that cannot be read (a merge conflict, a bad edit) is a UsageError:
    ignoring it would pay again for what it holds, and rewriting it would lose it."""
    try:
        raw = read_file(path, MAX_BYTES)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        return Lock({})
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else None
        raise _unreadable(path, why or str(exc)) from exc
    if len(raw) > MAX_BYTES:
        raise _unreadable(path, f"it is over {MAX_BYTES // 1024 // 1024} MB, far more than any "
                                "lock klingflow writes")
    marker = _CONFLICT_MARKER.search(text)
    if marker:  # the YAML reader would only stumble later, at a line that is fine
        line = text.count("\n", 0, marker.start()) + 1
        raise _unreadable(path, f"a merge left its conflict marker '{marker.group(1)}' here",
                          f"{path}:{line}:1")
    try:
        data = yaml.load(text, Loader=_LOADER) or {}
        version = data.get("version")
        if version not in (1, LOCK_VERSION):
            raise _unreadable(path, f"version {version!r}, not one this klingflow reads "
                                    f"(1 or {LOCK_VERSION})")
        if version == 1:
            data = {"backends": {data.get("backend"): data.get("steps")}}
        backends = {str(name): _section(steps)
                    for name, steps in (data.get("backends") or {}).items() if name}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else None
        raise _unreadable(path, describe_yaml_error(exc), where) from exc
    except _BadEntry as exc:
        raise _unreadable(path, str(exc)) from exc
    except (TypeError, AttributeError, ValueError) as exc:
        raise _unreadable(path, "it does not have a lock's shape") from exc
    return Lock(backends)


def _unreadable(path: Path, why: str, where: str | None = None) -> UsageError:
    """The error; `where` is FILE:LINE:COL when the YAML reader could say, the form of a
    pipeline's problems, which editors and CI annotations jump to."""
    return UsageError(f"{where or path}: cannot read this lock file ({why}); it was left as "
                      "it is. Fix it (a merge conflict?) or delete it, then run again")


def _section(steps: Mapping[str, Any] | None) -> dict[str, LockEntry]:
    return {str(sid): _entry(str(sid), entry) for sid, entry in (steps or {}).items()}


class _BadEntry(ValueError):
    """A lock entry whose value is not one klingflow writes (a hand edit)."""


def _entry(step_id: str, raw: Mapping[str, Any]) -> LockEntry:
    """One step's entry, its values checked: a task id of 'abc' was shown by `plan` as a
    restore, and only the run found it gone."""
    entry = LockEntry(**{k: v for k, v in raw.items() if k in _FIELDS - {"outputs"}},
                      outputs=raw.get("outputs") or {})
    expected = (
        ("key", entry.key, isinstance(entry.key, str) and entry.key, "a request key"),
        ("task_id", entry.task_id, entry.task_id is None or _count(entry.task_id, 1),
         "a task id (a positive whole number) or null"),
        ("credits", entry.credits, entry.credits is None or _count(entry.credits, 0),
         "credits (a whole number, 0 or more) or null"),
        ("duration", entry.duration, _count(entry.duration, 1), "seconds (a whole number)"),
        ("outputs", entry.outputs, isinstance(entry.outputs, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in entry.outputs.items()),
         "a mapping of outputs to SHA-256 hashes"),
    )
    for name, value, good, what in expected:
        if not good:
            raise _BadEntry(f"{step_id}.{name} is {value!r}, not {what}")
    return entry


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def entry_for(plan: Plan, step_id: str, *, key: str, task_id: int | None,
              account: str | None, email: str | None, credits: int | None,
              outputs: Mapping[str, str]) -> LockEntry:
    planned = next(s for s in plan.steps if s.id == step_id)
    return LockEntry(key=key, task_id=task_id, account=account, email=email,
                     model=planned.model, mode=planned.mode, duration=planned.duration,
                     credits=credits, outputs=outputs)


def write_lock(path: Path, *, name: str, plan: Plan, backend: str, entries: Section,
               previous: Lock) -> None:
    """Write `backend`'s section (the steps of `plan` that have an entry, in execution
    order) and keep every other backend's section as it was."""
    section = {s.id: entries[s.id] for s in plan.steps if s.id in entries}
    backends = {**previous.backends, backend: section}
    document = {"version": LOCK_VERSION, "pipeline": name,
                "backends": {b: {sid: e.to_yaml() for sid, e in steps.items()}
                             for b, steps in sorted(backends.items()) if steps}}
    text = yaml.dump(document, Dumper=_DUMPER, sort_keys=False, default_flow_style=False,
                     width=100)
    write_atomically(path, HEADER.format(name=name) + text)
