"""Helpers shared by the tests of `klingflow run` (tests/test_run_*.py); no tests here.

Every run happens in a temporary directory: the example pipelines are copied there
(so lock files land beside the copies) and KLINGFLOW_HOME points the cache there too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jsonschema
import numpy as np
import pytest
import yaml
from PIL import Image

from klingflow.cache import Cache
from klingflow.cli import main
from klingflow.client import KlingClient
from klingflow.journal import Journal, JournalState
from klingflow.plan import build_plan
from klingflow.policy import PollPolicy, Retrier
from klingflow.run import Executor, RunOptions, StepResult
from klingflow.run.preflight import service_accounts
from klingflow.run.sources import Sharing
from klingflow.sim import SimConfig, create_app, running_simulator, sim_transport
from klingflow.spec import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
REPORT_SCHEMA: dict[str, Any] = json.loads(
    (ROOT / "schemas" / "report.schema.json").read_text(encoding="utf-8"))
IN_PROCESS_BASE = "http://testserver/v1/kling"


async def no_sleep(seconds: float) -> None:
    """The client's GET backoff, made instant for in-process runs."""
    import anyio

    await anyio.sleep(min(seconds, 0.01))


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: cache in tmp, no token, no API base from the caller's shell."""
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("USEAPI_TOKEN", raising=False)
    monkeypatch.delenv("KLINGFLOW_API_BASE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_examples(dest: Path) -> Path:
    """The repository's pipelines/ (with images, without lock files) copied under `dest`."""
    target = dest / "pipelines"
    shutil.copytree(PIPELINES, target,
                    ignore=shutil.ignore_patterns("*.lock.yaml", ".klingflow", "__pycache__"))
    return target


# ---- generated pipelines ---------------------------------------------------------------


def frames_step(step_id: str, prompt: str, *, image: str = "${inputs.hero}",
                **fields: Any) -> dict[str, Any]:
    """A short (3 s) kling-v3-0 frames step: cheap for the simulator to render."""
    step: dict[str, Any] = {"id": step_id, "kind": "frames", "model_name": "kling-v3-0",
                            "duration": 3, "image": image, "prompt": prompt}
    step.update({k: v for k, v in fields.items() if v is not None})
    return step


def write_pipeline(folder: Path, name: str, steps: Sequence[Mapping[str, Any]], *,
                   accounts: Mapping[str, tuple[str, int]] | None = None,
                   max_jobs: int | None = None) -> Path:
    """A pipeline file in `folder` (images/hero.png copied beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "images"
    if not images.exists():
        images.mkdir()
        shutil.copyfile(PIPELINES / "images" / "hero.png", images / "hero.png")
        shutil.copyfile(PIPELINES / "images" / "moon.png", images / "moon.png")
    document: dict[str, Any] = {"version": 1, "name": name,
                                "inputs": {"hero": "images/hero.png", "moon": "images/moon.png"}}
    if accounts:
        document["accounts"] = {alias: {"email": email, "max_jobs": jobs}
                                for alias, (email, jobs) in accounts.items()}
    if max_jobs is not None:
        document["limits"] = {"max_jobs": max_jobs}
    document["steps"] = [dict(s) for s in steps]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


# ---- reading what a run left ----------------------------------------------------------------


def only_run_dir(runs: Path, name: str) -> Path:
    found = sorted(p for p in (runs / name).iterdir() if p.is_dir())
    assert len(found) == 1, found
    return found[0]


def read_report(run_dir: Path) -> dict[str, Any]:
    """report.json, checked against the repository's schemas/report.schema.json."""
    report: dict[str, Any] = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    jsonschema.validate(report, REPORT_SCHEMA)
    return report


def steps_of(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in report["steps"]}


def read_journal(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def mean_abs_diff(a: Path, b: Path) -> float:
    """Mean absolute difference of two same-size pictures, 0..255 per channel."""
    first = np.asarray(Image.open(a).convert("RGB"), dtype=np.float32)
    second = np.asarray(Image.open(b).convert("RGB"), dtype=np.float32)
    assert first.shape == second.shape, (a, b, first.shape, second.shape)
    return float(np.abs(first - second).mean())


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`main(argv)`; (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def peak_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Most intervals [start, end) open at one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, delta in events:  # an end sorts before a start at the same moment
        current += delta
        peak = max(peak, current)
    return peak


# ---- the simulator ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalSim:
    """The simulator on 127.0.0.1, outside the code under test, with USEAPI_TOKEN set."""

    base_url: str

    @property
    def origin(self) -> str:
        return self.base_url.split("/v1/")[0]

    def ledger(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = httpx.get(f"{self.origin}/_sim/ledger", timeout=10).json()
        return entries

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.origin}/_sim/stats", timeout=10).json()
        return stats


@contextlib.contextmanager
def external_sim(monkeypatch: pytest.MonkeyPatch, config: SimConfig, *,
                 token: str | None = None) -> Iterator[ExternalSim]:
    """Serve `config`; point USEAPI_TOKEN (default: the sim's own) and KLINGFLOW_API_BASE at it."""
    with running_simulator(config) as base_url:
        monkeypatch.setenv("USEAPI_TOKEN", token if token is not None else config.token)
        monkeypatch.setenv("KLINGFLOW_API_BASE", base_url)
        yield ExternalSim(base_url)


@dataclass
class InProcessRun:
    executor: Executor
    results: dict[str, StepResult]
    ledger: list[dict[str, Any]]
    stats: dict[str, Any]
    sim: Any  # the SimService, for its exact clock and task records


async def run_in_process(pipeline_path: Path, config: SimConfig, run_dir: Path, *,
                         options: RunOptions | None = None,
                         transport_wrapper: Any = None,
                         prior: JournalState | None = None,
                         sharing: Sharing | None = None) -> InProcessRun:
    """Run a pipeline with the real Executor against the simulator's app, in this process."""
    pipeline = load_pipeline(pipeline_path)
    plan = build_plan(pipeline)
    app = create_app(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(run_dir / "journal.jsonl")
    options = options or RunOptions(backoff=0.02, poll=PollPolicy.scaled(0.02), backend="sim")
    inner = sim_transport(app)
    transport = transport_wrapper(inner) if transport_wrapper else inner
    async with httpx.AsyncClient(transport=transport) as http:  # enters the app's lifespan
        client = KlingClient(http, token=config.token, base_url=IN_PROCESS_BASE, sleep=no_sleep)
        accounts = await service_accounts(client, pipeline.accounts, base_url=IN_PROCESS_BASE,
                                          within=5,
                                          retrier=Retrier(), on_event=lambda event: None)
        executor = Executor(pipeline=pipeline, plan=plan, client=client, accounts=accounts,
                            run_dir=run_dir, journal=journal,
                            cache=Cache(run_dir.parent / "cache"), options=options,
                            prior=prior, sharing=sharing)
        results = await executor.run()
        service = app.state.sim  # read while the app lives: a durable one closes its db after
        ledger, stats = service.ledger(), service.stats()
    journal.close()
    return InProcessRun(executor, results, ledger, stats, service)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate()` came true within `timeout` seconds (looked at every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def journal_has_submitted(runs: Path) -> bool:
    """Whether a run under `runs` (RUNS/PIPELINE/ID) has journalled a submitted task."""
    return any('"event": "submitted"' in journal.read_text(encoding="utf-8")
               for journal in runs.glob("*/*/journal.jsonl"))


def finish_process(process: subprocess.Popen[str],
                   timeout: float = 60) -> tuple[int, str, str]:
    """The child's exit code, stdout and stderr; killed if it outlives `timeout`."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def ctrl_c_when(process: subprocess.Popen[str], ready: Callable[[], bool], *, wait: float,
                timeout: float) -> tuple[bool, int, str, str]:
    """Ctrl-C (SIGINT) to the child once `ready()` holds, or after `wait` seconds; then
    whether it was ready, and its exit code, stdout and stderr (see finish_process)."""
    try:
        seen = wait_for(ready, wait)
        process.send_signal(signal.SIGINT)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return (seen, *finish_process(process, timeout))


_Server = TypeVar("_Server", bound=socketserver.BaseServer)


@contextlib.contextmanager
def serving(server: _Server) -> Iterator[_Server]:
    """`server` answering on a thread of its own for the block; shut down and closed
    after it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
