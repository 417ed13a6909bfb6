"""How a run fails: no token, a wrong token (401), moderation, --fail-fast.

Through the real CLI (`main`), on the embedded simulator (`--sim`) or on one
served on 127.0.0.1 that the run reaches through USEAPI_TOKEN and
KLINGFLOW_API_BASE, like the real service.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klingflow.sim import SimConfig
from tests.runhelpers import (
    external_sim,
    frames_step,
    only_run_dir,
    read_report,
    run_cli,
    steps_of,
    write_pipeline,
)

NO_TOKEN = ("klingflow: no API token: set USEAPI_TOKEN to your useapi.net token to spend real "
            "credits, or add --sim to run on the embedded simulator\n")
ACCOUNTS = {"a": ("a@example.com", 2), "b": ("b@example.com", 1)}
FAST = ["--sim-speed", "10"]
MODERATION_TEXT = ("HTTP 500: The content you uploaded appears to violate the community "
                   "guidelines. (CM_EXT.POther)")


def _chain_pipeline(folder: Path, name: str) -> Path:
    return write_pipeline(folder, name, [
        frames_step("one", "a quiet lake at dawn", account="a"),
        frames_step("two", "the lake at noon", image="${steps.one.last_frame}", account="a"),
        frames_step("side", "a mountain path", account="b"),
    ], accounts=ACCOUNTS)


def test_no_token_and_no_sim_stops_before_any_work(isolated: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _chain_pipeline(isolated / "p", "no-token")
    code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs")], capsys)
    assert (code, out, err) == (2, "", NO_TOKEN)
    assert not (isolated / "runs").exists()
    assert not (isolated / "home").exists()  # no cache touched
    assert not (path.parent / "no-token.lock.yaml").exists()


def test_an_empty_token_is_no_token(isolated: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USEAPI_TOKEN", "")
    path = _chain_pipeline(isolated / "p", "empty-token")
    code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs")], capsys)
    assert (code, out, err) == (2, "", NO_TOKEN)
    assert not (isolated / "runs").exists()


def test_a_wrong_token_stops_the_whole_run(isolated: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused at its first request, the run has recorded nothing: it ends as that error
    (exit 2) and leaves no run directory, no report and no lock."""
    wrong = "user:11-fake-WRONG-token"
    path = _chain_pipeline(isolated / "p", "wrong-token")
    config = SimConfig(token="user:22-fake-right-token", accounts=list(ACCOUNTS.values()))
    with external_sim(monkeypatch, config, token=wrong) as sim:
        code, out, err = run_cli(["run", str(path), "--out", str(isolated / "runs"),
                                  "--poll-interval", "0.05"], capsys)
        ledger = sim.ledger()
    assert (code, out) == (2, "")
    assert ledger == []
    assert err == (f"klingflow: GET {sim.base_url}/accounts: HTTP 401: Unauthorized: check "
                   "USEAPI_TOKEN; nothing was sent\n")
    assert not (isolated / "runs").exists()
    assert not (path.parent / "wrong-token.lock.yaml").exists()
    assert wrong not in out + err


def test_moderation_fails_one_step_and_skips_only_its_dependents(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipeline(isolated / "p", "moderated", [
        frames_step("bad", "a forbidden scene", account="a"),
        frames_step("child", "what follows", image="${steps.bad.last_frame}", account="a"),
        frames_step("grandchild", "and after", image="${steps.child.last_frame}", account="b"),
        frames_step("waits", "waits for it", account="b", needs=["bad"]),
        frames_step("good", "a calm sea", account="b"),
        frames_step("good-next", "the sea at night", image="${steps.good.last_frame}",
                    account="a"),
    ], accounts=ACCOUNTS)
    code, out, err = run_cli(["run", str(path), "--sim", *FAST,
                              "--out", str(isolated / "runs")], capsys)
    assert code == 1, err
    report = read_report(only_run_dir(isolated / "runs", "moderated"))
    assert report["status"] == "failed"
    steps = steps_of(report)
    bad = steps["bad"]
    assert (bad["status"], bad["error_category"], bad["task_id"]) == ("failed", "moderation", None)
    assert bad["error"].endswith(MODERATION_TEXT)
    assert bad["attempts"] == 1  # moderation is final: never submitted again
    assert steps["child"]["status"] == "skipped"
    assert steps["child"]["error"] == "needs bad, which failed"
    assert steps["grandchild"]["status"] == "skipped"
    assert steps["grandchild"]["error"] == "needs child, which skipped"
    assert steps["waits"]["status"] == "skipped"
    for sid in ("child", "grandchild", "waits"):
        assert steps[sid]["task_id"] is None and steps[sid]["attempts"] == 0
    assert steps["good"]["status"] == steps["good-next"]["status"] == "succeeded"
    assert report["totals"]["by_status"] == {"failed": 1, "skipped": 3, "succeeded": 2}
    assert "[moderation]" in out


def test_fail_fast_stops_new_submissions(isolated: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    steps = [frames_step("bad", "a forbidden scene", account="a")]
    steps += [frames_step(f"later{i}", f"later shot {i}", account="a") for i in range(6)]
    path = write_pipeline(isolated / "p", "fail-fast", steps,
                          accounts={"a": ("a@example.com", 1)})
    code, _out, err = run_cli(["run", str(path), "--sim", *FAST, "--fail-fast",
                              "--out", str(isolated / "runs")], capsys)
    assert code == 1, err
    report = read_report(only_run_dir(isolated / "runs", "fail-fast"))
    by_id = steps_of(report)
    assert by_id["bad"]["error_category"] == "moderation"
    stopped_at = by_id["bad"]["finished_at"]
    for sid, step in by_id.items():
        if sid == "bad":
            continue
        if step["submitted_at"] is not None:  # only what was in flight before the failure
            assert step["submitted_at"] <= stopped_at, step
            assert step["status"] == "succeeded", step
        else:
            assert step["status"] == "not_run", step
            assert step["error"] == "not submitted: the run was stopping", step
    assert sum(1 for s in by_id.values() if s["task_id"] is not None) <= 1  # max_jobs 1


def test_without_fail_fast_the_rest_goes_on(isolated: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    steps = [frames_step("bad", "a forbidden scene", account="a")]
    steps += [frames_step(f"later{i}", f"later shot {i}", account="a") for i in range(3)]
    path = write_pipeline(isolated / "p", "goes-on", steps, accounts={"a": ("a@example.com", 2)})
    code, _out, err = run_cli(["run", str(path), "--sim", *FAST,
                              "--out", str(isolated / "runs")], capsys)
    assert code == 1, err
    report = read_report(only_run_dir(isolated / "runs", "goes-on"))
    assert report["totals"]["by_status"] == {"failed": 1, "succeeded": 3}


def test_json_prints_the_report(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _chain_pipeline(isolated / "p", "as-json")
    code, out, err = run_cli(["run", str(path), "--sim", *FAST, "--json",
                              "--out", str(isolated / "runs")], capsys)
    assert code == 0, err
    printed = json.loads(out)
    run_dir = only_run_dir(isolated / "runs", "as-json")
    assert printed == read_report(run_dir)
    assert printed["status"] == "succeeded"
    assert printed["totals"]["tasks_created"] == 3


def test_a_task_that_failed_at_the_service_is_remembered_as_no_use(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """So that no later recovery of a POST of the same request (one whose answer was
    lost, its run directory deleted since) takes the failed task for its own and charges
    its run for it: the pay-once property test found that window."""
    from klingflow.cache.local import UNUSABLE

    # Each step is refused at submit with p = 0.5, else its task fails later with p = 0.5
    # (the faults hash each POST's body, whose replyRef is new at every run): with 30
    # steps, no task failing after it was made has a chance of 0.75 ** 30 < 2e-4.
    # (10 steps at 0.6, 0.76 ** 10 = 6%, failed a CI run.)
    path = write_pipeline(isolated / "p", "doomed",
                          [frames_step(f"s{n}", f"shot {n}") for n in range(30)])
    code, _, err = run_cli(["run", str(path), "--sim", *FAST, "--sim-faults",
                            "moderation=0.5", "--out", str(isolated / "runs")], capsys)
    assert code == 1, err
    failed = {s["task_id"]: s["error_category"]
              for s in steps_of(read_report(only_run_dir(isolated / "runs", "doomed"))).values()
              if s["status"] == "failed" and s["task_id"] is not None}
    assert failed  # some were refused at submit; these failed after their task was made

    kept = json.loads(next((isolated / "home").rglob(UNUSABLE)).read_text())
    assert {int(task): why for task, why in kept.items()} == {
        task: f"failed at the service ({category})" for task, category in failed.items()}
