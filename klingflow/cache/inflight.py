"""In-flight records: the POSTs of a request that may have created a task, kept in the
cache beside the request's claim (CACHE_ROOT/inflight/KEY.json).

The run journal says the same, but a run directory can be deleted (runs/ is
git-ignored) or belong to another run. A run that is about to pay for a request
first looks here, and re-attaches to the task an earlier POST created (or looks it
up by its replyRef) instead of paying again. A record is written before its POST,
completed with the task id right after, and removed once the result is in the cache
or the task surely failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from klingflow.files import read_text_file, write_atomically


@dataclass(frozen=True, slots=True)
class InFlight:
    """A POST for `key`: the task it created, or how to look for it."""

    key: str
    step: str
    reply_ref: str
    account: str | None
    email: str | None
    at_ms: int
    task_id: int | None = None
    run_dir: str = ""  # where the run that sent it kept its journal (for messages)


class UnreadableRecordError(Exception):
    """An in-flight record that is there but cannot be read. It is not taken as "never
    sent": its POST may have created a task that is paid for."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path} cannot be read ({why})")
        self.path = path


class InFlightRecords:
    def __init__(self, root: Path) -> None:
        self._dir = root / "inflight"
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self._dir / f"{key}.json"

    def get(self, key: str) -> InFlight | None:
        """The record of `key`'s POST; None if there is none. A record that is there but
        cannot be read (empty or cut short: records are not fsync'd, so a power cut can
        leave one so) raises UnreadableRecordError."""
        path = self._path(key)
        try:
            text = read_text_file(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            raise UnreadableRecordError(path, getattr(exc, "strerror", None) or str(exc)) \
                from exc
        try:
            return InFlight(**json.loads(text))
        except (ValueError, TypeError) as exc:
            why = "it is not a record klingflow wrote" if text.strip() else "it is empty"
            raise UnreadableRecordError(path, why) from exc

    def sending(self, record: InFlight) -> None:
        """Before the POST. Written whole (a rename), not fsync'd: a killed process
        leaves it; against a power cut the run journal, synced before each POST, holds
        the same."""
        write_atomically(self._path(record.key), json.dumps(asdict(record), sort_keys=True),
                         durable=False)

    def created(self, key: str, task_id: int) -> None:
        """The task id, added to this run's own record (written just before)."""
        try:
            record = self.get(key)
        except UnreadableRecordError:
            return  # the run journal, synced, holds the task id too
        if record is not None:
            self.sending(replace(record, task_id=task_id))

    def done(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
