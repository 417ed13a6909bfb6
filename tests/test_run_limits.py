"""The executor's limits, witnessed by the simulator.

The real Executor runs in this process against the simulator's app. What is
measured is the service's side: the simulator's own per-account peak of running
tasks (`/_sim/stats` peak_running), and, for the whole-run cap, the largest
number of the service's tasks whose lifetimes [created, end) overlap, read from
the simulator's task records on its own clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from klingflow.policy import PollPolicy
from klingflow.run import RunOptions, StepStatus
from klingflow.sim import SimConfig
from tests.runhelpers import InProcessRun, frames_step, peak_overlap, run_in_process, write_pipeline

pytestmark = pytest.mark.anyio

TOKEN = "limits-token"
A, B = ("a@example.com", 2), ("b@example.com", 1)
CONFIG = {"token": TOKEN, "accounts": [A, B], "task_seconds": 0.3, "clip_size": (64, 48)}


def _independent(count: int, *, account: str | None) -> list[dict[str, object]]:
    return [frames_step(f"s{i:02d}", f"shot number {i}", account=account) for i in range(count)]


def _service_overlap(run: InProcessRun) -> int:
    state = run.sim.state
    return peak_overlap([(t.created, state.end_time(t)) for t in state.tasks.values()])


def _per_account_overlap(run: InProcessRun, email: str) -> int:
    state = run.sim.state
    return peak_overlap([(t.created, state.end_time(t)) for t in state.tasks.values()
                         if t.account.email == email])


async def test_each_account_stays_within_its_max_jobs(tmp_path: Path) -> None:
    steps = (_independent(8, account="a")
             + [frames_step(f"b{i}", f"backup shot {i}", account="b") for i in range(4)])
    path = write_pipeline(tmp_path / "p", "limits", steps,
                          accounts={"a": A, "b": B})
    run = await run_in_process(path, SimConfig(**CONFIG), tmp_path / "run")  # type: ignore[arg-type]
    assert {r.status for r in run.results.values()} == {StepStatus.SUCCEEDED}
    accounts = run.stats["accounts"]
    assert accounts["a@example.com"]["peak_running"] == 2  # used, never exceeded
    assert accounts["b@example.com"]["peak_running"] == 1
    assert _per_account_overlap(run, "a@example.com") == 2
    assert _per_account_overlap(run, "b@example.com") == 1
    assert len(run.ledger) == 12
    by_account = {e["account"] for e in run.ledger if e["replyRef"]}
    assert by_account == {"a@example.com", "b@example.com"}
    assert run.stats["requests"].get("POST /videos/image2video-frames") == 12  # no 429 retries


async def test_the_run_cap_is_below_the_sum_of_account_limits(tmp_path: Path) -> None:
    steps = _independent(12, account=None)
    path = write_pipeline(tmp_path / "p", "capped", steps, accounts={"a": A, "b": B},
                          max_jobs=2)
    run = await run_in_process(path, SimConfig(**CONFIG), tmp_path / "run")  # type: ignore[arg-type]
    assert {r.status for r in run.results.values()} == {StepStatus.SUCCEEDED}
    assert _service_overlap(run) == 2  # limits.max_jobs: 2, although a + b allow 3
    accounts = run.stats["accounts"]
    assert accounts["a@example.com"]["peak_running"] <= 2
    assert accounts["b@example.com"]["peak_running"] <= 1


async def test_the_max_jobs_option_overrides_the_pipeline(tmp_path: Path) -> None:
    steps = _independent(5, account=None)
    path = write_pipeline(tmp_path / "p", "option", steps, accounts={"a": A, "b": B},
                          max_jobs=3)
    options = RunOptions(backoff=0.02, poll=PollPolicy.scaled(0.02), backend="sim", max_jobs=1)
    run = await run_in_process(path, SimConfig(**CONFIG), tmp_path / "run",  # type: ignore[arg-type]
                               options=options)
    assert {r.status for r in run.results.values()} == {StepStatus.SUCCEEDED}
    assert _service_overlap(run) == 1


async def test_steps_without_an_account_spread_over_accounts_with_room(tmp_path: Path) -> None:
    steps = _independent(9, account=None)
    path = write_pipeline(tmp_path / "p", "spread", steps, accounts={"a": A, "b": B})
    run = await run_in_process(path, SimConfig(**CONFIG), tmp_path / "run")  # type: ignore[arg-type]
    assert {r.status for r in run.results.values()} == {StepStatus.SUCCEEDED}
    used = [e["account"] for e in run.ledger]
    assert set(used) == {"a@example.com", "b@example.com"}
    assert _service_overlap(run) == 3  # both accounts full at once: no slot left idle
    accounts = run.stats["accounts"]
    assert accounts["a@example.com"]["peak_running"] <= 2
    assert accounts["b@example.com"]["peak_running"] <= 1
    # the report's account is the one the task ran on
    emails = {"a": "a@example.com", "b": "b@example.com"}
    by_task = {e["task_id"]: e["account"] for e in run.ledger}
    for result in run.results.values():
        assert result.account is not None
        assert by_task[result.task_id] == emails[result.account]  # type: ignore[index]
    assert run.stats["requests"].get("POST /videos/image2video-frames") == 9  # never a 429


async def test_a_step_starts_when_what_it_references_is_done(tmp_path: Path) -> None:
    steps = [frames_step("first", "the first shot", account="a"),
             frames_step("second", "the second shot", account="a",
                         needs=["first"]),
             frames_step("side", "a side shot", account="b")]
    path = write_pipeline(tmp_path / "p", "order", steps, accounts={"a": A, "b": B})
    run = await run_in_process(path, SimConfig(**CONFIG), tmp_path / "run")  # type: ignore[arg-type]
    state = run.sim.state
    tasks = {r.step_id: state.tasks[r.task_id] for r in run.results.values()}
    assert tasks["second"].created >= state.end_time(tasks["first"])
    assert tasks["side"].created < state.end_time(tasks["first"])  # independent: not held back
