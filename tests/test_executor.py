"""Executor behaviour that needs a doctored service: a clip that cannot be decoded."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from klingflow.sim import SimConfig
from tests.runhelpers import frames_step, run_in_process, write_pipeline

TOKEN = "test-token"


class CorruptClips(httpx.AsyncBaseTransport):
    """The simulator, except that the video of any task whose prompt says 'broken' is junk."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.broken_tasks: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and b"broken" in request.content:
            await response.aread()
            self.broken_tasks.add(str(response.json()["task"]["id"]))
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=response.content)
        if "/_sim/media/" in request.url.path and \
                request.url.path.split("/")[-2] in self.broken_tasks:
            await response.aread()
            return httpx.Response(200, content=b"\x00not an mp4\x00" * 64,
                                  headers={"Content-Type": "video/mp4"})
        return response


@pytest.mark.anyio
async def test_a_clip_that_cannot_be_decoded_fails_its_step_only(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "corrupt", [
        frames_step("bad", "a broken clip"),
        frames_step("after", "from the bad clip", image="${steps.bad.last_frame}"),
        frames_step("good", "a fine clip")])
    wrapped: list[CorruptClips] = []

    def wrap(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        wrapped.append(CorruptClips(inner))
        return wrapped[0]

    config = SimConfig(token=TOKEN, task_seconds=0.1, clip_size=(304, 304))
    run = await run_in_process(path, config, tmp_path / "run", transport_wrapper=wrap)
    bad, after, good = (run.results[s] for s in ("bad", "after", "good"))
    assert wrapped[0].broken_tasks, "the doctored transport saw the broken task"
    assert (bad.status, bad.error_category) == ("failed", "media")
    assert bad.error == (f"task {bad.task_id} is done and paid for, but its result could not "
                         "be kept: bad.mp4: not a readable video: Invalid data found when "
                         "processing input; fix that and run again with --resume to collect it "
                         "at no cost")
    assert (after.status, after.error) == ("skipped", "needs bad, which failed")
    assert good.status == "succeeded"


class RevokedToken(httpx.AsyncBaseTransport):
    """The simulator, except that every request after GET /accounts answers 401, as
    when a token is revoked while a run goes on."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/accounts"):
            return await self.inner.handle_async_request(request)
        return httpx.Response(401, json={"error": "Unauthorized", "code": 401})


@pytest.mark.anyio
async def test_a_token_refused_during_the_run_stops_the_whole_run(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "revoked", [
        frames_step("one", "a shot"), frames_step("two", "another"),
        frames_step("after", "then", image="${steps.one.last_frame}")])
    config = SimConfig(token=TOKEN, task_seconds=0.1, clip_size=(304, 304))
    run = await run_in_process(path, config, tmp_path / "run", transport_wrapper=RevokedToken)
    assert run.executor.aborted is not None
    assert str(run.executor.aborted) == ("POST http://testserver/v1/kling/assets/: HTTP 401: "
                                         "Unauthorized: check USEAPI_TOKEN")
    statuses = {sid: r.status for sid, r in run.results.items()}
    assert set(statuses.values()) <= {"failed", "not_run", "skipped"}
    assert all(r.task_id is None for r in run.results.values())
    assert run.ledger == []
