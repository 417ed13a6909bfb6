"""Where a step's result can come from without paying, after the local cache:

1. the remote cache (another machine made it; its files verified on download);
2. the lock, through the service: the locked task of the same request, downloaded
   again, its clip checked against the lock's SHA-256.

And, when nothing serves it, the remote claim that keeps two machines from paying
for it at once (run/executor.py holds it around the payment).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from klingflow.cache import Cache
from klingflow.cache.claims import ClaimBoard
from klingflow.cache.pushes import PushQueue
from klingflow.cache.remote import RemoteCache
from klingflow.lockfile import LockEntry
from klingflow.media import MediaError
from klingflow.run.collection import Collector
from klingflow.run.results import Event, StepFailed, StepResult
from klingflow.spec.pipeline import Account, Step


@dataclass(frozen=True, slots=True)
class Sharing:
    """What a run shares with other machines: the lock's section for its backend, and a
    remote cache (with claims when the store supports them, and pushes in the background)."""

    locked: Mapping[str, LockEntry] = field(default_factory=dict)
    remote: RemoteCache | None = None
    board: ClaimBoard | None = None
    pushes: PushQueue | None = None

    def share(self, cache: Cache, key: str) -> None:
        """Send a result this run has (made, or served locally) to the remote, in the
        background; a remote that has it answers one request."""
        if self.pushes is None:
            return
        entry = cache.lookup(key)
        if entry is not None:
            self.pushes.push_soon(entry)


class Sources:
    def __init__(self, *, sharing: Sharing, collector: Collector, cache: Cache,
                 accounts: Mapping[str, Account], on_event: Callable[[Event], None]) -> None:
        self._sharing = sharing
        self._collector = collector
        self._cache = cache
        self._accounts = accounts
        self._on_event = on_event

    async def from_remote(self, step: Step, result: StepResult, key: str) -> bool:
        """The remote's result for the request, into the local cache and the run."""
        remote = self._sharing.remote
        if remote is None:
            return False
        fetched = await remote.fetch(key, self._cache)
        if fetched.problem:
            self._on_event(Event(step.id, "remote", f"not used: {fetched.problem}"))
        return fetched.hit and self._collector.restore_cached(step, result, key)

    async def from_lock(self, step: Step, result: StepResult, key: str,
                        request: Mapping[str, Any]) -> bool:
        """The locked task of this same request, downloaded again and checked against the
        lock; a task that is gone or does not match is remembered (plan says so)."""
        locked = self._sharing.locked.get(step.id)
        if locked is None or locked.key != key or locked.task_id is None or \
                locked.task_id in self._cache.unusable_tasks():
            return False
        email, task_id = locked.email or self._email(locked.account), locked.task_id
        try:
            task = await self._collector.get_task(step, task_id, email)
            if not task.succeeded or task.video is None:
                return self._unusable(step, locked, f"locked task {task_id} has no clip "
                                                    f"({task.status_name})")
            await self._collector.download(step, result, task, email)
            if result.outputs["video"].sha256 != locked.outputs.get("video"):
                result.outputs.clear()
                return self._unusable(step, locked, f"locked task {task_id}'s clip is not "
                                                    "the locked one (its SHA-256 differs)")
            await self._collector.frames(step, result)  # the locked clip: any error is ours
            result.key = key
            await self._collector.keep(result, task_id=task.id, account=locked.account,
                                       credits=locked.credits, request=request)
        except StepFailed as failed:
            if failed.category == "not_found":
                return self._unusable(step, locked, f"locked task {task_id} is gone")
            if failed.category == "bad_request":  # a lock made with an account not ours
                return self._unusable(step, locked, f"locked task {task_id} cannot be read "
                                                    f"here ({failed.__cause__ or failed})")
            cause = failed.__cause__ or failed
            raise StepFailed(failed.category, f"locked task {task_id} could not be restored "
                             f"({cause}); run again to restore it at no cost") from failed
        except (MediaError, OSError) as exc:
            raise StepFailed("local_files", f"locked task {task_id}'s clip could not be "
                             f"kept here: {exc}; run again to restore it at no cost") from exc
        result.task_id, result.account = task.id, locked.account
        return True

    def _email(self, alias: str | None) -> str | None:
        account = self._accounts.get(alias) if alias else None
        return account.email if account else None

    def _unusable(self, step: Step, locked: LockEntry, why: str) -> bool:
        assert locked.task_id is not None
        self._cache.mark_unusable(locked.task_id, why)
        self._on_event(Event(step.id, "lock", f"not restored: {why}"))
        return False

    def share(self, key: str) -> None:
        self._sharing.share(self._cache, key)
