"""A task that exists and is paid for is never lost to a local problem, nor paid twice.

The simulated service is durable here (SimConfig.state_dir), so a second run talks
to the same service, as after a crash or on the next day.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from klingflow.journal import Journal
from klingflow.runner import SIM_TOKEN
from klingflow.sim import SimConfig
from klingflow.sim.config import DEFAULT_ACCOUNT
from tests.runhelpers import (
    external_sim,
    frames_step,
    only_run_dir,
    read_report,
    run_cli,
    run_in_process,
    steps_of,
    write_pipeline,
)

pytestmark = pytest.mark.anyio


def durable(tmp_path: Path) -> SimConfig:
    return SimConfig(token="test-token", task_seconds=0.2, clip_size=(304, 304),
                     state_dir=tmp_path / "service")


def blocked(run_dir: Path, step: str) -> Path:
    """A directory where the download of `step`'s clip must write a file."""
    blocker = run_dir / f"{step}.mp4.part"
    blocker.mkdir(parents=True)
    return blocker


async def test_a_file_that_cannot_be_written_keeps_the_paid_task_for_a_resume(
        tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "local", [frames_step("shot", "a lighthouse")])
    run_dir = tmp_path / "runs" / "first"
    blocker = blocked(run_dir, "shot")
    first = await run_in_process(path, durable(tmp_path), run_dir)
    shot = first.results["shot"]
    assert (shot.status, shot.error_category) == ("failed", "local_files")
    assert shot.error == (f"task {shot.task_id} is done and paid for, but its result could "
                          f"not be kept: Is a directory: {blocker}; fix that and run again "
                          "with --resume to collect it at no cost")
    shutil.rmtree(blocker)
    again = await run_in_process(path, durable(tmp_path), run_dir,
                                 prior=Journal.replay(run_dir / "journal.jsonl"))
    assert again.results["shot"].status == "succeeded"
    assert again.results["shot"].task_id == shot.task_id
    assert [t["task_id"] for t in again.ledger] == [shot.task_id]  # one task, paid once


async def test_a_run_whose_directory_was_deleted_re_attaches_instead_of_paying(
        tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "deleted", [frames_step("shot", "a lighthouse")])
    first_dir = tmp_path / "runs" / "first"
    blocked(first_dir, "shot")
    first = await run_in_process(path, durable(tmp_path), first_dir)
    assert first.results["shot"].error_category == "local_files"
    shutil.rmtree(first_dir)  # runs/ is git-ignored: gone with a clean checkout
    again = await run_in_process(path, durable(tmp_path), tmp_path / "runs" / "second")
    shot = again.results["shot"]
    assert (shot.status, shot.task_id) == ("succeeded", first.results["shot"].task_id)
    assert len(again.ledger) == 1
    assert (tmp_path / "runs" / "cache" / "inflight").is_dir()
    assert list((tmp_path / "runs" / "cache" / "inflight").iterdir()) == []  # settled


def resume_collects_it(path: Path, argv: list[str], run_dir: Path, task_id: int,
                       monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """`run --resume` (on --sim) re-attaches to the step's task, and the simulated
    service's ledger holds that one task: paid once."""
    code, _, err = run_cli(["run", str(path), *argv, "--resume"], capsys)
    again = steps_of(read_report(run_dir))["shot"]
    assert (code, again["status"], again["task_id"]) == (0, "succeeded", task_id)
    assert f"shot re-attached: task {task_id}" in err
    service = SimConfig(token=SIM_TOKEN, accounts=[DEFAULT_ACCOUNT],
                        state_dir=path.parent / ".klingflow-sim")
    with external_sim(monkeypatch, service) as sim:
        assert [t["task_id"] for t in sim.ledger()] == [task_id]


def test_a_video_that_cannot_be_downloaded_is_collected_by_a_resume_not_paid_again(
        isolated: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "expired", [frames_step("shot", "a lighthouse")])
    fast = ["--sim", "--sim-speed", "10", "--out", str(isolated / "runs"),
            "--poll-interval", "0.01"]
    code, out, _ = run_cli(["run", str(path), *fast, "--sim-faults", "expire=1"], capsys)
    run_dir = only_run_dir(isolated / "runs", "expired")
    report = read_report(run_dir)
    shot = steps_of(report)["shot"]
    assert (code, shot["status"], shot["error_category"]) == (1, "failed", "download")
    assert shot["error"].startswith(f"task {shot['task_id']} is done and paid for, but its "
                                    "video could not be downloaded (GET http://127.0.0.1:")
    assert shot["error"].endswith(": HTTP 403: Forbidden); run again with --resume to "
                                  "collect it at no cost")
    assert report["totals"]["credits_refundable"] == 0  # it succeeded: nothing to refund
    assert "refund" not in out

    resume_collects_it(path, fast, run_dir, shot["task_id"], monkeypatch, capsys)


def test_a_task_past_its_timeout_is_collected_by_a_resume_not_paid_again(
        isolated: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "slow", [
        frames_step("shot", "a lighthouse", timeout=0.3)])  # the simulated task takes 2 s
    fast = ["--sim", "--out", str(isolated / "runs"), "--poll-interval", "0.05"]
    code = run_cli(["run", str(path), *fast], capsys)[0]
    run_dir = only_run_dir(isolated / "runs", "slow")
    shot = steps_of(read_report(run_dir))["shot"]
    assert (code, shot["status"], shot["error_category"]) == (1, "failed", "timeout")
    assert shot["error"] == (f"task {shot['task_id']} was not done after 0.3 s (the step's "
                             "timeout); it is paid for: run again with --resume later to "
                             "collect it at no cost")
    time.sleep(2.5)  # the service finishes it meanwhile

    resume_collects_it(path, fast, run_dir, shot["task_id"], monkeypatch, capsys)
