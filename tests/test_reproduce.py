"""Reproduce anywhere (issue 11): a teammate's checkout restores from the lock, machines
share a remote cache (a real S3 server on 127.0.0.1, moto's) and never pay twice for
one request, even at the same moment or when one of them dies mid-step.

"Machines" are folders of their own, each with its own KLINGFLOW_HOME, running the real
CLI against one simulated service on 127.0.0.1 (as useapi.net is one service).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from klingflow.sim import SimConfig, running_simulator
from tests.runhelpers import ROOT, frames_step, write_pipeline
from tests.s3server import S3Bucket

TOKEN = "user:7-fake-reproduce-token"
ACCOUNTS = [("a@example.com", 3), ("b@example.com", 2)]


@pytest.fixture
def service():  # type: ignore[no-untyped-def]
    """One simulated service for every machine of a test."""
    config = SimConfig(token=TOKEN, accounts=ACCOUNTS, task_seconds=0.6)
    with running_simulator(config) as url:
        yield url


def ledger(url: str) -> list[dict]:
    entries: list[dict] = httpx.get(url.split("/v1/")[0] + "/_sim/ledger", timeout=10).json()
    return entries


def chain(count: int) -> list[dict]:
    return [frames_step(f"s{i}", f"shot {i}", model_name="kling-v2-1", duration=5,
                        image="${inputs.hero}" if i == 0 else f"${{steps.s{i - 1}.last_frame}}")
            for i in range(count)]


def machine(root: Path, name: str, source: Path | None = None, *,
            steps: list[dict] | None = None) -> Path:
    """A machine's checkout: a copy of `source`'s pipeline folder (lock included), or a
    new pipeline; returns the pipeline's path."""
    folder = root / name / "repo"
    if source is not None:
        shutil.copytree(source.parent, folder,
                        ignore=shutil.ignore_patterns(".klingflow*", "runs"))
        return folder / source.name
    return write_pipeline(folder, "film", steps or chain(3))


def env(path: Path, service: str, **extra: str) -> dict[str, str]:
    home = path.parent.parent / "home"
    return {**os.environ, "USEAPI_TOKEN": TOKEN, "KLINGFLOW_API_BASE": service,
            "KLINGFLOW_HOME": str(home), "PYTHONPATH": str(ROOT), **extra}


def start(path: Path, environment: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "klingflow", "run", str(path), "--out",
                             str(path.parent.parent / "runs"), "--poll-interval", "0.05",
                             "--json", *extra], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict, str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode in (0, 1), err
    return process.returncode, json.loads(out), err


def run(path: Path, environment: dict[str, str], *extra: str) -> tuple[dict, str]:
    code, report, err = finish(start(path, environment, *extra))
    assert code == 0, err
    return report, err


def plan_text(path: Path, environment: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "klingflow", "plan", str(path)],
                          env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locked(path: Path, service: str) -> dict:
    lock = yaml.safe_load(path.with_name(path.stem + ".lock.yaml").read_text())
    section: dict = lock["backends"][f"api:{service}"]
    return section


# ---- restore from the lock ------------------------------------------------------------------


def test_a_checkout_with_only_the_pipeline_its_lock_and_images_pays_nothing(
        tmp_path: Path, service: str) -> None:
    first = machine(tmp_path, "author")
    run(first, env(first, service))
    paid = len(ledger(service))
    teammate = machine(tmp_path, "teammate", first)  # git clone: no .klingflow/, no runs/
    steps = locked(teammate, service)
    text = plan_text(teammate, env(teammate, service))
    for sid, entry in steps.items():
        assert f"restore (lock, task {entry['task_id']})" in text, sid
    assert "overall: 0 steps, 0 credits (3 restored, at no cost)" in text
    report, _ = run(teammate, env(teammate, service))
    assert len(ledger(service)) == paid  # nothing paid
    assert [s["served_by"] for s in report["steps"]] == ["lock"] * 3
    assert report["totals"]["credits_saved"] == {"cache": 0, "remote": 0, "lock": 60}
    run_dir = Path(report["run_dir"])
    for step in report["steps"]:
        clip = run_dir / step["outputs"]["video"]["path"]
        assert sha256(clip) == steps[step["id"]]["outputs"]["video"]


def test_a_locked_task_of_an_account_this_token_lacks_is_paid_for_once_not_retried(
        tmp_path: Path, service: str) -> None:
    """A teammate's lock names a task of their own Kling account: reading it is refused
    (HTTP 400), every time. The step failed with 'run again to restore it at no cost',
    on every run; it is paid for here instead, as a task that is gone is."""
    first = machine(tmp_path, "author")
    run(first, env(first, service))
    teammate = machine(tmp_path, "teammate", first)
    lock_file = teammate.with_name("film.lock.yaml")
    lock = yaml.safe_load(lock_file.read_text())
    locked = lock["backends"][f"api:{service}"]["s2"]
    locked["email"] = "other@example.com"
    lock_file.write_text(yaml.safe_dump(lock, sort_keys=False))
    report, err = run(teammate, env(teammate, service))
    assert [s["served_by"] for s in report["steps"]] == ["lock", "lock", None]
    assert report["totals"]["tasks_created"] == 1
    assert f"s2 lock: not restored: locked task {locked['task_id']} cannot be read here (" \
        in err
    again, _ = run(teammate, env(teammate, service))  # the new task is cached now
    assert again["totals"]["tasks_created"] == 0


def test_a_locked_task_that_is_gone_is_paid_for_and_the_plan_says_why(
        tmp_path: Path, service: str) -> None:
    first = machine(tmp_path, "author")
    run(first, env(first, service))
    teammate = machine(tmp_path, "teammate", first)
    lock_file = teammate.with_name("film.lock.yaml")
    lock = yaml.safe_load(lock_file.read_text())
    lock["backends"][f"api:{service}"]["s2"]["task_id"] = 999999
    lock_file.write_text(yaml.safe_dump(lock, sort_keys=False))
    report, err = run(teammate, env(teammate, service))
    assert [s["served_by"] for s in report["steps"]] == ["lock", "lock", None]
    assert report["totals"]["tasks_created"] == 1
    assert "s2 lock: not restored: locked task 999999 is gone" in err
    # a second teammate, who shares nothing but the cache folder's marker, is told why
    other = machine(tmp_path, "other", first)
    lock_file = other.with_name("film.lock.yaml")
    lock_file.write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.copytree(tmp_path / "teammate" / "home", tmp_path / "other" / "home",
                    ignore=shutil.ignore_patterns("entries", "objects"))
    text = plan_text(other, env(other, service))
    assert "will run (locked task 999999 is gone)" in text


# ---- a remote cache on S3 -------------------------------------------------------------------


def test_a_second_machine_with_neither_lock_nor_cache_is_served_by_the_remote(
        tmp_path: Path, service: str, s3: S3Bucket) -> None:
    first = machine(tmp_path, "ci")
    remote = {"KLINGFLOW_REMOTE": s3.url()}
    report, _ = run(first, env(first, service, **remote))
    paid = len(ledger(service))
    names = s3.object_names()
    assert sum(n.startswith("klingflow/ac/") for n in names) == 3
    assert sum(n.startswith("klingflow/cas/") for n in names) == 9  # clip and 2 frames each
    laptop = machine(tmp_path, "laptop", steps=chain(3))  # no lock, no cache
    report, _ = run(laptop, env(laptop, service, **remote))
    assert len(ledger(service)) == paid
    assert [s["served_by"] for s in report["steps"]] == ["remote"] * 3


def test_two_machines_starting_together_pay_once_per_step(
        tmp_path: Path, service: str, s3: S3Bucket) -> None:
    steps = chain(2) + [frames_step(f"x{i}", f"extra {i}", model_name="kling-v2-1",
                                    duration=5) for i in range(3)]
    one = machine(tmp_path, "one", steps=steps)
    two = machine(tmp_path, "two", steps=steps)
    remote = {"KLINGFLOW_REMOTE": s3.url(), "KLINGFLOW_CLAIM_TTL": "5"}
    first, second = start(one, env(one, service, **remote)), start(two, env(two, service, **remote))
    reports = [finish(first)[1], finish(second)[1]]
    created = Counter(e["body_hash"] for e in ledger(service))
    assert len(ledger(service)) == len(steps)  # one task per step, for both machines
    assert set(created.values()) == {1}
    for report in reports:
        assert {s["status"] for s in report["steps"]} <= {"succeeded", "cached"}
    served = sum(1 for r in reports for s in r["steps"] if s["served_by"] == "remote")
    assert served == len(steps)  # what one paid for, the other was served


def test_a_claim_holder_killed_mid_step_is_taken_over_without_paying_again(
        tmp_path: Path, service: str, s3: S3Bucket) -> None:
    one = machine(tmp_path, "one", steps=chain(1))
    two = machine(tmp_path, "two", steps=chain(1))
    remote = {"KLINGFLOW_REMOTE": s3.url(), "KLINGFLOW_CLAIM_TTL": "2"}
    victim = start(one, env(one, service, **remote))
    deadline = time.monotonic() + 60
    while not any(b'"state": "submitted"' in s3.get(n) for n in s3.object_names()
                  if n.startswith("klingflow/claims/")):
        assert time.monotonic() < deadline, "the first machine never submitted"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    report, err = run(two, env(two, service, **remote))
    assert len(ledger(service)) == 1  # the taker re-attached to the victim's task
    assert report["steps"][0]["task_id"] == ledger(service)[0]["task_id"]
    assert report["totals"]["tasks_created"] == 0
    assert "waiting for another machine" in err


def test_a_corrupted_blob_in_the_remote_is_detected_and_not_used(
        tmp_path: Path, service: str, s3: S3Bucket) -> None:
    first = machine(tmp_path, "ci", steps=chain(1))
    remote = {"KLINGFLOW_REMOTE": s3.url()}
    report, _ = run(first, env(first, service, **remote))
    clip = report["steps"][0]["outputs"]["video"]["sha256"]
    s3.put(f"klingflow/cas/{clip}", b"not the clip")
    laptop = machine(tmp_path, "laptop", steps=chain(1))
    report, err = run(laptop, env(laptop, service, **remote))
    assert report["steps"][0]["served_by"] is None  # paid for, not served by a bad blob
    assert len(ledger(service)) == 2
    assert f"s0 remote: not used: cas/{clip} is corrupt" in err


def test_a_read_only_machine_writes_nothing_to_the_remote(
        tmp_path: Path, service: str, s3: S3Bucket) -> None:
    pr = machine(tmp_path, "pull-request", steps=chain(2))
    before, asked = s3.object_names(), len(s3.requests)  # the bucket's creation came first
    run(pr, env(pr, service, KLINGFLOW_REMOTE=s3.url(), KLINGFLOW_REMOTE_READ_ONLY="1"))
    assert s3.object_names() == before
    assert {r.method for r in s3.requests[asked:]} <= {"GET", "HEAD"}
