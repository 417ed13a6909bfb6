"""The done-when of issue 9's secrets: a grep over every file that a run, a failed run,
an interrupted run and its resume write, and over everything they print, finds neither
the token (with or without the trailing whitespace it was given with) nor URL
credentials. Real CLI, the simulator on 127.0.0.1, USEAPI_TOKEN as a user sets it.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from klingflow.sim import SimConfig
from tests.runhelpers import (
    ROOT,
    ctrl_c_when,
    external_sim,
    frames_step,
    only_run_dir,
    read_journal,
    read_report,
    run_cli,
    write_pipeline,
)

SECRET = "user:4242-fake-GREPME-6f1d0c-token"
GIVEN = SECRET + "\r\n"  # as a CRLF .env file gives it
PASSWORD = "pw-GREPME-hunter2"
URL_USER = "klinguser-GREPME"


def _needles() -> list[bytes]:
    """Every form a leaked secret could take in a file or an output."""
    token_tail = SECRET.split(":", 1)[1]
    basic = base64.b64encode(f"{URL_USER}:{PASSWORD}".encode()).decode()
    texts = [SECRET, GIVEN, SECRET + "\n", repr(GIVEN)[1:-1], token_tail, token_tail[8:20],
             PASSWORD, URL_USER, basic]
    return [t.encode() for t in texts]


def _step(step_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
    """A short step; a request that cannot be sent fails it in 20 s, not 30 minutes."""
    return frames_step(step_id, prompt, timeout=20, **fields)


def _interrupted_run(isolated: Path, path: Path, runs: Path) -> tuple[int, str, str]:
    """`klingflow run` in a child process, Ctrl-C once a task is submitted."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "klingflow", "run", str(path), "--out", str(runs),
         "--poll-interval", "0.05"],
        cwd=isolated, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = runs / "slow"

    def submitted() -> bool:
        return any('"event": "submitted"' in j.read_text(encoding="utf-8")
                   for j in journal.glob("*/journal.jsonl"))

    seen, code, out, err = ctrl_c_when(process, submitted, wait=60, timeout=60)
    assert seen, "no task was submitted"
    return code, out, err


def test_no_file_or_output_of_any_run_holds_the_token_or_url_credentials(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, runs = isolated / "p", isolated / "runs"
    good = write_pipeline(folder, "good", [
        _step("one", "a quiet lake"),
        _step("two", "the lake at noon", image="${steps.one.last_frame}")])
    failing = write_pipeline(folder, "failing", [
        _step("bad", "a forbidden scene"),
        _step("after", "what follows", image="${steps.bad.last_frame}"),
        _step("fine", "a calm sea")])
    slow = write_pipeline(folder, "slow", [_step(f"s{i}", f"a long shot {i}")
                                           for i in range(3)])
    outputs: list[str] = []
    config = SimConfig(token=SECRET, task_seconds=1.0)
    with external_sim(monkeypatch, config, token=GIVEN) as sim:
        code, out, err = run_cli(["run", str(good), "--out", str(runs),
                                  "--poll-interval", "0.05"], capsys)
        outputs += [out, err]
        assert code == 0, err
        code, out, err = run_cli(["run", str(failing), "--out", str(runs),
                                  "--poll-interval", "0.05", "--json"], capsys)
        outputs += [out, err]
        assert code == 1, err
        code, out, err = _interrupted_run(isolated, slow, runs)
        outputs += [out, err]
        assert code == 130, err
        code, out, err = run_cli(["run", str(slow), "--out", str(runs), "--resume",
                                  "--poll-interval", "0.05"], capsys)
        outputs += [out, err]
        assert code == 0, err
        for argv in (["plan", str(good)], ["lock", str(good)], ["plan", str(slow), "--json"]):
            code, out, err = run_cli(argv, capsys)
            outputs += [out, err]
            assert code == 0, err
        paid = len(sim.ledger())
        credentialed = sim.base_url.replace("http://", f"http://{URL_USER}:{PASSWORD}@")
        monkeypatch.setenv("KLINGFLOW_API_BASE", credentialed)
        code, out, err = run_cli(["run", str(good), "--out", str(runs), "--force-all"], capsys)
        outputs += [out, err]
        assert code == 2, err
        assert len(sim.ledger()) == paid  # refused before any request

    # every run happened as intended, so the scan covers what each kind of run writes
    failed = read_report(only_run_dir(runs, "failing"))
    assert {s["id"]: s["status"] for s in failed["steps"]} == {
        "bad": "failed", "after": "skipped", "fine": "succeeded"}
    resumed = only_run_dir(runs, "slow")
    assert read_report(resumed)["status"] == "succeeded"
    assert sum(e["event"] == "run" for e in read_journal(resumed)) == 2
    files = [p for p in isolated.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"journal.jsonl", "report.json", "good.lock.yaml", "slow.lock.yaml"} <= names

    needles = _needles()
    leaks = [(str(p.relative_to(isolated)), n) for p in files for n in needles
             if n in p.read_bytes()]
    assert leaks == []
    printed = "".join(outputs).encode()
    assert [n for n in needles if n in printed] == []
