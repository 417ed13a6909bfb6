"""A service that cannot be reached is said at once, waited for visibly, and given up on
after --connect-timeout, before anything is uploaded or paid (issue 9, item 13)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from klingflow.cache import Cache
from klingflow.plan import build_plan
from klingflow.run import Event
from klingflow.run.preflight import SERVICE
from klingflow.runner import run
from klingflow.settings import ApiToken, RunFlags, Settings
from klingflow.sim import SimConfig, create_app, sim_transport
from klingflow.spec import load_pipeline
from tests.runhelpers import IN_PROCESS_BASE, ROOT, frames_step, write_pipeline


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once it is closed


def test_an_unreachable_service_is_said_at_once_and_given_up_on_in_time(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "away", [frames_step("one", "a shot")])
    base = f"http://127.0.0.1:{closed_port()}/v1/kling"
    env = {**os.environ, "USEAPI_TOKEN": "user:1-fake-away-token", "KLINGFLOW_API_BASE": base,
           "KLINGFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "klingflow", "run", str(path), "--out",
                           str(tmp_path / "runs"), "--connect-timeout", "3"], env=env,
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(rf"[0-9:]{{8}} \(service\) waiting: cannot reach {re.escape(base)} "
                        r"\(ConnectError: All connection attempts failed\); trying again in "
                        r"[0-9.]+ s", lines[0]), lines[0]
    assert lines[-1].startswith(f"klingflow: cannot reach the service at {base} after ")
    assert lines[-1].endswith(" s: ConnectError: All connection attempts failed; nothing was "
                              "sent")
    assert took < 15  # 3 s of waiting, plus starting Python
    assert not (tmp_path / "runs").exists()


def test_a_reader_that_closes_the_pipe_early_is_not_a_bug(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "long", [frames_step(f"s{i}", f"shot {i}")
                                                   for i in range(40)])
    env = {**os.environ, "KLINGFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(f"{sys.executable} -m klingflow plan {path} --json | head -c 10",
                          shell=True, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout == '{\n  "forma'
    assert done.stderr == ""


class FlakyCatalogue(httpx.AsyncBaseTransport):
    """The simulator, whose GET /videos/effects answers 500 the first `times` times."""

    def __init__(self, inner: httpx.AsyncBaseTransport, times: int) -> None:
        self.inner, self.times = inner, times

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/videos/effects") and self.times > 0:
            self.times -= 1
            return httpx.Response(500, json={"error": "Internal server error"})
        return await self.inner.handle_async_request(request)


@pytest.mark.anyio
async def test_a_catalogue_that_fails_at_the_start_is_waited_for_like_the_service(
        tmp_path: Path) -> None:
    """The live effects catalogue is fetched before anything is paid: a 500 is waited
    out visibly within --connect-timeout, not an exit 2 (the client itself tries 4 times)."""
    path = write_pipeline(tmp_path / "p", "fx", [
        {"id": "a", "kind": "effect", "effect": "cartoon", "image": "${inputs.hero}"}])
    app = create_app(SimConfig(token="user:1-fake-token", task_seconds=0.1,
                               clip_size=(304, 304)))
    settings = Settings(token=ApiToken("user:1-fake-token"), base_url=IN_PROCESS_BASE,
                        run=RunFlags(out=tmp_path / "runs", poll_interval=0.02,
                                     connect_timeout=30))
    events: list[Event] = []
    async with httpx.AsyncClient(transport=FlakyCatalogue(sim_transport(app), 5)) as http:
        report = await run(build_plan(load_pipeline(path)), settings, http=http,
                           cache=Cache(tmp_path / "cache"), on_event=events.append)
    assert report.status == "succeeded"
    waits = [e.detail for e in events if e.step_id == SERVICE]
    assert len(waits) == 1
    assert re.fullmatch(rf"cannot reach {re.escape(IN_PROCESS_BASE)} \(GET "
                        rf"{re.escape(IN_PROCESS_BASE)}/videos/effects: HTTP 500: Internal "
                        r"server error\); trying again in [0-9.]+ s", waits[0]), waits[0]


def test_effects_gives_up_on_an_unreachable_service_after_its_connect_timeout(
        tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1/kling"
    env = {**os.environ, "USEAPI_TOKEN": "user:1-fake-away-token", "KLINGFLOW_API_BASE": base,
           "KLINGFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "klingflow", "effects", "--connect-timeout",
                           "2"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    took = time.monotonic() - began
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"klingflow: cannot reach the service at {base} after 2 s: ConnectError: All "
        "connection attempts failed; nothing was sent")
    assert took < 15  # not the default minute: 2 s of waiting, plus starting Python
