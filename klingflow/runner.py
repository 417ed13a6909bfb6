"""Running a plan: wire it to a backend, execute it, write the report and the lock.

`run(plan, settings, http=..., cache=...)` is the core, callable by any program.
`run_pipeline(plan, settings)` adds what a command needs around it: the backend
(the real service, or with `settings.sim` the embedded simulator started on a free
127.0.0.1 port), an HTTP client and the cache.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import anyio
import httpx

from klingflow.cache import Cache
from klingflow.client import POOL_LIMITS, KlingClient
from klingflow.errors import Interrupted, UsageError
from klingflow.journal import Journal
from klingflow.lockfile import entry_for, lock_path, read_lock, write_lock
from klingflow.plan import Plan, build_plan, with_verdicts
from klingflow.report import RunReport, RunStatus, write_report
from klingflow.run import Event, Executor, RunOptions, StepResult
from klingflow.rundir import discard_run_dir, open_run_dir
from klingflow.settings import ApiToken, Settings
from klingflow.spec import load_pipeline
from klingflow.spec.pipeline import Pipeline
from klingflow.verdicts import verdicts

NO_TOKEN = ("no API token: set USEAPI_TOKEN to your useapi.net token to spend real credits, "
            "or add --sim to run on the embedded simulator")
SIM_TOKEN = "sim-token"  # the simulator's own: no secret on it (the real token is never used)

OnEvent = Callable[[Event], None]


def run_pipeline(plan: Plan, settings: Settings, *,
                 on_event: OnEvent = lambda event: None) -> RunReport:
    """Run `plan` on the backend `settings` name; the report (also in the run directory)."""
    if settings.sim is None and not settings.token:
        raise UsageError(NO_TOKEN)
    with _backend(settings, plan.pipeline) as settings:
        return anyio.run(_run_with_client, plan, settings, on_event)


async def _run_with_client(plan: Plan, settings: Settings, on_event: OnEvent) -> RunReport:
    async with httpx.AsyncClient(limits=POOL_LIMITS) as http:
        cache = open_cache(settings, plan.pipeline)
        return await run(plan, settings, http=http, cache=cache, on_event=on_event)


def open_cache(settings: Settings, pipeline: Pipeline) -> Cache:
    """The pipeline's cache; UsageError (exit 2) when its folder cannot be made."""
    root = settings.cache_root(pipeline.path)
    hint = "set KLINGFLOW_HOME to a directory you can write to"
    try:
        cache = Cache(root)
    except OSError as exc:
        raise UsageError(f"cache {root}: cannot use it: {exc.strerror}; {hint}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UsageError(f"cache {root}: cannot use it: permission denied; {hint}")
    return cache


async def run(plan: Plan, settings: Settings, *, http: httpx.AsyncClient, cache: Cache,
              on_event: OnEvent = lambda event: None) -> RunReport:
    """Run `plan` into a new run directory (or the one `settings.run.resume` names)."""
    pipeline = plan.pipeline
    options = _options(settings, pipeline)  # a bad option is said before a run directory
    run_dir, prior = open_run_dir(settings.run.out, pipeline.name, settings.run.resume)
    new = not (run_dir / "journal.jsonl").exists()
    journal = Journal(run_dir / "journal.jsonl", header={
        "event": "run", "pipeline": pipeline.name, "backend": settings.backend})
    started = time.time()
    executor = Executor(
        pipeline=pipeline, plan=plan,
        client=KlingClient(http, token=settings.token.reveal() if settings.token else "",
                           base_url=settings.base_url),
        run_dir=run_dir, journal=journal, cache=cache, options=options,
        prior=prior, on_event=on_event)
    try:
        interrupted = await _run_until_interrupted(executor)
        if new and not journal.started:
            _raise_failed_start(executor, interrupted)
            journal.start()
    finally:
        journal.close()
        if new and not journal.started:
            discard_run_dir(run_dir)
    status, error = _run_status(executor, interrupted)
    report = RunReport(pipeline=pipeline, run_id=run_dir.name, run_dir=run_dir,
                       backend=settings.backend, status=status, error=error,
                       started_at=started, finished_at=time.time(), results=executor.results)
    write_report(report.to_json(), run_dir)
    _update_lock(plan, settings.backend, cache, executor.results)
    return report


def _options(settings: Settings, pipeline: Pipeline) -> RunOptions:
    flags = settings.run
    return RunOptions(max_jobs=flags.max_jobs, backoff=settings.backoff, poll=settings.poll,
                      fail_fast=flags.fail_fast, budget=flags.budget,
                      force=frozenset(forced_steps(pipeline, flags.force, flags.force_all)),
                      backend=settings.backend)


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


@contextlib.contextmanager
def _backend(settings: Settings, pipeline: Pipeline) -> Iterator[Settings]:
    """`settings` pointing at a live backend: as they are, or at a simulator started here."""
    if settings.sim is None:
        yield settings
        return
    from klingflow.sim import SimConfig, running_simulator
    from klingflow.sim.config import DEFAULT_ACCOUNT, Faults

    # The simulated service keeps its state in the pipeline's cache root, so a resumed
    # run finds the tasks of a killed one and concurrent runs share one service.
    accounts = [(a.email, a.max_jobs) for a in pipeline.accounts.values()]
    config = SimConfig(token=SIM_TOKEN, seed=settings.sim.seed,
                       faults=Faults.parse(settings.sim.faults), speed=settings.sim.speed,
                       accept_urls={i.url for i in pipeline.inputs.values() if i.url},
                       state_dir=settings.cache_root(pipeline.path) / "sim",
                       accounts=accounts or [DEFAULT_ACCOUNT])
    with running_simulator(config) as base_url:
        yield replace(settings, base_url=base_url, token=ApiToken(SIM_TOKEN))


def _update_lock(plan: Plan, backend: str, cache: Cache,
                 results: Mapping[str, StepResult]) -> None:
    """Record what each finished step produced; keep the old entry of a step that did not."""
    path = lock_path(plan.pipeline.path)
    previous = read_lock(path)
    entries = dict(previous.steps) if previous.backend == backend else {}
    for result in results.values():
        entry = cache.lookup(result.key) if result.key else None
        if result.status.done and entry is not None:
            entries[result.step_id] = entry_for(
                plan, result.step_id, key=entry.key, task_id=entry.task_id,
                account=entry.account, credits=entry.credits, outputs=entry.outputs)
    write_lock(path, name=plan.pipeline.name, backend=backend, plan=plan, entries=entries)


async def _run_until_interrupted(executor: Executor) -> bool:
    """Run; on Ctrl-C (or SIGTERM) stop at once, so the report can still be written."""
    interrupted = False
    async with anyio.create_task_group() as group:

        async def watch_signals() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    executor.stop_submitting()
                    group.cancel_scope.cancel()
                    return

        group.start_soon(watch_signals)
        await executor.run()
        group.cancel_scope.cancel()
    return interrupted


def _raise_failed_start(executor: Executor, interrupted: bool) -> None:
    """A new run that stopped before its first journal line (a refused token, Ctrl-C)
    ends as the error that stopped it, and leaves no run directory: it recorded nothing
    a resume would need."""
    if executor.aborted is not None:
        raise executor.aborted
    if interrupted:
        raise Interrupted("interrupted before the run recorded anything: nothing to resume")


def _run_status(executor: Executor, interrupted: bool) -> tuple[RunStatus, str | None]:
    if executor.aborted is not None:
        return RunStatus.ABORTED, str(executor.aborted)
    if interrupted:
        return RunStatus.INTERRUPTED, "interrupted by the user; continue with --resume"
    ok = all(r.status.done for r in executor.results.values())
    return (RunStatus.SUCCEEDED, None) if ok else (RunStatus.FAILED, None)


def rebuild_lock(pipeline_path: Path, settings: Settings) -> tuple[Path, int, int]:
    """Write the lock again from the cache alone; (lock path, steps locked, steps in all)."""
    pipeline = load_pipeline(pipeline_path)
    plan = build_plan(pipeline)
    found = verdicts(pipeline, [s.step for s in plan.steps],
                     open_cache(settings, pipeline), settings.backend,
                     locked_keys={})
    entries = {sid: entry_for(plan, sid, key=v.entry.key, task_id=v.entry.task_id,
                              account=v.entry.account, credits=v.entry.credits,
                              outputs=v.entry.outputs)
               for sid, v in found.items() if v.entry is not None}
    path = lock_path(pipeline.path)
    write_lock(path, name=pipeline.name, backend=settings.backend, plan=plan, entries=entries)
    return path, len(entries), len(plan.steps)


def plan_with_verdicts(pipeline: Pipeline, settings: Settings, *, force: list[str],
                       force_all: bool) -> Plan:
    """The dry run, each step marked cached or will run (and why), from the local
    cache and lock only: no network. The backend is the lock's, else --sim's."""
    plan = build_plan(pipeline)
    lock = read_lock(lock_path(pipeline.path))
    backend = settings.backend if settings.sim is not None else lock.backend or settings.backend
    found = verdicts(pipeline, [s.step for s in plan.steps],
                     open_cache(settings, pipeline), backend,
                     locked_keys={sid: e.key for sid, e in lock.steps.items()},
                     forced=frozenset(forced_steps(pipeline, force, force_all)))
    return with_verdicts(plan, pipeline, {sid: (v.verdict, v.reason) for sid, v in found.items()})
