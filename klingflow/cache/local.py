"""The local cache (`.klingflow/` beside the pipeline, or `$KLINGFLOW_HOME`).

Content-addressed: results are keyed by the canonical request with every input
replaced by its content hash, files are stored by their SHA-256. Failures are
never cached. A per-key file lock keeps two runs from paying for one step.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from klingflow.files import read_text_file, temporary_beside, write_atomically

CACHE_DIR_NAME = ".klingflow"
UNUSABLE = "unusable-locked-tasks.json"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    task_id: int | None
    account: str | None
    credits: int | None
    outputs: Mapping[str, str]  # attribute (video, first_frame, last_frame) -> sha256
    request: Mapping[str, Any]  # the canonical request the key was made of


class Cache:
    """Results by request key, files by content hash; shared by runs and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._unusable: dict[int, str] | None = None
        for sub in ("entries", "objects", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def lookup(self, key: str) -> CacheEntry | None:
        path = self.root / "entries" / f"{key}.json"
        try:
            entry = CacheEntry(**json.loads(read_text_file(path)))
        except (OSError, ValueError, TypeError):  # gone, damaged, or not an entry's shape
            return None
        if not all(self.object_path(sha).exists() for sha in entry.outputs.values()):
            return None
        return entry

    def store(self, entry: CacheEntry, files: Mapping[str, Path]) -> None:
        """Keep the files (hashed as `entry.outputs` says), then the entry that names
        them, so an entry never lacks a file."""
        for attr, path in files.items():
            self.put_object(path, entry.outputs[attr])
        data = {"key": entry.key, "task_id": entry.task_id, "account": entry.account,
                "credits": entry.credits, "outputs": dict(entry.outputs),
                "request": dict(entry.request)}
        write_atomically(self.root / "entries" / f"{entry.key}.json",
                         json.dumps(data, indent=1, sort_keys=True))

    def object_path(self, sha: str) -> Path:
        return self.root / "objects" / sha[:2] / sha

    def put_object(self, path: Path, sha: str) -> None:
        """Keep `path`, whose SHA-256 the caller already knows, under that hash."""
        target = self.object_path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_beside(target)
            shutil.copyfile(path, tmp)
            tmp.replace(target)

    def restore(self, sha: str, dest: Path) -> None:
        tmp = temporary_beside(dest)
        shutil.copyfile(self.object_path(sha), tmp)
        tmp.replace(dest)

    def unusable_tasks(self) -> dict[int, str]:
        """Tasks of no use, task id -> why: locked tasks a run could not restore from
        (gone, or not the locked clip: `plan` says so and prices the step as will run),
        and tasks that failed at the service (recovery never adopts them). Read once."""
        if self._unusable is None:
            try:
                data = json.loads(read_text_file(self.root / UNUSABLE))
            except (OSError, ValueError):
                data = {}
            self._unusable = {int(task): str(why) for task, why in data.items()} \
                if isinstance(data, dict) else {}
        return self._unusable

    def mark_unusable(self, task_id: int, why: str) -> None:
        found = self.unusable_tasks()
        found[task_id] = why
        write_atomically(self.root / UNUSABLE, json.dumps(found, indent=1, sort_keys=True))

    def try_claim(self, key: str) -> Claim | None:
        """The key's lock if no other process holds it, else None (never blocks).

        The OS releases it when a process dies, so a crash never wedges the cache.
        """
        handle = (self.root / "locks" / f"{key}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return Claim(handle)


class Claim:
    """A held cache-key lock; `release()` (or process death) frees it."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
