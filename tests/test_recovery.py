"""Recovering a POST whose outcome is unknown, on its own: the Submitter against a
scripted service (no HTTP), with time made instant."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from klingflow.client import SchedulerEntry, Task
from klingflow.errors import BadRequestError, ServerError, UnauthorizedError
from klingflow.journal import Journal, JournalState
from klingflow.kinds import kind_of
from klingflow.plan import build_plan
from klingflow.policy import Retrier
from klingflow.run.recovery import Recovery, matches
from klingflow.run.results import RunAborted, StepFailed
from klingflow.run.resume import Resume
from klingflow.run.scheduling import Slots
from klingflow.run.uploads import Uploads
from klingflow.run.waiting import Patience
from klingflow.spec import load_pipeline
from tests.runhelpers import frames_step, write_pipeline
from tests.test_policy import FakeTime

pytestmark = pytest.mark.anyio

IMAGE = "https://cdn.test/hero.png"
BODY = {"image": IMAGE, "prompt": "a lighthouse", "model_name": "kling-v3-0"}


def task(task_id: int, prompt: str = "a lighthouse", image: str = IMAGE) -> Task:
    return Task(id=task_id, status_name="submitted", status_final=False, message="", error="",
                video=None, create_time=None, input_urls=(image,),
                arguments={"prompt": prompt})


class ScriptedService:
    """GET scheduler and GET tasks as a test sets them; errors raised while `failing`."""

    def __init__(self) -> None:
        self.scheduled: list[SchedulerEntry] = []
        self.history: list[Task] = []
        self.failing: list[Exception] = []
        self.calls: list[str] = []

    async def scheduler(self) -> list[SchedulerEntry]:
        self.calls.append("scheduler")
        if self.failing:
            raise self.failing.pop(0)
        return self.scheduled

    async def list_tasks(self, **query: Any) -> list[Task]:
        self.calls.append(f"tasks after {query['created_after_ms']}")
        return self.history


def submitter(tmp_path: Path, service: ScriptedService,
              prior: JournalState | None = None) -> tuple[Recovery, Any]:
    """The recovery of a run whose journal says `prior`, against the scripted service."""
    path = write_pipeline(tmp_path / "p", "recover", [frames_step("s", "a lighthouse")])
    pipeline = load_pipeline(path)
    step = build_plan(pipeline).steps[0].step
    time = FakeTime()
    patience = Patience(Retrier(clock=time.clock, sleep=time.sleep), 1.0)
    client: Any = service
    uploads = Uploads(pipeline=pipeline, client=client, journal=Journal(tmp_path / "j.jsonl"),
                      uploaded={}, output_of=lambda ref: None,  # type: ignore[arg-type,return-value]
                      patience=patience)
    owned = Resume(prior or JournalState(), Slots({"a": 1}, None)).owned_tasks()
    return Recovery(client=client, uploads=uploads, patience=patience, claimed=owned), step


async def test_the_reply_ref_in_the_scheduler_finds_the_task(tmp_path: Path) -> None:
    service = ScriptedService()
    service.scheduled = [SchedulerEntry(7, "a@x.test", "other"),
                         SchedulerEntry(8, "a@x.test", "mine")]
    found, step = submitter(tmp_path, service)
    assert await found.recover(step, "mine", None, 50_000, BODY) == 8
    assert service.calls == ["scheduler"]


async def test_the_history_finds_a_finished_task_by_its_inputs_and_prompt(tmp_path: Path) -> None:
    service = ScriptedService()
    service.history = [task(5, prompt="another"), task(6, image="https://cdn.test/x.png"),
                       task(9)]
    found, step = submitter(tmp_path, service)
    assert await found.recover(step, "gone", None, 50_000, BODY) == 9
    assert service.calls == ["scheduler", "tasks after 40000"]  # 10 s before the POST


async def test_a_task_the_run_already_owns_is_never_adopted_again(tmp_path: Path) -> None:
    service = ScriptedService()
    service.history = [task(9)]
    prior = JournalState()
    prior.apply({"event": "submitting", "step": "other", "key": "k", "reply_ref": "r",
                 "account": None, "email": None, "at_ms": 1})
    prior.apply({"event": "submitted", "step": "other", "task_id": 9})
    found, step = submitter(tmp_path, service, prior)
    assert await found.recover(step, "gone", None, 50_000, BODY) is None



async def test_an_earlier_failed_task_of_the_same_step_is_never_adopted(tmp_path: Path) -> None:
    """A resume's POST whose answer was lost is not the task an earlier invocation made
    for the same step (moderated, say), though its inputs and prompt match."""
    service = ScriptedService()
    service.history = [task(9)]
    prior = JournalState()
    for line in ({"event": "submitting", "step": "s", "key": "k", "reply_ref": "r1",
                  "account": None, "email": None, "at_ms": 1},
                 {"event": "submitted", "step": "s", "task_id": 9, "credits": 20},
                 {"event": "failed", "step": "s", "category": "moderation", "message": "m"},
                 {"event": "submitting", "step": "s", "key": "k", "reply_ref": "r2",
                  "account": None, "email": None, "at_ms": 2}):
        prior.apply(line)
    found, step = submitter(tmp_path, service, prior)
    assert await found.recover(step, "r2", None, 50_000, BODY) is None


async def test_a_task_taken_over_from_another_runs_record_is_never_adopted(
        tmp_path: Path) -> None:
    """A run re-attached a task another run's POST made (found through the cache's
    in-flight record: no 'submitting' line here); it failed; a resume's later POST whose
    answer was lost must not take it for its own. The property test found this: the
    resume's report then counted that task's 20 credits as its run directory's."""
    service = ScriptedService()
    service.history = [task(9)]
    prior = JournalState()
    for line in ({"event": "run", "invocation": "i1"},
                 {"event": "submitted", "step": "s", "task_id": 9, "reattached": True},
                 {"event": "failed", "step": "s", "category": "failed", "message": "m"},
                 {"event": "run", "invocation": "i2"},
                 {"event": "submitting", "step": "s", "key": "k", "reply_ref": "r2",
                  "account": None, "email": None, "at_ms": 2}):
        prior.apply(line)
    found, step = submitter(tmp_path, service, prior)
    assert await found.recover(step, "r2", None, 50_000, BODY) is None


async def test_nothing_found_means_nothing_was_created(tmp_path: Path) -> None:
    found, step = submitter(tmp_path, ScriptedService())
    assert await found.recover(step, "gone", None, 50_000, BODY) is None


async def test_recovery_keeps_asking_while_the_service_is_down(tmp_path: Path) -> None:
    service = ScriptedService()
    service.failing = [ServerError("down", status=503)] * 3
    service.scheduled = [SchedulerEntry(8, "a@x.test", "mine")]
    found, step = submitter(tmp_path, service)
    assert await found.recover(step, "mine", None, 50_000, BODY) == 8
    assert service.calls == ["scheduler"] * 4


async def test_an_unanswerable_recovery_leaves_the_step_unresolved(tmp_path: Path) -> None:
    service = ScriptedService()
    service.failing = [ServerError("down", status=503, method="GET", url="u")] * 10_000
    found, step = submitter(tmp_path, service)
    with pytest.raises(StepFailed) as failed:
        await found.recover(step, "mine", None, 50_000, BODY)
    assert failed.value.unresolved and failed.value.category == "recovery"
    assert str(failed.value) == ("could not tell whether a task was created (resume to try "
                                 "again): GET u: HTTP 503: down")


async def test_a_refused_token_during_recovery_stops_the_run(tmp_path: Path) -> None:
    service = ScriptedService()
    service.failing = [UnauthorizedError("Unauthorized", status=401)]
    found, step = submitter(tmp_path, service)
    with pytest.raises(RunAborted):
        await found.recover(step, "mine", None, 50_000, BODY)


def echoing(**arguments: str) -> Task:
    return replace(task(1), arguments={"prompt": "a lighthouse", **arguments})


@pytest.mark.parametrize(("arguments", "found"), [
    ({"kling_version": "3.0"}, True),
    ({"kling_version": "v3.0"}, True),
    ({"kling_version": "3.0-turbo"}, False),  # a variant the request did not ask for
    ({"kling_version": "2.1"}, False),  # another model's task with the same inputs
    ({"tail_image_enabled": "true"}, False),  # a task with an end frame not asked for
    ({"tail_image_enabled": "True"}, False),
    ({"kling_version": "latest"}, True),  # no number: it tells nothing, so no refusal
    ({}, True),  # nothing echoed: nothing to tell them apart by
])
def test_recovery_tells_tasks_of_other_models_and_end_frames_apart(
        arguments: dict[str, str], found: bool) -> None:
    assert matches(echoing(**arguments), BODY, kind_of("frames")) is found


async def test_a_body_that_cannot_be_rebuilt_leaves_the_post_unresolved(tmp_path: Path) -> None:
    """Recovering a POST from an in-flight record (runs/ deleted) rebuilds its body to
    match the history: an upload that fails then must not settle the unknown POST."""
    service = ScriptedService()

    async def upload_asset(*args: Any, **kwargs: Any) -> None:
        raise BadRequestError("File is corrupt", status=400, method="POST", url="u")

    service.upload_asset = upload_asset  # type: ignore[attr-defined]
    found, step = submitter(tmp_path, service)
    with pytest.raises(StepFailed) as failed:
        await found.recover(step, "lost", None, 50_000)
    assert (failed.value.category, failed.value.unresolved) == ("recovery", True)
    assert str(failed.value) == ("could not tell whether a task was created (resume to try "
                                 "again): POST u: HTTP 400: File is corrupt")
