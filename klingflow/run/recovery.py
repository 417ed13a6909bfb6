"""Recovering a POST whose outcome is unknown: the task it created, or proof of none.

The API has no idempotency key. A POST answered by a 500 that is not moderation, a
reset or a timeout may have created (and billed) a task. Its replyRef is looked for
in GET /scheduler (tasks in progress), then a task with its inputs and prompt in GET
/tasks (the history since just before the POST). Only when neither has it is the
request sent again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from klingflow.client import KlingClient, Task
from klingflow.errors import ApiError, PaymentRequiredError, UnauthorizedError
from klingflow.kinds import StepKind, kind_of
from klingflow.run.results import StepFailed, step_failure
from klingflow.run.uploads import Uploads
from klingflow.run.waiting import Patience
from klingflow.spec.pipeline import Step

RECOVERY_WINDOW_MS = 10_000  # how far before a POST a task it created may be stamped


class Recovery:
    """`claimed`: the tasks this run already owns, never adopted by another step."""

    def __init__(self, *, client: KlingClient, uploads: Uploads, patience: Patience,
                 claimed: set[int]) -> None:
        self._client = client
        self._uploads = uploads
        self._patience = patience
        self._claimed = claimed

    async def recover(self, step: Step, reply_ref: str, email: str | None, at_ms: int,
                      body: Mapping[str, Any] | None = None, *,
                      exclude: frozenset[int] = frozenset()) -> int | None:
        """The task a POST created, or None when it surely created none.

        Looks for its replyRef in GET scheduler, then for a matching task in GET
        tasks: never one this run owns, nor one in `exclude` (the tasks the cache or the
        lock already hold for this request: another POST's, which a --force must not
        take for its own). Until those answer, nothing is known, so it keeps asking
        (within the step's timeout) rather than risk paying twice.
        """
        try:
            return await self._patience(step.timeout, lambda: self._find_created(
                step, reply_ref, email, at_ms, body, self._claimed | exclude))
        except (UnauthorizedError, PaymentRequiredError) as exc:
            raise step_failure(exc) from exc  # the run stops; the POST stays unresolved
        except (ApiError, StepFailed) as exc:  # whatever failed (a GET, re-uploading
            # an input to rebuild the body), the POST's outcome is still unknown
            raise StepFailed("recovery", "could not tell whether a task was created "
                             f"(resume to try again): {exc}", unresolved=True) from exc

    async def _find_created(self, step: Step, reply_ref: str, email: str | None, at_ms: int,
                            body: Mapping[str, Any] | None, taken: set[int]) -> int | None:
        for entry in await self._client.scheduler():
            if entry.reply_ref == reply_ref and entry.task_id not in taken:
                return entry.task_id
        if body is None:
            body = await self._uploads.body(step, email)
        since = at_ms - RECOVERY_WINDOW_MS
        for task in await self._client.list_tasks(email=email, created_after_ms=since):
            if task.id not in taken and matches(task, body, kind_of(step.kind)):
                return task.id
        return None


def matches(task: Task, body: Mapping[str, Any], kind: StepKind) -> bool:
    """Whether a task from GET tasks is the one `body` asked for (no replyRef there)."""
    wanted_urls = {str(body[k]) for k in ("image", "image_tail") if body.get(k)}
    if not wanted_urls <= set(task.input_urls):
        return False
    for field_name, argument in kind.matches:
        if body.get(field_name) and task.arguments.get(argument) != body[field_name]:
            return False
    for field_name, argument in kind.echoes:  # only where the service echoes them
        if argument in task.arguments and field_name in body and \
                not _same(field_name, task.arguments[argument], body[field_name]):
            return False
    # a task with an end frame is not one asked for without
    tail = task.arguments.get("tail_image_enabled", "").lower() == "true"
    return not (tail and not body.get("image_tail"))


def _same(field_name: str, echoed: str, asked: object) -> bool:
    if field_name == "model_name":
        return _same_version(echoed, str(asked))
    return echoed == str(asked)


def _same_version(echoed: str, model: str) -> bool:
    """Whether a task's `kling_version` may be `model`'s: kling-v2-1 is echoed as "2.1"
    (the docs' task), kling-v2-1-master perhaps as "2.1-master" or "2.1". A variant the
    echo names must be the model's; an echo with no version number tells nothing (a
    false "no" would mean paying again for our own task)."""
    echo = _VERSION.search(echoed)
    asked = _VERSION.search(model.removeprefix("kling-v").replace("-", ".", 1))
    if echo is None or asked is None:
        return True
    if echo.group(1) != asked.group(1):
        return False
    return not echo.group(2) or echo.group(2).lower() == (asked.group(2) or "").lower()


_VERSION = re.compile(r"(\d+(?:\.\d+)?)(?:[-. ]([a-z][\w-]*))?", re.IGNORECASE)
