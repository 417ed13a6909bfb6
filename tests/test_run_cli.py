"""`klingflow run` end to end: Ctrl-C, the token kept out of every file, progress output."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from klingflow.progress import make_progress
from klingflow.run import Event
from klingflow.sim import SimConfig
from tests.runhelpers import (
    ROOT,
    copy_examples,
    ctrl_c_when,
    external_sim,
    frames_step,
    journal_has_submitted,
    only_run_dir,
    read_journal,
    read_report,
    run_cli,
    write_pipeline,
)

SECRET = "user:42-fake-TOPSECRET-klingflow-token"


def test_ctrl_c_leaves_a_valid_report_and_exits_130(isolated: Path) -> None:
    steps = [frames_step(f"s{i}", f"a long shot {i}") for i in range(4)]
    steps.append(frames_step("after", "after them", image="${steps.s0.last_frame}"))
    path = write_pipeline(isolated / "p", "interrupt", steps,
                          accounts={"a": ("a@example.com", 2)})
    runs = isolated / "runs"
    env = {**os.environ, "KLINGFLOW_HOME": str(isolated / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("USEAPI_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "klingflow", "run", str(path), "--sim", "--out", str(runs)],
        cwd=isolated, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, code, out, err = ctrl_c_when(process, lambda: journal_has_submitted(runs),
                                       wait=30, timeout=30)
    assert seen, "no task was submitted"
    assert code == 130, out + err
    assert err.endswith("klingflow: interrupted; continue with --resume\n"), err
    report = read_report(only_run_dir(runs, "interrupt"))  # validated by the schema
    assert report["status"] == "interrupted"
    assert report["error"] == "interrupted by the user; continue with --resume"
    statuses = [s["status"] for s in report["steps"]]
    assert "interrupted" in statuses  # a task was running (2 s each) when Ctrl-C came
    submitted = {e["step"] for e in read_journal(only_run_dir(runs, "interrupt"))
                 if e["event"] == "submitted"}
    for step in report["steps"]:
        if step["id"] in submitted and step["status"] != "succeeded":
            assert step["status"] == "interrupted" and step["task_id"] is not None, step
        if step["id"] not in submitted:
            assert step["status"] in ("not_run", "skipped"), step
    assert "Traceback" not in err


def _files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_the_token_appears_in_no_file_and_no_output(isolated: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pipelines = copy_examples(isolated)
    path = pipelines / "rocket-to-city.yaml"
    config = SimConfig(token=SECRET, accounts=[("studio@example.com", 2)],
                       accept_urls={"https://example.com/skyline.jpg"}, task_seconds=0.3)
    with external_sim(monkeypatch, config):
        code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs"),
                                  "--poll-interval", "0.05", "--json"], capsys)
    assert code == 0, err
    run_dir = only_run_dir(isolated / "runs", "rocket-to-city")
    assert read_report(run_dir)["status"] == "succeeded"
    files = _files_under(run_dir, isolated / "home", pipelines)
    assert any(f.name == "rocket-to-city.lock.yaml" for f in files)
    assert any(f.name == "journal.jsonl" for f in files)
    secret = SECRET.encode()
    tail = SECRET.split(":", 1)[1].encode()
    leaks = [f for f in files if secret in f.read_bytes() or tail in f.read_bytes()]
    assert leaks == []
    assert SECRET not in out + err and SECRET.split(":", 1)[1] not in out + err


def test_the_token_is_not_in_the_error_of_a_failed_call(isolated: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused POST (moderation) prints the request, never the token."""
    path = write_pipeline(isolated / "p", "refused", [frames_step("one", "a forbidden shot")])
    config = SimConfig(token=SECRET, accounts=[("a@example.com", 1)])
    with external_sim(monkeypatch, config):
        code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs"),
                                  "--poll-interval", "0.05"], capsys)
    assert code == 1, err
    report = read_report(only_run_dir(isolated / "runs", "refused"))
    step = report["steps"][0]
    assert step["error_category"] == "moderation"
    assert step["error"].startswith("POST http://127.0.0.1:")
    everything = out + err + json.dumps(report)
    assert SECRET not in everything and SECRET.split(":", 1)[1] not in everything


def test_an_account_the_service_lacks_stops_the_run_before_anything_is_sent(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_pipeline(isolated / "p", "unknown-account",
                          [frames_step("one", "a shot", account="x")],
                          accounts={"x": ("nobody@example.com", 1)})
    config = SimConfig(token=SECRET, accounts=[("a@example.com", 1)])
    with external_sim(monkeypatch, config) as sim:
        code, _, err = run_cli(["run", str(path), "--out", str(isolated / "runs")], capsys)
        assert sim.ledger() == []
        assert sim.stats()["requests"] == {"GET /accounts": 1}
    assert code == 2
    assert err == (f"klingflow: the service at {sim.base_url} has no account x "
                   "<nobody@example.com> (it has: a@example.com); nothing was sent\n")
    assert not (isolated / "runs").exists()


def test_progress_goes_to_the_current_stderr() -> None:
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        progress = make_progress(["one"])
        progress(Event("one", "submitted", "task 1"))
        progress.close()
    assert buffer.getvalue().endswith(" one submitted: task 1\n")
