"""A run directory belongs to one pipeline file on one backend; every request names its
account; the lock keeps one section per backend (issue 9, items 1, 3 and 10)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from klingflow.sim import SimConfig
from tests.runhelpers import (
    ROOT,
    copy_examples,
    external_sim,
    frames_step,
    only_run_dir,
    read_journal,
    read_report,
    run_cli,
    write_pipeline,
)

ACCOUNTS = [("a@example.com", 2), ("b@example.com", 2)]
FAST = ("--poll-interval", "0.05")  # the simulator's timescale, on a real backend's URL


def two_pipelines(folder: Path) -> tuple[Path, Path]:
    x = write_pipeline(folder, "x", [frames_step("one", "x one")])
    y = write_pipeline(folder, "y", [frames_step("one", "y one")])
    return x, y


def test_resuming_another_pipelines_run_directory_is_refused_and_sends_nothing(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = two_pipelines(isolated / "p")
    runs = isolated / "runs"
    with external_sim(monkeypatch, SimConfig(accounts=ACCOUNTS)) as sim:
        assert run_cli(["run", str(x), "--out", str(runs), *FAST], capsys)[0] == 0
        x_dir = only_run_dir(runs, "x")
        report = (x_dir / "report.json").read_text()
        code, out, err = run_cli(["run", str(y), "--out", str(runs), "--resume", str(x_dir),
                                  *FAST], capsys)
        assert (code, out) == (2, "")
        assert err == (f"klingflow: --resume {x_dir}: that run directory belongs to pipeline "
                       "x, not y; nothing was sent. Resume it with its own pipeline, or start "
                       "a new run without --resume\n")
        assert len(sim.ledger()) == 1
    assert (x_dir / "report.json").read_text() == report  # x's report is x's


def test_resuming_from_another_file_of_the_same_name_is_refused(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_pipeline(isolated / "first", "same", [frames_step("one", "a")])
    second = write_pipeline(isolated / "second", "same", [frames_step("one", "a")])
    runs = isolated / "runs"
    with external_sim(monkeypatch, SimConfig(accounts=ACCOUNTS)):
        assert run_cli(["run", str(first), "--out", str(runs), *FAST], capsys)[0] == 0
        run_dir = only_run_dir(runs, "same")
        code, _, err = run_cli(["run", str(second), "--out", str(runs), "--resume",
                                str(run_dir)], capsys)
    assert code == 2
    assert err.startswith(f"klingflow: --resume {run_dir}: that run directory belongs to "
                          f"pipeline file {first.resolve()}, not {second.resolve()}; nothing "
                          "was sent")


def test_resume_latest_takes_the_latest_run_of_this_file_not_of_its_name(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files with one `name:`: a bare --resume of the first took the second's newer
    run, and was refused as belonging to another file."""
    first = write_pipeline(isolated / "first", "same", [frames_step("one", "a")])
    second = write_pipeline(isolated / "second", "same", [frames_step("one", "b")])
    runs = isolated / "runs"
    with external_sim(monkeypatch, SimConfig(accounts=ACCOUNTS)) as sim:
        assert run_cli(["run", str(first), "--out", str(runs), *FAST], capsys)[0] == 0
        [first_dir] = (runs / "same").iterdir()
        time.sleep(1.1)  # run ids are by the second
        assert run_cli(["run", str(second), "--out", str(runs), *FAST], capsys)[0] == 0
        code, out, err = run_cli(["run", str(first), "--out", str(runs), "--resume", *FAST],
                                 capsys)
        assert code == 0, err
        assert len(list((runs / "same").iterdir())) == 2  # resumed, not a third run
        assert f"report: {first_dir / 'report.json'}" in out  # the first file's own run
        assert len(sim.ledger()) == 2


def test_a_run_directory_in_use_by_another_run_is_refused(isolated: Path) -> None:
    path = write_pipeline(isolated / "p", "busy", [frames_step("slow", "a long shot")])
    env = {**os.environ, "KLINGFLOW_HOME": str(isolated / "home"), "PYTHONPATH": str(ROOT)}
    runs = isolated / "runs"
    command = [sys.executable, "-m", "klingflow", "run", str(path), "--sim", "--out",
               str(runs), "--sim-speed", "0.1"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=isolated)
    try:
        deadline = time.monotonic() + 60
        while not list(runs.glob("busy/*/journal.jsonl")):
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        run_dir = next(runs.glob("busy/*"))
        second = subprocess.run([*command, "--resume", str(run_dir)], env=env,
                                capture_output=True, text=True, timeout=60, cwd=isolated)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert second.returncode == 2
    assert second.stderr == (f"klingflow: --resume {run_dir}: {run_dir} is in use by another "
                             "klingflow run; wait for it to finish, or resume when it has "
                             "stopped\n")


def test_every_request_names_the_account_that_polls_it(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hardening issue's case: after two-accounts.yaml, mixed-inputs.yaml (no
    accounts:) in the same folder runs on a simulated service with several accounts."""
    pipelines = copy_examples(isolated)
    runs = isolated / "runs"
    fast = ["--sim", "--sim-speed", "8", "--out", str(runs)]
    assert run_cli(["run", str(pipelines / "two-accounts.yaml"), *fast], capsys)[0] == 0
    code, _, err = run_cli(["run", str(pipelines / "mixed-inputs.yaml"), "--force-all",
                            *fast], capsys)
    assert code == 0, err
    run_dir = only_run_dir(runs, "mixed-inputs")
    sent = [e for e in read_journal(run_dir) if e["event"] in ("submitting", "submitted")]
    assert sent and all(e["email"] for e in sent)
    assert {s["status"] for s in read_report(run_dir)["steps"]} == {"succeeded"}


def test_a_simulated_run_never_replaces_the_real_lock(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_pipeline(isolated / "p", "locked", [frames_step("one", "a"),
                                                     frames_step("two", "b")])
    lock = path.with_name("locked.lock.yaml")
    with external_sim(monkeypatch, SimConfig(accounts=ACCOUNTS)) as real:
        assert run_cli(["run", str(path), "--out", str(isolated / "runs"), *FAST],
                       capsys)[0] == 0
        real_section = yaml.safe_load(lock.read_text())["backends"][f"api:{real.base_url}"]
        path.write_text(path.read_text().replace("prompt: b", "prompt: forbidden b"))
        code = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs")], capsys)[0]
        assert code == 1  # the simulated run fails a step
        backends = yaml.safe_load(lock.read_text())["backends"]
        assert backends[f"api:{real.base_url}"] == real_section
        assert list(backends["sim"]) == ["one"]  # its own section: what it finished
        code, out, _ = run_cli(["lock", str(path)], capsys)  # the real backend's section
    assert code == 0
    assert out == (f"{lock}: 1 of 2 steps locked from the cache (api:{real.base_url}); "
                   "1 older entry kept\n")
    after = yaml.safe_load(lock.read_text())["backends"]
    assert after[f"api:{real.base_url}"] == real_section  # never shrunk
    assert list(after["sim"]) == ["one"]


def test_deleting_the_cache_keeps_the_simulated_services_tasks(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "kept", [frames_step("one", "a")])
    runs = isolated / "runs"
    assert run_cli(["run", str(path), "--sim", "--out", str(runs)], capsys)[0] == 0
    shutil.rmtree(isolated / "home")  # KLINGFLOW_HOME: the cache
    assert (path.parent / ".klingflow-sim").is_dir()  # the service's state lives apart
    fresh = isolated / "fresh"
    shutil.copytree(path.parent, fresh, ignore=shutil.ignore_patterns(".klingflow-sim"))
    code, out, err = run_cli(["plan", str(fresh / "kept.yaml"), "--sim"], capsys)
    assert code == 0, err
    assert "restore (lock, task " in out
