"""Running a plan: wire it to a backend, execute it, write the report and the lock.

`run(plan, settings, http=..., cache=...)` is the core, callable by any program.
`run_pipeline(plan, settings)` adds what a command needs around it: the backend
(the real service, or with `settings.sim` the embedded simulator started on a free
127.0.0.1 port), an HTTP client and the cache.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import anyio
import httpx

from klingflow.cache import CACHE_DIR_NAME, Cache
from klingflow.cache.claims import Owner as ClaimOwner
from klingflow.cache.pushes import background_pushes
from klingflow.cache.remote import RemoteCache
from klingflow.client import CONNECTIONS, KlingClient
from klingflow.errors import Interrupted, RemoteCacheError, UsageError
from klingflow.files import real_path
from klingflow.interrupts import stop_signals
from klingflow.journal import Journal
from klingflow.lanes import http_client
from klingflow.live_effects import KeptCatalogue, fetch_and_keep, judged_by_live_effects
from klingflow.lockfile import Section, lock_path, read_lock
from klingflow.outputs import INCOMPLETE, FilmResult, make_outputs
from klingflow.outputs import INTERRUPTED as NOT_MADE_INTERRUPTED
from klingflow.plan import Plan
from klingflow.planning import forced_steps, update_lock
from klingflow.policy import Retrier
from klingflow.report import RunReport, RunStatus, write_report
from klingflow.report.html import write_html
from klingflow.run import Event, Executor, RunOptions
from klingflow.run.accounting import charge
from klingflow.run.preflight import SERVICE, before_sending, service_accounts
from klingflow.run.sources import Sharing
from klingflow.rundir import Owner, RunDirectory, discard_run_dir, open_run_dir
from klingflow.seams import find_seams, measure_seams
from klingflow.settings import ApiToken, Settings
from klingflow.spec import read_pipeline_accounts
from klingflow.spec.pipeline import Account, Pipeline

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
    async with http_client(CONNECTIONS, base_url=settings.base_url) as http:
        cache = open_cache(settings, plan.pipeline.path)
        return await run(plan, settings, http=http, cache=cache, on_event=on_event)


async def run(plan: Plan, settings: Settings, *, http: httpx.AsyncClient, cache: Cache,
              on_event: OnEvent = lambda event: None) -> RunReport:
    """Run `plan` into a new run directory (or the one `settings.run.resume` names).

    Nothing is uploaded or paid for until the service has answered and its accounts
    are known; a run directory is made (or taken) only then."""
    pipeline = plan.pipeline
    # read once, first: a lock that cannot be read stops the run before anything is sent
    locked = read_lock(lock_path(pipeline.path)).steps(settings.backend)
    client = KlingClient(http, token=_token(settings), base_url=settings.base_url)
    accounts = await service_accounts(client, pipeline.accounts, base_url=settings.base_url,
                                      within=settings.run.connect_timeout, retrier=Retrier(),
                                      on_event=on_event)
    judge = functools.partial(judged_by_live_effects, plan, client, backend=settings.backend,
                              accounts=accounts, root=cache.root)
    plan = await before_sending(judge, base_url=settings.base_url,
                                within=settings.run.connect_timeout, retrier=Retrier(),
                                on_event=on_event)
    pipeline = plan.pipeline
    options = _options(settings, pipeline)  # a bad option is said before a run directory
    owner = Owner(pipeline.name, pipeline.path, settings.backend)
    run_dir = open_run_dir(settings.run.out, owner, settings.run.resume)
    try:
        return await _run_in(run_dir, plan, settings, options, client, cache, accounts,
                             locked, on_event)
    finally:
        run_dir.close()


async def _run_in(run_dir: RunDirectory, plan: Plan, settings: Settings, options: RunOptions,
                  client: KlingClient, cache: Cache, accounts: Mapping[str, Account],
                  locked: Section, on_event: OnEvent) -> RunReport:
    pipeline, started = plan.pipeline, time.time()
    journal = Journal(run_dir.path / "journal.jsonl", invocation=uuid.uuid4().hex[:12], header={
        "event": "run", "pipeline": pipeline.name, "path": str(real_path(pipeline.path)),
        "backend": settings.backend})
    try:
        async with sharing(settings, locked, cache, run_dir.path.name, on_event) as shared:
            executor = Executor(pipeline=pipeline, plan=plan, client=client,
                                run_dir=run_dir.path, journal=journal, cache=cache,
                                options=options, accounts=accounts, prior=run_dir.prior,
                                on_event=on_event, sharing=shared)
            interrupted = await _run_until_interrupted(executor)
        if run_dir.new and not journal.started:
            _raise_failed_start(executor, interrupted)
            journal.start()
    finally:
        journal.close()
        if run_dir.new and not journal.started:
            run_dir.close()
            discard_run_dir(run_dir.path)
    charge(executor.results, Journal.replay(journal.path), journal.invocation)
    films = await make_outputs(pipeline, executor.results, run_dir=run_dir.path, cache=cache,
                               interrupted=interrupted)
    seams = await anyio.to_thread.run_sync(lambda: measure_seams(
        find_seams(pipeline), executor.results, memo=cache.root / "seams"))
    status, error = _with_films(*_run_status(executor, interrupted), films)
    report = RunReport(plan=plan, run_id=run_dir.path.name, run_dir=run_dir.path,
                       backend=settings.backend, status=status, error=error,
                       started_at=started, finished_at=time.time(), results=executor.results,
                       films=films, seams=seams)
    document = report.to_json()
    write_report(document, run_dir.path)
    write_html(document, run_dir.path)
    update_lock(plan, settings.backend, cache, executor.results, accounts)
    return report


@contextlib.asynccontextmanager
async def sharing(settings: Settings, locked: Section, cache: Cache, run_id: str,
                  on_event: OnEvent) -> AsyncIterator[Sharing]:
    """What the run shares with other machines: `locked`, the lock's section for its
    backend and, with a remote, the remote cache, its claims (where the store can carry
    them) and the pushes of finished steps (the run's end waits for those still going)."""
    if settings.remote is None:
        yield Sharing(locked=locked)
        return
    remote = RemoteCache.open(settings.remote)
    status = await remote.probe()
    if status.message:
        on_event(Event(SERVICE, "remote", status.message))
    board = remote.claims(ClaimOwner.here(run_id), ttl=settings.claim_ttl) \
        if status.claims else None

    def unpushed(key: str, exc: RemoteCacheError) -> None:
        on_event(Event(SERVICE, "remote", f"a result was not pushed (the next run will): {exc}"))

    async with background_pushes(remote, cache, on_failure=unpushed) as pushes:
        yield Sharing(locked=locked, remote=remote, board=board, pushes=pushes)


def _options(settings: Settings, pipeline: Pipeline) -> RunOptions:
    flags = settings.run
    return RunOptions(max_jobs=flags.max_jobs, backoff=settings.backoff, poll=settings.poll,
                      fail_fast=flags.fail_fast, budget=flags.budget,
                      force=frozenset(forced_steps(pipeline, flags.force, flags.force_all)),
                      backend=settings.backend)


def _backend(settings: Settings, pipeline: Pipeline) -> contextlib.AbstractContextManager[Settings]:
    return open_backend(settings, accounts=pipeline.accounts.values(),
                        accept_urls={i.url for i in pipeline.inputs.values() if i.url},
                        folder=real_path(pipeline.path).parent)


@contextlib.contextmanager
def open_backend(settings: Settings, *, accounts: Iterable[Account], accept_urls: set[str],
                 folder: Path) -> Iterator[Settings]:
    """`settings` pointing at a live backend: as they are, or at a simulator started here
    with these accounts, for the pipelines of `folder`."""
    if settings.sim is None:
        yield settings
        return
    from klingflow.sim import SimConfig, running_simulator
    from klingflow.sim.config import DEFAULT_ACCOUNT, Faults

    # The simulated service keeps its state apart from the cache (deleting the cache
    # must not delete the service's tasks), shared by the runs of one folder: a resumed
    # run finds the tasks of a killed one and concurrent runs share one service.
    config = SimConfig(token=SIM_TOKEN, seed=settings.sim.seed,
                       faults=Faults.parse(settings.sim.faults), speed=settings.sim.speed,
                       accept_urls=accept_urls, state_dir=settings.sim_state_dir(folder),
                       accounts=[(a.email, a.max_jobs) for a in accounts] or [DEFAULT_ACCOUNT])
    with running_simulator(config) as base_url:
        yield replace(settings, base_url=base_url, token=ApiToken(SIM_TOKEN))


def fetch_effects(pipeline_path: Path | None, settings: Settings) -> list[KeptCatalogue]:
    """`klingflow effects [PIPELINE]`: the live catalogue of each account of the pipeline
    (or of the service's accounts), kept where validate and plan look for it."""
    if settings.sim is None and not settings.token:
        raise UsageError(NO_TOKEN)
    declared = read_pipeline_accounts(pipeline_path) if pipeline_path else {}
    folder = real_path(pipeline_path).parent if pipeline_path else Path.cwd()
    root = settings.cache_root(pipeline_path) if pipeline_path else \
        settings.home or Path(CACHE_DIR_NAME)
    with open_backend(settings, accounts=declared.values(), accept_urls=set(),
                      folder=folder) as live:
        return anyio.run(_fetch_effects, live, declared, root)


async def _fetch_effects(settings: Settings, declared: Mapping[str, Account],
                         root: Path) -> list[KeptCatalogue]:
    async with http_client(CONNECTIONS, base_url=settings.base_url) as http:
        client = KlingClient(http, token=_token(settings), base_url=settings.base_url)
        accounts = await service_accounts(client, declared, base_url=settings.base_url,
                                          within=settings.run.connect_timeout,
                                          retrier=Retrier(), on_event=lambda event: None)
        return await fetch_and_keep(client, backend=settings.backend,
                                    emails=[a.email for a in accounts.values()], root=root)


async def _run_until_interrupted(executor: Executor) -> bool:
    """Run; on Ctrl-C (or SIGTERM) stop at once, so the report can still be written."""
    interrupted = False
    async with anyio.create_task_group() as group:

        async def watch_signals() -> None:
            nonlocal interrupted
            with stop_signals() as signals:
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


def _token(settings: Settings) -> str:
    return settings.token.reveal() if settings.token else ""


def open_cache(settings: Settings, pipeline_path: Path) -> Cache:
    """The pipeline's cache; UsageError (exit 2) when its folder cannot be made."""
    root = settings.cache_root(pipeline_path)
    hint = "set KLINGFLOW_HOME to a directory you can write to"
    try:
        cache = Cache(root)
    except OSError as exc:
        raise UsageError(f"cache {root}: cannot use it: {exc.strerror}; {hint}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UsageError(f"cache {root}: cannot use it: permission denied; {hint}")
    return cache


def _run_status(executor: Executor, interrupted: bool) -> tuple[RunStatus, str | None]:
    if executor.aborted is not None:
        return RunStatus.ABORTED, str(executor.aborted)
    if interrupted:
        return RunStatus.INTERRUPTED, "interrupted by the user; continue with --resume"
    ok = all(r.status.done for r in executor.results.values())
    return (RunStatus.SUCCEEDED, None) if ok else (RunStatus.FAILED, None)


def _with_films(status: RunStatus, error: str | None,
                films: Mapping[str, FilmResult]) -> tuple[RunStatus, str | None]:
    """A run whose steps all succeeded has failed if a film could not be made, and was
    interrupted if Ctrl-C came while films were made."""
    if status != RunStatus.SUCCEEDED:
        return status, error
    if any(film.error == NOT_MADE_INTERRUPTED for film in films.values()):
        return RunStatus.INTERRUPTED, NOT_MADE_INTERRUPTED
    broken = [(name, film.error) for name, film in films.items()
              if film.status == INCOMPLETE and film.error]
    if not broken:
        return status, error
    return RunStatus.FAILED, "; ".join(f"output {name}: {why}" for name, why in broken)
