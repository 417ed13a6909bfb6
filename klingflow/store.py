"""What a run leaves on disk: its directory, its journal, and the shared cache.

- The journal (`journal.jsonl` in the run directory) is appended and fsync'd
  before each POST, right after it, and at each outcome, so a crash at any
  moment leaves enough to re-attach to every task that was paid for.
- The cache (`.klingflow/` beside the pipeline, or `$KLINGFLOW_HOME`) is
  content-addressed: results are keyed by the canonical request with every input
  replaced by its content hash, files are stored by their SHA-256. Failures are
  never cached. A per-key file lock keeps two runs from paying for one step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CACHE_DIR_NAME = ".klingflow"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_hash(document: Mapping[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _temporary_beside(path: Path) -> Path:
    """A name no other writer (process or thread) uses, in `path`'s folder, for a file
    that is then renamed onto `path`."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_atomically(path: Path, text: str) -> None:
    """Write `text` so that `path` holds either the old or the new content, never a mix."""
    tmp = _temporary_beside(path)
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


# ---- the run directory --------------------------------------------------------


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 100000:05d}"


def latest_run_dir(runs_root: Path, pipeline_name: str) -> Path | None:
    base = runs_root / pipeline_name
    candidates = sorted(p for p in base.glob("*") if (p / "journal.jsonl").exists()) \
        if base.is_dir() else []
    return candidates[-1] if candidates else None


# ---- the journal -------------------------------------------------------------------


@dataclass(slots=True)
class Submission:
    """The last POST the journal knows of for one step."""

    key: str
    reply_ref: str
    account: str | None
    email: str | None
    at_ms: int
    task_id: int | None = None


@dataclass(slots=True)
class JournalState:
    """What a journal says, replayed: uploads, submissions and finished steps."""

    uploads: dict[str, str] = field(default_factory=dict)  # sha256 -> asset URL
    submissions: dict[str, Submission] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> outcome event
    attempts: dict[str, int] = field(default_factory=dict)

    def apply(self, event: Mapping[str, Any]) -> None:
        kind, step = event.get("event"), event.get("step", "")
        if kind == "uploaded":
            self.uploads[event["sha256"]] = event["url"]
        elif kind == "submitting":
            self.submissions[step] = Submission(event["key"], event["reply_ref"],
                                                event.get("account"), event.get("email"),
                                                event["at_ms"])
            self.attempts[step] = self.attempts.get(step, 0) + 1
            self.finished.pop(step, None)
        elif kind == "submitted" and step in self.submissions:
            self.submissions[step].task_id = event["task_id"]
        elif kind == "failed" and event.get("unresolved"):
            pass  # the POST's outcome is still unknown: a resume recovers it first
        elif kind in ("succeeded", "failed", "cached"):
            self.finished[step] = dict(event)
            if kind != "succeeded":
                self.submissions.pop(step, None)


class Journal:
    """An append-only JSON-lines log; every line is on disk before `write` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("a", encoding="utf-8")

    def write(self, event: Mapping[str, Any]) -> None:
        line = json.dumps({**event, "time": round(time.time(), 3)}, sort_keys=True)
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    @staticmethod
    def replay(path: Path) -> JournalState:
        state = JournalState()
        if not path.exists():
            return state
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a crash
                state.apply(json.loads(line))
        return state


# ---- the cache --------------------------------------------------------------------


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
        for sub in ("entries", "objects", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def lookup(self, key: str) -> CacheEntry | None:
        path = self.root / "entries" / f"{key}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        entry = CacheEntry(**data)
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
            tmp = _temporary_beside(target)
            shutil.copyfile(path, tmp)
            tmp.replace(target)

    def restore(self, sha: str, dest: Path) -> None:
        tmp = _temporary_beside(dest)
        shutil.copyfile(self.object_path(sha), tmp)
        tmp.replace(dest)

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


def default_cache_root(pipeline_path: Path) -> Path:
    home = os.environ.get("KLINGFLOW_HOME")
    return Path(home) if home else pipeline_path.resolve().parent / CACHE_DIR_NAME
