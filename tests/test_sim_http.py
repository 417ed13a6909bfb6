"""The simulator over real HTTP on 127.0.0.1: running_simulator, resets, callbacks, the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import anyio
import httpx
import pytest

from klingflow.sim import Faults, SimConfig, running_simulator
from klingflow.sim.server import _listening_socket
from tests.runhelpers import serving
from tests.test_sim_api import MODERATION, NOT_FOUND, START
from tests.test_sim_support import AUTH, SEED_URLS, png

pytestmark = pytest.mark.anyio

TWO = [("a@example.com", 3), ("b@example.com", 2)]


def config(**options: Any) -> SimConfig:
    options.setdefault("accept_urls", set(SEED_URLS))
    options.setdefault("task_seconds", 0.3)
    return SimConfig(**options)


def sim_root(base: str) -> str:
    return base.removesuffix("/v1/kling")


async def test_a_whole_generation_over_http(tmp_path: Any) -> None:
    with running_simulator(config(accounts=TWO, media_dir=tmp_path)) as base:
        assert base.startswith("http://127.0.0.1:") and base.endswith("/v1/kling")
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:
            upload = await client.post("/assets/", params={"email": "b@example.com"},
                                       content=png(), headers={"Content-Type": "image/png"})
            assert upload.json()["url"].startswith(sim_root(base) + "/_sim/assets/")
            submitted = await client.post("/videos/image2video-effects", json={
                "email": "b@example.com", "effect": "cartoon", "image": upload.json()["url"],
                "prompt": "a toon", "replyRef": "mine"})
            task_id = submitted.json()["task"]["id"]
            reply = await poll_until_final(client, task_id, "b@example.com")
            assert (reply["status"], reply["status_name"], reply["status_final"]) == (
                99, "succeed", True)
            video = await client.get(reply["works"][0]["resource"]["resource"])
            assert video.headers["content-type"] == "video/mp4"
            assert video.content[4:8] == b"ftyp" and len(video.content) > 10_000
            ledger = (await client.get(sim_root(base) + "/_sim/ledger")).json()
            assert [(e["task_id"], e["account"], e["replyRef"]) for e in ledger] == [
                (task_id, "b@example.com", "mine")]
            stats = (await client.get(sim_root(base) + "/_sim/stats")).json()
            assert stats["accounts"]["b@example.com"]["peak_running"] == 1
            assert stats["requests"]["GET /tasks/{task_id}"] >= 2


async def poll_until_final(client: httpx.AsyncClient, task_id: int, email: str) -> Any:
    with anyio.fail_after(5):
        while True:
            reply = (await client.get(f"/tasks/{task_id}", params={"email": email})).json()
            if reply["status_final"]:
                return reply
            await anyio.sleep(0.05)


async def test_documented_errors_over_http() -> None:
    with running_simulator(config(accounts=TWO, task_seconds=30)) as base:
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:
            wrong = await client.get("/accounts", headers={"Authorization": "Bearer nope"})
            assert (wrong.status_code, wrong.json()) == (401, {"error": "Unauthorized",
                                                                "code": 401})
            effect = await client.post("/videos/image2video-effects",
                                       json={"email": "a@example.com", "effect": "rocket2",
                                             "image": START})
            assert effect.json()["error"].startswith("Effect rocket2 not found. Supported")
            missing = await client.post("/videos/image2video-frames",
                                        json={"email": "a@example.com",
                                              "image": "https://example.com/nope.png"})
            assert (missing.status_code, missing.json()) == (404, NOT_FOUND)
            refused = await client.post("/videos/image2video-frames",
                                        json={"image": START, "prompt": "forbidden"})
            assert (refused.status_code, refused.json()) == (500, MODERATION)
            codes = [(await client.post("/videos/image2video-frames",
                                        json={"image": START, "email": "b@example.com",
                                              "prompt": str(n)})).status_code
                     for n in range(3)]
            assert codes == [200, 200, 429]
            task_id = (await client.get("/scheduler")).json()[0]["id"]
            no_email = await client.get(f"/tasks/{task_id}")
            assert no_email.status_code == 400


async def test_a_reset_over_a_real_socket_drops_the_connection() -> None:
    with running_simulator(config(faults=Faults({"reset": 1.0}),
                                  accounts=[("a@example.com", 50)])) as base:
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:
            for n in range(6):
                with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                    await client.post("/videos/image2video-frames",
                                      json={"image": START, "prompt": f"p{n}"})
            ledger = httpx.get(sim_root(base) + "/_sim/ledger").json()
            assert {e["fault"] for e in ledger} <= {"reset-after"}


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_url() -> Iterator[str]:
    _Hook.received = []
    with serving(HTTPServer(("127.0.0.1", 0), _Hook)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"


async def test_reply_url_callbacks_over_http(hook_url: str) -> None:
    with running_simulator(config(task_seconds=0.3)) as base:
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:
            reply = await client.post("/videos/image2video-frames",
                                      json={"image": START, "replyUrl": hook_url,
                                            "replyRef": "ref-1"})
            task_id = reply.json()["task"]["id"]
            with anyio.fail_after(5):
                while len(_Hook.received) < 2:
                    await anyio.sleep(0.05)
    assert [(r["task"]["id"], r["status_name"], r["replyRef"]) for r in _Hook.received] == [
        (task_id, "processing", "ref-1"), (task_id, "succeed", "ref-1")]


def test_the_simulator_shuts_down_cleanly() -> None:
    with running_simulator() as base:
        assert httpx.get(base + "/accounts", headers=AUTH).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/accounts", headers=AUTH, timeout=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_klingflow_sim_serve() -> None:
    port = _free_port()
    command = [sys.executable, "-m", "klingflow", "sim", "serve", "--port", str(port),
               "--token", "tok", "--account", "a@example.com:3", "--account",
               "b@example.com:2", "--seed", "3", "--faults", "slow=0.01", "--speed", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1/kling" in first
        accounts = _get_when_up(f"http://127.0.0.1:{port}/v1/kling/accounts", "tok")
        assert {e: a["maxJobs"] for e, a in accounts.items()} == {"a@example.com": 3,
                                                                   "b@example.com": 2}
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get_when_up(url: str, token: str) -> Any:
    for _ in range(100):
        try:
            return httpx.get(url, headers={"Authorization": f"Bearer {token}"}).json()
        except httpx.ConnectError:
            threading.Event().wait(0.05)
    raise AssertionError(f"{url} never answered")


def test_klingflow_sim_serve_on_a_port_in_use_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "klingflow", "sim", "serve", "--port",
                                 str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"klingflow: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_the_simulator_listens_with_nodelay() -> None:
    """Answers go out as headers then body: without TCP_NODELAY (inherited by each
    accepted socket) Nagle holds the body for the peer's delayed ACK, ~40 ms a request."""
    with _listening_socket() as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
