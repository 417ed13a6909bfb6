"""KlingClient against the simulator, and the executor's recovery of unknown POST outcomes.

The client tests call every endpoint klingflow uses through `KlingClient` in
process. The recovery tests put a scripted transport between the executor and
the simulator, so that a POST's fate is exact: the task created and then a 500
or a reset, or a 500 / 429 before anything was created.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from klingflow import media
from klingflow.client import KlingClient
from klingflow.errors import (
    BadRequestError,
    ModerationError,
    NotFoundError,
    ServerError,
    TransportError,
    UnauthorizedError,
)
from klingflow.files import sha256_file
from klingflow.run import StepStatus
from klingflow.sim import Faults, SimConfig, create_app, sim_transport
from tests.runhelpers import IN_PROCESS_BASE, frames_step, no_sleep, run_in_process, write_pipeline
from tests.test_sim_support import FakeClock, png

pytestmark = pytest.mark.anyio

TOKEN = "client-token"
EMAIL = "a@example.com"
GENERATION = "/videos/image2video"
SERVER_ERROR = {"error": "Internal Server Error", "message": "Service busy"}


@asynccontextmanager
async def kling(**options: Any) -> AsyncIterator[tuple[KlingClient, Any, FakeClock]]:
    clock = FakeClock()
    options.setdefault("accounts", [(EMAIL, 2)])
    token = options.pop("client_token", TOKEN)
    app = create_app(SimConfig(token=TOKEN, clock=clock, **options))
    async with httpx.AsyncClient(transport=sim_transport(app)) as http:
        yield KlingClient(http, token=token, base_url=IN_PROCESS_BASE, sleep=no_sleep), \
            app.state.sim, clock


# ---- the client, endpoint by endpoint -------------------------------------------------------


async def test_submit_poll_list_scheduler_download(tmp_path: Path) -> None:
    async with kling() as (client, service, clock):
        asset = await client.upload_asset(png(), "image/png", email=EMAIL)
        assert asset.url.startswith("http://testserver/_sim/assets/") and asset.file_name
        task = await client.submit_frames({"email": EMAIL, "image": asset.url,
                                           "prompt": "a lighthouse", "replyRef": "ref-1"})
        assert (task.status_name, task.status_final, task.video) == ("submitted", False, None)
        scheduled = await client.scheduler()
        assert [(e.task_id, e.email, e.reply_ref) for e in scheduled] == [(task.id, EMAIL, "ref-1")]
        history = await client.list_tasks(email=EMAIL, created_after_ms=0)
        assert [t.id for t in history] == [task.id]
        assert history[0].input_urls == (asset.url,)
        assert history[0].arguments["prompt"] == "a lighthouse"
        clock.advance(service.config.task_duration + 1)
        done = await client.get_task(task.id, email=EMAIL)
        assert done.succeeded and not done.failed
        assert done.video is not None and done.video.duration_ms == 5000
        assert await client.scheduler() == []
        clip = tmp_path / "clip.mp4"
        digest = await client.download(done.video.url, clip)
        assert digest == sha256_file(clip)
        assert media.probe(clip).duration == pytest.approx(5.0, abs=0.1)
        assert not (tmp_path / "clip.mp4.part").exists()


async def test_effects_and_accounts() -> None:
    async with kling(accounts=[(EMAIL, 2), ("b@example.com", 1)]) as (client, _, _clock):
        effects = await client.effects(email=EMAIL)
        assert {"rocket", "cartoon", "cyberpunk"} <= {e["name"] for e in effects}
        accounts = await client.accounts()
        assert set(accounts) == {EMAIL, "b@example.com"}
        assert accounts[EMAIL]["maxJobs"] == 2
        assert "balance" in await client.account(EMAIL)


async def test_typed_errors_with_their_text() -> None:
    async with kling() as (client, service, _clock):
        asset = await client.upload_asset(png(), "image/png", email=EMAIL)
        with pytest.raises(ModerationError) as moderation:
            await client.submit_frames({"email": EMAIL, "image": asset.url,
                                        "prompt": "a forbidden place"})
        assert moderation.value.category == "moderation"
        assert str(moderation.value) == (
            f"POST {IN_PROCESS_BASE}/videos/image2video-frames: HTTP 500: The content you "
            "uploaded appears to violate the community guidelines. (CM_EXT.POther)")
        with pytest.raises(BadRequestError) as bad:
            await client.submit_effect({"email": EMAIL, "image": asset.url, "effect": "nope"})
        assert "Effect nope not found. Supported effects: " in str(bad.value)
        with pytest.raises(NotFoundError) as missing:
            await client.submit_frames({"email": EMAIL, "image": "https://example.com/x.png"})
        assert missing.value.status == 404
        with pytest.raises(NotFoundError) as gone:
            await client.get_task(123, email=EMAIL)
        assert gone.value.task_id == 123
        assert service.ledger() == []


async def test_a_wrong_token_is_unauthorized_without_the_token() -> None:
    async with kling(client_token="user:1-wrongtoken") as (client, _, _clock):
        with pytest.raises(UnauthorizedError) as denied:
            await client.accounts()
    assert str(denied.value) == (f"GET {IN_PROCESS_BASE}/accounts: HTTP 401: Unauthorized: "
                                 "check USEAPI_TOKEN")
    assert "wrongtoken" not in repr(denied.value)


async def test_a_reset_on_post_is_a_transport_error_and_is_not_resent() -> None:
    async with kling(faults=Faults.parse("reset=1")) as (client, service, _clock):
        asset_url = "https://example.com/a.png"
        service.config.accept_urls = {asset_url}
        with pytest.raises(TransportError) as reset:
            await client.submit_frames({"email": EMAIL, "image": asset_url, "prompt": "p"})
        assert reset.value.category == "transport" and reset.value.retryable
        assert service.stats()["requests"]["POST /videos/image2video-frames"] == 1


class FlakyGets(httpx.AsyncBaseTransport):
    """The first `failures` GETs fail (503 or a reset) without reaching the simulator."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: list[str]) -> None:
        self.inner = inner
        self.failures = list(failures)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and self.failures:
            if self.failures.pop(0) == "reset":
                raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
            return httpx.Response(503, json={"error": "Service Unavailable"})
        return await self.inner.handle_async_request(request)


async def test_gets_are_retried_on_transient_errors() -> None:
    app = create_app(SimConfig(token=TOKEN, accounts=[(EMAIL, 1)]))
    flaky = FlakyGets(sim_transport(app), ["503", "reset", "503"])
    async with sim_transport(app) as _, httpx.AsyncClient(transport=flaky) as http:
        client = KlingClient(http, token=TOKEN, base_url=IN_PROCESS_BASE, sleep=no_sleep)
        assert EMAIL in await client.accounts()  # the 4th attempt
        flaky.failures = ["503"] * 4
        with pytest.raises(ServerError):
            await client.accounts()  # 4 attempts, all failed: no more
        assert flaky.failures == []
    assert app.state.sim.stats()["requests"]["GET /accounts"] == 1


async def test_a_generic_500_on_post_is_a_server_error() -> None:
    async with kling(faults=Faults.parse("500=1"), seed=1) as (client, service, _clock):
        service.config.accept_urls = {"https://example.com/a.png"}
        with pytest.raises(ServerError):
            await client.submit_frames({"email": EMAIL, "image": "https://example.com/a.png",
                                        "prompt": "p"})
        assert service.stats()["requests"]["POST /videos/image2video-frames"] == 1


# ---- the executor's recovery of a POST with an unknown outcome -----------------------------


class Scripted(httpx.AsyncBaseTransport):
    """Plays `actions` on successive generation POSTs, then passes everything through.

    after-500 / after-reset: the simulator creates the task, the client gets a 500 / reset.
    before-500 / 429: the client gets the error and nothing is created.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, actions: list[str], *,
                 hide_scheduler: bool = False, failing_polls: int = 0) -> None:
        self.inner = inner
        self.actions = list(actions)
        self.hide_scheduler = hide_scheduler
        self.failing_polls = failing_polls  # the first N GET tasks/{id} answer 503
        self.posts = 0

    async def __aenter__(self) -> Scripted:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None,
                        exc: BaseException | None = None,
                        tb: TracebackType | None = None) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.hide_scheduler and request.url.path.endswith("/scheduler"):
            return httpx.Response(200, json=[])
        if self.failing_polls and request.method == "GET" \
                and request.url.path.rsplit("/", 1)[-1].isdigit():
            self.failing_polls -= 1
            return httpx.Response(503, json={"error": "Service Unavailable"})
        if request.method != "POST" or GENERATION not in request.url.path:
            return await self.inner.handle_async_request(request)
        self.posts += 1
        action = self.actions.pop(0) if self.actions else "pass"
        if action == "before-500":
            return httpx.Response(500, json=SERVER_ERROR)
        if action == "429":
            return httpx.Response(429, json={"error": "All configured accounts are busy"},
                                  headers={"Retry-After": "0.05"})
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if action == "after-500":
            return httpx.Response(500, json=SERVER_ERROR)
        if action == "after-reset":
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        return response


async def _recover(tmp_path: Path, actions: list[str], *, hide_scheduler: bool = False,
                   steps: int = 1, failing_polls: int = 0) -> tuple[Any, Scripted]:
    path = write_pipeline(tmp_path / "p", "recover",
                          [frames_step(f"s{i}", f"recovered shot {i}", account="a")
                           for i in range(steps)],
                          accounts={"a": (EMAIL, 2)})
    scripted: list[Scripted] = []

    def wrap(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        scripted.append(Scripted(inner, actions, hide_scheduler=hide_scheduler,
                                 failing_polls=failing_polls))
        return scripted[0]

    config = SimConfig(token=TOKEN, accounts=[(EMAIL, 2)], task_seconds=0.2, clip_size=(64, 48))
    run = await run_in_process(path, config, tmp_path / "run", transport_wrapper=wrap)
    return run, scripted[0]


def _one_task_per_step(run: Any) -> None:
    assert len(run.ledger) == len(run.results)
    by_ref = {e["replyRef"]: e["task_id"] for e in run.ledger}
    assert sorted(r.task_id for r in run.results.values()) == sorted(by_ref.values())


@pytest.mark.parametrize("action", ["after-500", "after-reset"])
async def test_a_task_created_before_the_error_is_found_by_reply_ref(
        tmp_path: Path, action: str) -> None:
    run, scripted = await _recover(tmp_path, [action])
    result = run.results["s0"]
    assert (result.status, result.attempts) == (StepStatus.SUCCEEDED, 1)
    assert scripted.posts == 1  # never resent
    _one_task_per_step(run)
    assert run.stats["requests"]["GET /scheduler"] >= 1


async def test_without_the_scheduler_the_task_is_found_in_the_history(tmp_path: Path) -> None:
    run, scripted = await _recover(tmp_path, ["after-500"], hide_scheduler=True)
    assert run.results["s0"].status == StepStatus.SUCCEEDED
    assert scripted.posts == 1
    _one_task_per_step(run)
    assert run.stats["requests"]["GET /tasks"] >= 1


async def test_a_post_that_created_nothing_is_resent_once(tmp_path: Path) -> None:
    run, scripted = await _recover(tmp_path, ["before-500"])
    result = run.results["s0"]
    assert (result.status, result.attempts) == (StepStatus.SUCCEEDED, 2)
    assert scripted.posts == 2
    _one_task_per_step(run)


async def test_retries_used_up_fail_the_step(tmp_path: Path) -> None:
    run, scripted = await _recover(tmp_path, ["before-500"] * 10)
    result = run.results["s0"]
    assert (result.status, result.error_category) == ("failed", "server_error")
    assert result.error is not None and result.error.startswith("gave up after 4 attempts: ")
    assert scripted.posts == 4  # retries: 3 (the default), then no more
    assert run.ledger == []


async def test_recovery_never_adopts_another_steps_task(tmp_path: Path) -> None:
    """Several steps, several unknown outcomes at once: still one task per step."""
    run, _ = await _recover(tmp_path, ["after-500", "before-500", "after-reset",
                                       "after-500"], steps=4)
    assert {r.status for r in run.results.values()} == {StepStatus.SUCCEEDED}
    _one_task_per_step(run)


async def test_a_429_is_waited_out(tmp_path: Path) -> None:
    began = time.monotonic()
    run, scripted = await _recover(tmp_path, ["429", "429"])
    result = run.results["s0"]
    assert result.status == StepStatus.SUCCEEDED, result.error
    assert scripted.posts == 3
    assert time.monotonic() - began >= 0.1  # Retry-After: 0.05, twice
    _one_task_per_step(run)


async def test_429s_do_not_use_up_the_retries_of_transient_errors(tmp_path: Path) -> None:
    """retries (default 3) counts unknown outcomes; a 429 created nothing and is waited out."""
    run, scripted = await _recover(tmp_path, ["429", "429", "429", "before-500"])
    result = run.results["s0"]
    assert result.status == StepStatus.SUCCEEDED, result.error
    assert scripted.posts == 5
    _one_task_per_step(run)


async def test_a_poll_that_keeps_failing_is_tried_again_until_the_timeout(tmp_path: Path) -> None:
    """Polling a task: transient errors beyond the client's 4 attempts wait for the next poll."""
    run, _ = await _recover(tmp_path, [], failing_polls=6)
    assert run.results["s0"].status == StepStatus.SUCCEEDED, run.results["s0"].error
    _one_task_per_step(run)


async def test_a_recovered_task_survives_transient_poll_errors(tmp_path: Path) -> None:
    run, scripted = await _recover(tmp_path, ["after-500"], failing_polls=4)
    result = run.results["s0"]
    assert result.status == StepStatus.SUCCEEDED, result.error
    assert scripted.posts == 1
    _one_task_per_step(run)
