"""The dry run with the cache's verdicts, and the lock kept in step with the cache.

Both judge a pipeline for one backend: the simulator with --sim, else the one `run`
would use (KLINGFLOW_API_BASE, or useapi.net). No network: the local cache, the lock
and what earlier runs found out about locked tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import anyio

from klingflow.cache import Cache, CacheEntry
from klingflow.cache.inflight import InFlightRecords
from klingflow.cache.remote import RemoteCache
from klingflow.catalogue import KeptCatalogues
from klingflow.errors import UsageError
from klingflow.lockfile import LockEntry, entry_for, lock_path, read_lock, write_lock
from klingflow.plan import Plan, build_plan, with_verdicts
from klingflow.run import StepResult
from klingflow.settings import Settings
from klingflow.spec import load_pipeline
from klingflow.spec.pipeline import Account, Pipeline
from klingflow.verdicts import Judge, verdicts


def judge_for(pipeline: Pipeline, settings: Settings, *,
              forced: frozenset[str] = frozenset()) -> Judge:
    from klingflow.runner import open_cache

    cache = open_cache(settings, pipeline.path)
    lock = read_lock(lock_path(pipeline.path))
    return Judge(pipeline=pipeline, cache=cache, backend=settings.backend,
                 locked=lock.steps(settings.backend), unusable=cache.unusable_tasks(),
                 forced=forced, remote=_remote_records(settings),
                 inflight=InFlightRecords(cache.root).get)


def _remote_records(settings: Settings) -> Callable[[str], CacheEntry | None] | None:
    """The remote's record of a key (one GET each), for the steps the local cache lacks."""
    if settings.remote is None:
        return None
    remote = RemoteCache.open(settings.remote)
    return lambda key: anyio.run(remote.record, key)


def plan_with_verdicts(pipeline: Pipeline, settings: Settings, *,
                       forced: frozenset[str] = frozenset()) -> Plan:
    """The dry run, each step marked cached, restore (from the lock) or will run, and why."""
    plan = build_plan(pipeline)
    found = verdicts(judge_for(pipeline, settings, forced=forced), [s.step for s in plan.steps])
    return with_verdicts(plan, pipeline, {sid: (v.verdict, v.reason) for sid, v in found.items()})


def update_lock(plan: Plan, backend: str, cache: Cache, results: Mapping[str, StepResult],
                accounts: Mapping[str, Account]) -> None:
    """Record what each finished step produced in the backend's section; keep the entry of
    a step that did not finish, and every other backend's section."""
    path = lock_path(plan.pipeline.path)
    previous = read_lock(path)
    entries = dict(previous.steps(backend))
    for result in results.values():
        entry = cache.lookup(result.key) if result.key else None
        if result.status.done and entry is not None:
            entries[result.step_id] = _locked(plan, result.step_id, entry, accounts)
    write_lock(path, name=plan.pipeline.name, plan=plan, backend=backend, entries=entries,
               previous=previous)


def _locked(plan: Plan, step_id: str, entry: CacheEntry,
            accounts: Mapping[str, Account]) -> LockEntry:
    account = accounts.get(entry.account) if entry.account else None
    return entry_for(plan, step_id, key=entry.key, task_id=entry.task_id,
                     account=entry.account, email=account.email if account else entry.account,
                     credits=entry.credits, outputs=entry.outputs)


def rebuild_lock(pipeline_path: Path, settings: Settings) -> tuple[Path, int, int, int]:
    """Write the backend's section of the lock again from the cache, keeping the entries the
    cache cannot confirm; (lock path, steps locked from the cache, steps in all, older
    entries kept)."""
    pipeline = load_pipeline(pipeline_path, effects=KeptCatalogues(
        settings.cache_root(pipeline_path), settings.backend))  # a one-mode effect's mode
    plan = build_plan(pipeline)
    found = verdicts(judge_for(pipeline, settings), [s.step for s in plan.steps])
    path = lock_path(pipeline.path)
    previous = read_lock(path)
    entries = dict(previous.steps(settings.backend))
    confirmed = {sid: _locked(plan, sid, v.entry, pipeline.accounts)
                 for sid, v in found.items() if v.entry is not None}
    entries.update(confirmed)
    write_lock(path, name=pipeline.name, plan=plan, backend=settings.backend, entries=entries,
               previous=previous)
    kept = {s.id for s in plan.steps} & set(entries) - set(confirmed)
    return path, len(confirmed), len(plan.steps), len(kept)


def forced_steps(pipeline: Pipeline, force: tuple[str, ...] | list[str],
                 force_all: bool) -> set[str]:
    """The steps `--force` names (a matrix step's id names all its expansions) and every
    step after them; all steps with `--force-all`."""
    if force_all:
        return {s.id for s in pipeline.steps}
    known = {s.id for s in pipeline.steps} | {s.base_id for s in pipeline.steps}
    unknown = sorted(set(force) - known)
    if unknown:
        raise UsageError(f"--force {unknown[0]}: no such step in {pipeline.path}")
    forced = {s.id for s in pipeline.steps if s.id in force or s.base_id in force}
    for step in pipeline.steps:  # file order is a topological order for references
        if forced & set(step.needs):
            forced.add(step.id)
    return forced
