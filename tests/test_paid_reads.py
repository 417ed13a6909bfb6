"""A task that exists is paid for: an error while reading it, recovering it or restoring
it never settles its step so that a later run pays again (found by hostile testing).

Each test doctors the answers of one simulated service (durable, so a second run
talks to the same service, as after a crash or on the next day), then runs again
without the faults and reads the service's ledger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from klingflow.cache import Cache
from klingflow.journal import Journal
from klingflow.lockfile import LockEntry
from klingflow.run.sources import Sharing
from klingflow.sim import SimConfig
from tests.runhelpers import InProcessRun, frames_step, run_in_process, write_pipeline

pytestmark = pytest.mark.anyio

TASK = r"/tasks/\d+$"
MEDIA = r"/_sim/media/"
FRAMES_POST = r"/videos/image2video-frames$"


@dataclass
class Rule:
    """Answer requests matching `method` and `path` with `status`; `forward`: let the
    service act on the request first (a POST that creates its task, then fails);
    `times`: how many requests it answers (None: all); `armed_by`: only once a request
    for a path matching it was seen."""

    method: str
    path: str
    status: int
    forward: bool = False
    times: int | None = None
    armed_by: str | None = None
    body: bytes | None = None


class Faulty(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, rules: list[Rule]) -> None:
        self.inner, self.rules, self.seen = inner, rules, [False] * len(rules)
        self.answered: list[tuple[str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for i, rule in enumerate(self.rules):
            if rule.armed_by and re.search(rule.armed_by, request.url.path):
                self.seen[i] = True
        for i, rule in enumerate(self.rules):
            if request.method != rule.method or not re.search(rule.path, request.url.path) \
                    or (rule.armed_by and not self.seen[i]) or rule.times == 0:
                continue
            if rule.times is not None:
                rule.times -= 1
            if rule.forward:
                await (await self.inner.handle_async_request(request)).aread()
            self.answered.append((request.url.path, rule.status))
            if rule.body is not None:
                return httpx.Response(rule.status, content=rule.body)
            return httpx.Response(rule.status, json={"error": f"doctored {rule.status}"})
        return await self.inner.handle_async_request(request)


def durable(tmp_path: Path) -> SimConfig:
    return SimConfig(token="test-token", task_seconds=0.2, clip_size=(304, 304),
                     state_dir=tmp_path / "service")


async def faulty_then_clean(tmp_path: Path, rules: list[Rule], *,
                            timeout: float = 1) -> tuple[InProcessRun, InProcessRun]:
    """One run of a one-step pipeline with `rules`, then a resume of it without them."""
    path = write_pipeline(tmp_path / "p", "reads",
                          [frames_step("shot", "a lighthouse", timeout=timeout)])
    run_dir = tmp_path / "runs" / "one"
    first = await run_in_process(path, durable(tmp_path), run_dir,
                                 transport_wrapper=lambda inner: Faulty(inner, rules))
    again = await run_in_process(path, durable(tmp_path), run_dir,
                                 prior=Journal.replay(run_dir / "journal.jsonl"))
    return first, again


def charges(tmp_path: Path) -> dict[int, str]:
    """The journal's charges: task id -> the step charged for it."""
    journal = Journal.replay(tmp_path / "runs" / "one" / "journal.jsonl")
    return {task_id: charge.step for task_id, charge in journal.tasks.items()}


def paid_once(tmp_path: Path, first: InProcessRun, again: InProcessRun) -> None:
    shot, later = first.results["shot"], again.results["shot"]
    assert (later.status, later.task_id) == ("succeeded", shot.task_id)
    assert [t["task_id"] for t in again.ledger] == [shot.task_id]  # one task, paid once
    assert charges(tmp_path) == {shot.task_id: "shot"}  # and charged once


async def test_a_task_that_cannot_be_read_after_a_failed_download_is_collected_later(
        tmp_path: Path) -> None:
    first, again = await faulty_then_clean(tmp_path, [
        Rule("GET", MEDIA, 403), Rule("GET", TASK, 500, armed_by=MEDIA)])
    shot = first.results["shot"]
    assert (shot.status, shot.error_category) == ("failed", "server_error")
    assert shot.error is not None and shot.error.startswith(
        f"task {shot.task_id} is paid for, but could not be read (GET ")
    assert shot.error.endswith("HTTP 500: doctored 500 (task "
                               f"{shot.task_id})); run again with --resume to collect it "
                               "at no cost")
    paid_once(tmp_path, first, again)


async def test_one_403_while_polling_does_not_call_the_task_gone(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "forbidden", [frames_step("shot", "a lighthouse")])
    rules = [Rule("GET", TASK, 403, times=1)]
    run = await run_in_process(path, durable(tmp_path), tmp_path / "runs" / "one",
                               transport_wrapper=lambda inner: Faulty(inner, rules))
    shot = run.results["shot"]
    assert rules[0].times == 0  # the 403 was answered
    assert (shot.status, shot.error) == ("succeeded", None)
    assert [t["task_id"] for t in run.ledger] == [shot.task_id]



async def test_a_task_that_keeps_answering_403_is_left_for_a_resume(tmp_path: Path) -> None:
    first, again = await faulty_then_clean(tmp_path, [Rule("GET", TASK, 403)], timeout=30)
    shot = first.results["shot"]
    assert (shot.status, shot.error_category) == ("failed", "forbidden")
    assert shot.error is not None and shot.error.startswith(
        f"task {shot.task_id} is paid for, but could not be read (GET ")
    assert "HTTP 403: doctored 403" in shot.error
    paid_once(tmp_path, first, again)

async def test_a_lost_post_found_by_recovery_is_charged_even_when_reading_it_fails(
        tmp_path: Path) -> None:
    first, again = await faulty_then_clean(tmp_path, [
        Rule("POST", FRAMES_POST, 500, forward=True, times=1), Rule("GET", TASK, 500)])
    shot = first.results["shot"]
    assert [t["task_id"] for t in first.ledger] == [shot.task_id]  # recovery found it
    assert (shot.status, shot.error_category) == ("failed", "server_error")
    assert charges(tmp_path) == {shot.task_id: "shot"}  # charged, though never read
    paid_once(tmp_path, first, again)


async def test_an_error_while_recovering_a_lost_post_leaves_it_for_a_resume(
        tmp_path: Path) -> None:
    first, again = await faulty_then_clean(tmp_path, [
        Rule("POST", FRAMES_POST, 500, forward=True, times=1),
        Rule("GET", r"/scheduler$", 404, times=1)])
    shot = first.results["shot"]
    assert len(first.ledger) == 1  # the POST made a task
    assert (shot.status, shot.error_category) == ("failed", "recovery")
    assert shot.error is not None and shot.error.startswith(
        "could not tell whether a task was created (resume to try again): GET ")
    assert shot.error.endswith("/scheduler: HTTP 404: doctored 404")
    assert again.results["shot"].task_id == first.ledger[0]["task_id"]
    assert [t["task_id"] for t in again.ledger] == [first.ledger[0]["task_id"]]


async def test_a_locked_clip_that_is_not_a_video_is_not_used_and_the_run_goes_on(
        tmp_path: Path) -> None:
    """A lock restore that downloads junk marks the locked task unusable (its hash is
    checked before any frame is read), pays for the step, and lets the run finish."""
    path = write_pipeline(tmp_path / "p", "locked", [frames_step("one", "a lighthouse"),
                                                     frames_step("two", "a harbour")])
    author = await run_in_process(path, durable(tmp_path), tmp_path / "author" / "run")
    one = author.results["one"]
    assert one.key is not None and one.task_id is not None
    lock = {"one": LockEntry(one.key, one.task_id, None, "kling-v3-0", "std", 3, 20,
                             {a: o.sha256 for a, o in one.outputs.items()})}
    junk = [Rule("GET", rf"/_sim/media/{one.task_id}/", 200, body=b"\x00not a clip" * 50)]
    teammate = await run_in_process(path, durable(tmp_path), tmp_path / "mate" / "run",
                                    transport_wrapper=lambda inner: Faulty(inner, junk),
                                    sharing=Sharing(locked=lock))
    restored = teammate.results["one"]
    assert restored.status == "succeeded" and restored.served_by is None
    assert restored.task_id != one.task_id  # paid again: the locked clip is unusable
    assert teammate.results["two"].status == "succeeded"
    why = Cache(tmp_path / "mate" / "cache").unusable_tasks()[one.task_id]  # plan says it
    assert why == f"locked task {one.task_id}'s clip is not the locked one (its SHA-256 differs)"
