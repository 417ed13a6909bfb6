"""Never pay twice: crashes, resumes, re-runs and concurrent runs against one service.

The simulator runs in this test process (uvicorn on 127.0.0.1), so it outlives
the `klingflow` processes these tests start and kill, as useapi.net would.
Its ledger is the witness of every task that was paid for.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from klingflow.sim import Faults, SimConfig, running_simulator
from tests.conftest import PIPELINES

TOKEN = "user:9-fake-klingflow-token"
ACCOUNTS = [("a@example.com", 3), ("b@example.com", 2), ("c@example.com", 2)]


@pytest.fixture
def sim_url(request: pytest.FixtureRequest) -> Iterator[str]:
    marker = request.node.get_closest_marker("sim_faults")
    faults = Faults.parse(marker.args[0]) if marker else Faults()
    config = SimConfig(token=TOKEN, accounts=ACCOUNTS, seed=11, faults=faults,
                       task_seconds=0.6, slow_seconds=0.3)
    with running_simulator(config) as url:
        yield url


def ledger(sim_url: str) -> list[dict]:
    root = sim_url.split("/v1/")[0]
    entries: list[dict] = httpx.get(f"{root}/_sim/ledger", timeout=10).json()
    return entries


def pipeline_text(name: str, steps: list[dict], *, accounts: bool = True) -> str:
    document: dict = {"version": 1, "name": name, "inputs": {"hero": "images/hero.png"}}
    if accounts:
        document["accounts"] = {"a": {"email": "a@example.com", "max_jobs": 3},
                                "b": {"email": "b@example.com", "max_jobs": 2},
                                "c": {"email": "c@example.com", "max_jobs": 2}}
    document["steps"] = steps
    return yaml.safe_dump(document, sort_keys=False)


def tree_steps(count: int) -> list[dict]:
    """A binary tree of frames steps: each starts from its parent's last frame."""
    steps = []
    for i in range(count):
        image = "${inputs.hero}" if i == 0 else f"${{steps.s{(i - 1) // 2}.last_frame}}"
        step = {"id": f"s{i}", "kind": "frames", "image": image, "prompt": f"shot {i}"}
        if i % 3:
            step["account"] = "abc"[i % 3]
        steps.append(step)
    return steps


def chain_steps(count: int, *, changed: int | None = None) -> list[dict]:
    return [{"id": f"s{i}", "kind": "frames",
             "image": "${inputs.hero}" if i == 0 else f"${{steps.s{i - 1}.last_frame}}",
             "prompt": f"shot {i}" + (" at dusk" if i == changed else "")}
            for i in range(count)]


def make_project(tmp_path: Path, name: str, steps: list[dict]) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    shutil.copy(PIPELINES / "images" / "hero.png", tmp_path / "images" / "hero.png")
    path = tmp_path / f"{name}.yaml"
    path.write_text(pipeline_text(name, steps))
    return path


def cli_env(sim_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "USEAPI_TOKEN": TOKEN, "KLINGFLOW_API_BASE": sim_url,
            "KLINGFLOW_HOME": str(tmp_path / "home")}


def start_run(path: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "klingflow", "run", str(path), "--out",
         str(path.parent / "runs"), "--poll-interval", "0.1", "--json", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict | None, str]:
    out, err = process.communicate(timeout=timeout)
    try:
        report = json.loads(out)
    except ValueError:
        report = None
    return process.returncode, report, err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_task_per_step(entries: list[dict], report: dict) -> None:
    task_ids = [e["task_id"] for e in entries]
    assert len(task_ids) == len(set(task_ids))
    report_ids = {s["task_id"] for s in report["steps"]}
    assert set(task_ids) == report_ids, "every paid task belongs to exactly one step"
    assert len(report_ids) == len(report["steps"])


def locked_steps(path: Path) -> dict:
    """The lock's one section (these runs all use one backend) of the pipeline at `path`."""
    lock = yaml.safe_load(path.with_name(path.stem + ".lock.yaml").read_text())
    (section,) = lock["backends"].values()
    return dict(section)


def assert_outputs_match_lock(path: Path, report: dict) -> None:
    steps = locked_steps(path)
    run_dir = Path(report["run_dir"])
    for step in report["steps"]:
        locked = steps[step["id"]]
        assert locked["task_id"] == step["task_id"]
        for attr, out in step["outputs"].items():
            assert sha256(run_dir / out["path"]) == out["sha256"] == locked["outputs"][attr]


def journal_lines(runs: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in runs.glob("*/*/journal.jsonl"))


def kill_at_a_random_moment(process: subprocess.Popen[str], runs: Path,
                            rng: random.Random) -> bool:
    """SIGKILL after 1-2 more journal lines or a random time; False if it ended first."""
    lines, wanted = journal_lines(runs), rng.randint(1, 2)
    deadline = time.monotonic() + rng.uniform(0.3, 4.0)
    while process.poll() is None:
        if journal_lines(runs) >= lines + wanted or time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.sim_faults("429=0.1,500=0.1,reset=0.1,slow=0.05,expire=0.1")
def test_sigkill_at_fifty_moments_then_resume_pays_each_step_once(
        tmp_path: Path, sim_url: str) -> None:
    path = make_project(tmp_path, "crash", tree_steps(30))
    env = cli_env(sim_url, tmp_path)
    rng = random.Random(2026)
    for kill in range(50):
        process = start_run(path, env, *(["--resume"] if kill else []))
        killed = kill_at_a_random_moment(process, tmp_path / "runs", rng)
        assert killed, f"the run ended after only {kill} kills: {finish(process)[2]}"
    code, report, err = finish(start_run(path, env, "--resume"))
    assert code == 0, err
    assert report is not None and report["status"] == "succeeded"
    assert Counter(s["status"] for s in report["steps"]) == {"succeeded": 30}
    assert_one_task_per_step(ledger(sim_url), report)
    assert_outputs_match_lock(path, report)


def test_unchanged_rerun_costs_nothing_and_every_step_is_cached(
        tmp_path: Path, sim_url: str) -> None:
    path = make_project(tmp_path, "again", tree_steps(5))
    env = cli_env(sim_url, tmp_path)
    code, first, err = finish(start_run(path, env))
    assert code == 0, err
    code, second, err = finish(start_run(path, env))
    assert code == 0, err
    assert first is not None and second is not None
    assert second["totals"]["credits"] == 0
    assert {s["status"] for s in second["steps"]} == {"cached"}
    assert len(ledger(sim_url)) == 5
    for before, after in zip(first["steps"], second["steps"], strict=True):
        assert before["outputs"] == after["outputs"]


def test_changing_one_prompt_in_a_chain_reruns_that_step_and_its_dependents(
        tmp_path: Path, sim_url: str) -> None:
    path = make_project(tmp_path, "chain", chain_steps(20))
    env = cli_env(sim_url, tmp_path)
    assert finish(start_run(path, env))[0] == 0
    paid_before = {e["task_id"] for e in ledger(sim_url)}
    path.write_text(pipeline_text("chain", chain_steps(20, changed=12)))
    code, report, err = finish(start_run(path, env))
    assert code == 0, err
    assert report is not None
    new_tasks = [e for e in ledger(sim_url) if e["task_id"] not in paid_before]
    rerun = {s["id"] for s in report["steps"] if s["status"] == "succeeded"}
    assert rerun == {f"s{i}" for i in range(12, 20)}
    assert len(new_tasks) == 8
    assert {s["id"] for s in report["steps"] if s["status"] == "cached"} == \
        {f"s{i}" for i in range(12)}


def test_force_regenerates_one_step_and_its_dependents(tmp_path: Path, sim_url: str) -> None:
    path = make_project(tmp_path, "forced", chain_steps(4))
    env = cli_env(sim_url, tmp_path)
    assert finish(start_run(path, env))[0] == 0
    code, report, err = finish(start_run(path, env, "--force", "s2"))
    assert code == 0, err
    assert report is not None
    assert [s["status"] for s in report["steps"]] == ["cached", "cached", "succeeded",
                                                      "succeeded"]
    assert [s["served_by"] for s in report["steps"]] == ["cache", "cache", None, None]
    assert len(ledger(sim_url)) == 6


def test_two_runs_at_once_on_one_cache_pay_each_step_once(tmp_path: Path,
                                                          sim_url: str) -> None:
    path = make_project(tmp_path, "twice", tree_steps(12))
    env = cli_env(sim_url, tmp_path)
    first, second = start_run(path, env), start_run(path, env)
    (code1, report1, err1), (code2, report2, err2) = finish(first), finish(second)
    assert (code1, code2) == (0, 0), err1 + err2
    assert report1 is not None and report2 is not None
    entries = ledger(sim_url)
    assert len(entries) == 12
    statuses = Counter(s["status"] for r in (report1, report2) for s in r["steps"])
    assert statuses == {"succeeded": 12, "cached": 12}


def test_a_budget_refuses_the_submit_that_would_cross_it(tmp_path: Path,
                                                         sim_url: str) -> None:
    path = make_project(tmp_path, "budget", chain_steps(3))
    env = cli_env(sim_url, tmp_path)
    code, report, err = finish(start_run(path, env, "--budget", "45"))
    assert code == 1, err
    assert report is not None
    assert [s["status"] for s in report["steps"]] == ["succeeded", "succeeded", "failed"]
    assert report["steps"][2]["error"] == (
        "submitting s2 (20 credits) would cross the budget: 40 of 45 credits already "
        "reserved; nothing was sent")
    assert report["steps"][2]["error_category"] == "budget"
    assert len(ledger(sim_url)) == 2


def test_a_lost_lock_is_rebuilt_from_the_cache(tmp_path: Path, sim_url: str) -> None:
    path = make_project(tmp_path, "relock", chain_steps(3))
    env = cli_env(sim_url, tmp_path)
    assert finish(start_run(path, env))[0] == 0
    lock = path.with_name("relock.lock.yaml")
    written = lock.read_text()
    lock.unlink()
    result = subprocess.run([sys.executable, "-m", "klingflow", "lock", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("3 of 3 steps locked from the cache "
                                          f"(api:{env['KLINGFLOW_API_BASE']})")
    assert lock.read_text() == written


def plan_json(path: Path, env: dict[str, str], *extra: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "klingflow", "plan", str(path), "--json",
                             *extra], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plan: dict = json.loads(result.stdout)
    return plan


def test_plan_says_which_steps_will_run_why_and_totals_only_those(
        tmp_path: Path, sim_url: str) -> None:
    path = make_project(tmp_path, "verdicts", chain_steps(4))
    env = cli_env(sim_url, tmp_path)
    before = plan_json(path, env)
    assert [s["cache"] for s in before["steps"]] == [  # never run: new, all of them
        {"verdict": "will run", "reason": "new"} for _ in range(4)]
    assert before["totals"]["credits"] == 80
    assert finish(start_run(path, env))[0] == 0
    path.write_text(pipeline_text("verdicts", chain_steps(4, changed=2)))
    after = plan_json(path, env)
    assert [(s["id"], s["cache"]["verdict"], s["cache"]["reason"]) for s in after["steps"]] == [
        ("s0", "cached", None), ("s1", "cached", None),
        ("s2", "will run", "changed: prompt"), ("s3", "will run", "upstream changed: s2")]
    assert after["totals"]["credits"] == 40
    assert after["totals"]["cached"] == ["s0", "s1"]
    forced = plan_json(path, env, "--force", "s1")
    assert [s["cache"]["reason"] for s in forced["steps"]] == [
        None, "forced", "upstream changed: s1", "upstream changed: s2"]
    assert forced["totals"]["credits"] == 60
    text = subprocess.run([sys.executable, "-m", "klingflow", "plan", str(path)], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert "  overall: 2 steps, 40 credits (2 cached, at no cost)" in text.splitlines()
    assert len(ledger(sim_url)) == 4  # planning never reaches the service


def kill_after(process: subprocess.Popen[str], journal_event: str, runs: Path) -> None:
    """SIGKILL the run as soon as its journal holds `journal_event`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        journals = list(runs.glob("*/*/journal.jsonl"))
        if journals and f'"event": "{journal_event}"' in journals[0].read_text():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.005)
    raise AssertionError(f"no {journal_event} line within 60 s")


def test_a_resumed_task_is_not_charged_to_the_budget_twice(tmp_path: Path,
                                                           sim_url: str) -> None:
    path = make_project(tmp_path, "prepaid", chain_steps(1))
    env = cli_env(sim_url, tmp_path)
    kill_after(start_run(path, env, "--budget", "20"), "submitted", tmp_path / "runs")
    code, report, err = finish(start_run(path, env, "--budget", "20", "--resume"))
    assert code == 0, err
    assert report is not None and report["steps"][0]["status"] == "succeeded"
    # paid by the killed invocation, not by the resume, which says so
    assert f" s0 re-attached: task {report['steps'][0]['task_id']}\n" in err
    assert (report["totals"]["credits_charged"], report["totals"]["credits_charged_run"]) == \
        (0, 20)
    assert (report["steps"][0]["credits"], report["steps"][0]["charged_now"]) == (20, 0)
    assert len(ledger(sim_url)) == 1


def test_a_task_re_attached_after_a_crash_is_planned_and_run_at_no_cost(
        tmp_path: Path, sim_url: str) -> None:
    """After a crash, the killed run paid for s0's task. `plan` says a run re-attaches to
    it at no cost (it said "will run (new)" and counted it). A plain re-run (no
    --resume) does so and reserves nothing for it, so the budget is there for s1, the
    one new task (s0's price was reserved too, and s1 failed as `[budget]`)."""
    path = make_project(tmp_path, "reattached", chain_steps(2))
    env = cli_env(sim_url, tmp_path)
    kill_after(start_run(path, env), "submitted", tmp_path / "runs")
    task_id = ledger(sim_url)[0]["task_id"]
    planned = plan_json(path, env)
    assert [s["cache"] for s in planned["steps"]] == [
        {"verdict": "re-attach", "reason": f"task {task_id}, paid before"},
        {"verdict": "will run", "reason": "upstream in flight: s0"}]
    assert (planned["totals"]["credits"], planned["totals"]["reattached"]) == (20, ["s0"])
    text = subprocess.run([sys.executable, "-m", "klingflow", "plan", str(path)], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert "  overall: 1 step, 20 credits (1 re-attached, at no cost)" in text.splitlines()
    forced = plan_json(path, env, "--force-all")  # forced past the cache, not a paid task
    assert [s["cache"]["verdict"] for s in forced["steps"]] == ["re-attach", "will run"]
    code, report, err = finish(start_run(path, env, "--budget", "20"))
    assert code == 0, err
    assert report is not None
    assert [s["status"] for s in report["steps"]] == ["succeeded", "succeeded"]
    assert report["steps"][0]["task_id"] == task_id
    assert f" s0 re-attached: task {report['steps'][0]['task_id']}\n" in err
    assert [s["charged_now"] for s in report["steps"]] == [0, 20]
    assert report["totals"]["credits_charged"] == 20
    assert_one_task_per_step(ledger(sim_url), report)


def test_an_unreadable_in_flight_record_stops_the_step_instead_of_paying_again(
        tmp_path: Path, sim_url: str) -> None:
    """Records are not fsync'd: a power cut can leave one empty. It was read as "never
    sent", and the next run paid for the step again without a word."""
    path = make_project(tmp_path, "emptied", chain_steps(2))
    env = cli_env(sim_url, tmp_path)
    kill_after(start_run(path, env), "submitted", tmp_path / "runs")
    killed = next((tmp_path / "runs" / "emptied").iterdir())
    [record] = (tmp_path / "home" / "inflight").glob("*.json")
    record.write_text("")
    planned = plan_json(path, env)
    assert planned["steps"][0]["cache"] == {
        "verdict": "will run", "reason": f"{record} cannot be read (it is empty): a run stops "
                                         "at it rather than pay again"}
    code, report, err = finish(start_run(path, env))
    assert code == 1, err
    assert report is not None
    assert (report["steps"][0]["error_category"], report["steps"][0]["error"]) == (
        "inflight", f"{record} cannot be read (it is empty): an earlier POST of this request "
        "may have created a task that is paid for. Run again with --resume RUN_DIR (the "
        f"folder of the run that sent it) to re-attach to its task, or delete {record} to pay "
        "for a new one")
    assert len(ledger(sim_url)) == 1
    code, report, err = finish(start_run(path, env, "--resume", str(killed)))
    assert code == 0, err
    assert report is not None
    assert_one_task_per_step(ledger(sim_url), report)


def test_resuming_a_killed_forced_run_collects_the_task_it_paid_for(
        tmp_path: Path, sim_url: str) -> None:
    """The resume has no --force, and the cache holds the step's earlier result: it took
    that, and the regeneration paid for before the kill was never collected."""
    path = make_project(tmp_path, "forced", chain_steps(1))
    env = cli_env(sim_url, tmp_path)
    assert finish(start_run(path, env))[0] == 0
    shutil.rmtree(tmp_path / "runs")  # so that the kill below watches the forced run
    kill_after(start_run(path, env, "--force-all"), "submitted", tmp_path / "runs")
    _, regenerated = (entry["task_id"] for entry in ledger(sim_url))
    code, report, err = finish(start_run(path, env, "--resume"))
    assert code == 0, err
    assert report is not None
    assert (report["steps"][0]["status"], report["steps"][0]["task_id"]) == (
        "succeeded", regenerated)
    assert report["totals"]["credits_charged"] == 0  # paid before the kill
    assert len(ledger(sim_url)) == 2


def test_slots_held_for_tasks_from_before_are_freed_when_the_cache_serves_them(
        tmp_path: Path, sim_url: str) -> None:
    steps = [{"id": f"s{i}", "kind": "frames", "image": "${inputs.hero}",
              "prompt": f"shot {i}", "account": "b"} for i in range(4)]
    path = make_project(tmp_path, "slots", steps[:2])
    env = cli_env(sim_url, tmp_path)
    assert finish(start_run(path, env))[0] == 0
    locked = locked_steps(path)
    # A run killed after s0's and s1's tasks were submitted, while another run put
    # both in the cache: on resume they come from the cache, and the two slots of
    # account b (max_jobs 2) held for their tasks must go back, or s2 and s3 wait forever.
    run_dir = tmp_path / "runs" / "slots" / "99999999-killed"
    run_dir.mkdir(parents=True)
    lines = []
    for sid in ("s0", "s1"):
        lines += [{"event": "submitting", "step": sid, "key": locked[sid]["key"],
                   "reply_ref": f"r-{sid}", "account": "b", "email": "b@example.com",
                   "at_ms": 1},
                  {"event": "submitted", "step": sid, "task_id": locked[sid]["task_id"],
                   "account": "b", "email": "b@example.com", "reply_ref": f"r-{sid}"}]
    (run_dir / "journal.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    path.write_text(pipeline_text("slots", steps))
    code, report, err = finish(start_run(path, env, "--resume", str(run_dir)), timeout=60)
    assert code == 0, err
    assert report is not None
    # the journal says this run created s0's and s1's tasks: paid in this run, not cached
    assert [s["status"] for s in report["steps"]] == ["succeeded"] * 4
    assert [s["served_by"] for s in report["steps"]] == [None] * 4


@pytest.mark.parametrize("moment", ["submitting", "submitted"])
def test_deleting_runs_while_a_task_is_in_flight_does_not_pay_again(
        tmp_path: Path, sim_url: str, moment: str) -> None:
    """runs/ is git-ignored: a clean checkout, or a tidy user, deletes it. The cache's
    in-flight record still names the task (or the POST's replyRef), so the next run,
    with or without --resume, re-attaches instead of paying."""
    path = make_project(tmp_path, "deleted", chain_steps(2))
    env = cli_env(sim_url, tmp_path)
    kill_after(start_run(path, env), moment, tmp_path / "runs")
    paid_before = len(ledger(sim_url))  # 1, or 0 if the kill came before the POST left
    shutil.rmtree(tmp_path / "runs")
    code, report, err = finish(start_run(path, env, "--resume"))
    assert code == 0, err
    assert report is not None
    after = ledger(sim_url)
    assert_one_task_per_step(after, report)
    assert report["totals"]["tasks_created"] == len(after) - paid_before
    assert report["totals"]["credits_charged"] == 20 * (len(after) - paid_before)
