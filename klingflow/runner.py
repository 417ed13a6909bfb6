"""Running a pipeline: wire it to a backend, execute it, write the report.

The backend is the real service (`USEAPI_TOKEN`, `KLINGFLOW_API_BASE`) or, with
`--sim`, the embedded simulator started on a free 127.0.0.1 port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx

from klingflow.cache import Cache, default_cache_root
from klingflow.catalogue import KeptCatalogues
from klingflow.client import DEFAULT_API_BASE, KlingClient
from klingflow.errors import UsageError
from klingflow.executor import CACHED, SUCCEEDED, Executor, RunOptions, StepResult
from klingflow.journal import Journal, JournalState
from klingflow.live_effects import judged_by_live_effects
from klingflow.lockfile import entry_for, lock_path, read_lock, write_lock
from klingflow.plan import Plan, build_plan, with_verdicts
from klingflow.progress import make_progress
from klingflow.report import RunInfo, build_report, write_report
from klingflow.rundir import latest_run_dir, new_run_id
from klingflow.spec import load_pipeline
from klingflow.spec.pipeline import Pipeline
from klingflow.verdicts import verdicts

SIM_POLL_INTERVAL = 0.2
REAL_POLL_INTERVAL = 15.0
NO_TOKEN = ("no API token: set USEAPI_TOKEN to your useapi.net token to spend real credits, "
            "or add --sim to run on the embedded simulator")


@dataclass(frozen=True, slots=True)
class Backend:
    name: str  # what cache keys call it: "sim", "useapi" or "api:BASE_URL"
    base_url: str
    token: str


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Load, plan and run the pipeline `args` name; the report (also in the run directory)."""
    pipeline = load_pipeline(Path(args.pipeline))
    if not args.sim and not os.environ.get("USEAPI_TOKEN"):
        raise UsageError(NO_TOKEN)
    options = _options(args, pipeline)
    with _backend(args, pipeline) as backend:
        pipeline = judged_by_live_effects(pipeline, backend)  # GETs only; exit 2 if bad
        plan = build_plan(pipeline)
        run_dir, prior = _run_directory(args, pipeline)
        return anyio.run(_run, pipeline, plan, backend, run_dir, prior,
                         replace(options, backend=backend.name))


def _options(args: argparse.Namespace, pipeline: Pipeline) -> RunOptions:
    forced = {s.id for s in pipeline.steps} if args.force_all else _with_dependents(
        pipeline, set(args.force))
    interval = args.poll_interval or (SIM_POLL_INTERVAL if args.sim else REAL_POLL_INTERVAL)
    return RunOptions(max_jobs=args.max_jobs, poll_interval=interval, fail_fast=args.fail_fast,
                      budget=args.budget, force=frozenset(forced))


def _with_dependents(pipeline: Pipeline, forced: set[str]) -> set[str]:
    known = {s.id for s in pipeline.steps} | {s.base_id for s in pipeline.steps}
    unknown = sorted(forced - known)
    if unknown:
        raise UsageError(f"--force {unknown[0]}: no such step in {pipeline.path}")
    forced = {s.id for s in pipeline.steps if s.id in forced or s.base_id in forced}
    for step in pipeline.steps:  # file order is a topological order for references
        if forced & set(step.needs):
            forced.add(step.id)
    return forced


def _run_directory(args: argparse.Namespace, pipeline: Pipeline) -> tuple[Path, JournalState]:
    """A new run directory, or with --resume the one to continue and what its journal says.

    `--resume` with no earlier run starts a new one: a run without a journal
    never sent a POST (the journal line comes first), so nothing can be lost.
    """
    root = Path(args.out)
    if args.resume == "latest":
        latest = latest_run_dir(root, pipeline.name)
        if latest is not None:
            return latest, Journal.replay(latest / "journal.jsonl")
    elif args.resume is not None:
        run_dir = Path(args.resume)
        if not (run_dir / "journal.jsonl").exists():
            raise UsageError(f"--resume {args.resume}: no run journal there "
                             "(expected RUN_DIR/journal.jsonl)")
        return run_dir, Journal.replay(run_dir / "journal.jsonl")
    run_dir = root / pipeline.name / new_run_id()
    run_dir.mkdir(parents=True)
    return run_dir, JournalState()


def backend_name(base_url: str) -> str:
    """What cache keys call a backend: results of one never serve another."""
    return "useapi" if base_url.rstrip("/") == DEFAULT_API_BASE else f"api:{base_url.rstrip('/')}"


@contextlib.contextmanager
def _backend(args: argparse.Namespace, pipeline: Pipeline) -> Iterator[Backend]:
    with open_backend(args, accounts=[(a.email, a.max_jobs) for a in pipeline.accounts.values()],
                      accept_urls={i.url for i in pipeline.inputs.values() if i.url},
                      cache_root=default_cache_root(pipeline.path)) as backend:
        yield backend


@contextlib.contextmanager
def open_backend(args: argparse.Namespace, *, accounts: list[tuple[str, int]],
                 accept_urls: set[str], cache_root: Path) -> Iterator[Backend]:
    """The real service (USEAPI_TOKEN, KLINGFLOW_API_BASE) or, with `args.sim`, the
    embedded simulator with these accounts (its options from `args.sim_*`)."""
    if not args.sim:
        base = os.environ.get("KLINGFLOW_API_BASE", DEFAULT_API_BASE)
        yield Backend(backend_name(base), base, os.environ["USEAPI_TOKEN"])
        return
    from klingflow.sim import SimConfig, running_simulator
    from klingflow.sim.config import DEFAULT_ACCOUNT, Faults

    # The simulated service keeps its state in the pipeline's cache root, so a resumed
    # run finds the tasks of a killed one and concurrent runs share one service. Its
    # token is fixed: no secret on the simulator (the real token is never written).
    token = "sim-token"
    config = SimConfig(token=token, seed=args.sim_seed,
                       faults=Faults.parse(args.sim_faults), speed=args.sim_speed,
                       accept_urls=accept_urls, state_dir=cache_root / "sim",
                       accounts=accounts or [DEFAULT_ACCOUNT])
    with running_simulator(config) as base_url:
        yield Backend("sim", base_url, token)


async def _run(pipeline: Pipeline, plan: Plan, backend: Backend, run_dir: Path,
               prior: JournalState, options: RunOptions) -> dict[str, Any]:
    journal = Journal(run_dir / "journal.jsonl")
    journal.write({"event": "run", "pipeline": pipeline.name, "backend": backend.name})
    progress = make_progress([s.id for s in plan.steps])
    started = time.time()
    async with httpx.AsyncClient() as http:
        cache = Cache(default_cache_root(pipeline.path))
        executor = Executor(
            pipeline=pipeline, order=[pipeline.step(s.id) for s in plan.steps],
            credits={s.id: s.credits for s in plan.steps},
            client=KlingClient(http, token=backend.token, base_url=backend.base_url),
            run_dir=run_dir, journal=journal, cache=cache,
            options=options, prior=prior, on_event=progress)
        interrupted = await _run_until_interrupted(executor)
    progress.close()
    journal.close()
    status, error = _run_status(executor, interrupted)
    info = RunInfo(run_id=run_dir.name, run_dir=run_dir, backend=backend.name, status=status,
                   error=error, started_at=started, finished_at=time.time())
    report = build_report(pipeline, executor.results, info)
    write_report(report, run_dir)
    _update_lock(pipeline, plan, backend.name, cache, executor.results)
    return report


def _update_lock(pipeline: Pipeline, plan: Plan, backend: str, cache: Cache,
                 results: Mapping[str, StepResult]) -> None:
    """Record what each finished step produced; keep the old entry of a step that did not."""
    path = lock_path(pipeline.path)
    previous = read_lock(path)
    entries = dict(previous.steps) if previous.backend == backend else {}
    for result in results.values():
        entry = cache.lookup(result.key) if result.key else None
        if result.status in (SUCCEEDED, CACHED) and entry is not None:
            entries[result.step_id] = entry_for(
                plan, result.step_id, key=entry.key, task_id=entry.task_id,
                account=entry.account, credits=entry.credits, outputs=entry.outputs)
    write_lock(path, name=pipeline.name, backend=backend, plan=plan, entries=entries)


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


def _run_status(executor: Executor, interrupted: bool) -> tuple[str, str | None]:
    if executor.aborted is not None:
        return "aborted", str(executor.aborted)
    if interrupted:
        return "interrupted", "interrupted by the user; continue with --resume"
    ok = all(r.status in (SUCCEEDED, CACHED) for r in executor.results.values())
    return ("succeeded", None) if ok else ("failed", None)


def rebuild_lock(pipeline_path: Path, backend: str) -> tuple[Path, int, int]:
    """Write the lock again from the cache alone; (lock path, steps locked, steps in all)."""
    pipeline = load_pipeline(pipeline_path, effects=KeptCatalogues(
        default_cache_root(pipeline_path), backend))  # a one-mode effect's mode, as run sent it
    plan = build_plan(pipeline)
    found = verdicts(pipeline, [pipeline.step(s.id) for s in plan.steps],
                     Cache(default_cache_root(pipeline.path)), backend, locked_keys={})
    entries = {sid: entry_for(plan, sid, key=v.entry.key, task_id=v.entry.task_id,
                              account=v.entry.account, credits=v.entry.credits,
                              outputs=v.entry.outputs)
               for sid, v in found.items() if v.entry is not None}
    path = lock_path(pipeline.path)
    write_lock(path, name=pipeline.name, backend=backend, plan=plan, entries=entries)
    return path, len(entries), len(plan.steps)


def plan_with_verdicts(pipeline: Pipeline, *, sim: bool, force: list[str],
                       force_all: bool) -> Plan:
    """The dry run, each step marked cached or will run (and why), from the local
    cache and lock only: no network. The backend is the lock's, else --sim's."""
    plan = build_plan(pipeline)
    lock = read_lock(lock_path(pipeline.path))
    backend = judged_backend(pipeline.path, sim=sim)
    forced = {s.id for s in pipeline.steps} if force_all else _with_dependents(
        pipeline, set(force))
    found = verdicts(pipeline, [pipeline.step(s.id) for s in plan.steps],
                     Cache(default_cache_root(pipeline.path)), backend,
                     locked_keys={sid: e.key for sid, e in lock.steps.items()},
                     forced=frozenset(forced))
    return with_verdicts(plan, pipeline, {sid: (v.verdict, v.reason) for sid, v in found.items()})


def judged_backend(pipeline_path: Path, *, sim: bool) -> str:
    """The backend `plan` judges a pipeline for: the simulator with --sim, else the
    lock's, else the one `run` would use (KLINGFLOW_API_BASE, or useapi.net)."""
    lock = read_lock(lock_path(pipeline_path))
    return "sim" if sim else lock.backend or backend_name(
        os.environ.get("KLINGFLOW_API_BASE", DEFAULT_API_BASE))
