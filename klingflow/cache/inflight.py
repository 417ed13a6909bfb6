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

from klingflow.files import write_atomically


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


class InFlightRecords:
    def __init__(self, root: Path) -> None:
        self._dir = root / "inflight"
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self._dir / f"{key}.json"

    def get(self, key: str) -> InFlight | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            return InFlight(**data)
        except (OSError, ValueError, TypeError):
            return None

    def sending(self, record: InFlight) -> None:
        """Before the POST. Written whole (a rename), not fsync'd: a killed process
        leaves it; against a power cut the run journal, synced before each POST, holds
        the same."""
        write_atomically(self._path(record.key), json.dumps(asdict(record), sort_keys=True),
                         durable=False)

    def created(self, key: str, task_id: int) -> None:
        record = self.get(key)
        if record is not None:
            self.sending(replace(record, task_id=task_id))

    def done(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
