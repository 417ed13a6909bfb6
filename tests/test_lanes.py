"""The run's HTTP client: each request on a lane (a connection) of its own."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest

from klingflow.lanes import Lanes, http_client
from tests.runhelpers import frames_step, run_cli, serving, write_pipeline

pytestmark = pytest.mark.anyio


class Handler:
    """Answers every request after `delay` seconds, or raises `error`; counts how many
    it is answering at once."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay, self.error = delay, error
        self.now = self.most = self.answered = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.error is not None:
            raise self.error
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await anyio.sleep(self.delay)
        finally:
            self.now -= 1
        self.answered += 1
        body = f"answer to {request.url.path}".encode()
        return httpx.Response(200, stream=httpx.ByteStream(body))  # read as from a socket


def lanes(count: int, handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Lanes(count, make=lambda: httpx.MockTransport(handler)))


async def test_no_more_requests_at_once_than_lanes_and_every_one_is_answered() -> None:
    handler = Handler(delay=0.01)
    answers: list[str] = []
    async with lanes(3, handler) as http:
        async def get(n: int) -> None:
            answers.append((await http.get(f"http://service.test/{n}")).text)

        with anyio.fail_after(5):  # a lane that is never given back would hang here
            async with anyio.create_task_group() as group:
                for n in range(10):
                    group.start_soon(get, n)

    assert handler.most == 3
    assert sorted(answers) == sorted(f"answer to /{n}" for n in range(10))


async def test_a_streamed_response_keeps_its_lane_until_it_is_closed() -> None:
    handler = Handler()
    async with lanes(1, handler) as http:
        async with http.stream("GET", "http://service.test/clip") as clip:
            with anyio.move_on_after(0.1) as waited:
                await http.get("http://service.test/task")
            assert waited.cancelled_caught  # the only lane is the stream's
            assert handler.answered == 1
            assert await clip.aread() == b"answer to /clip"
        with anyio.fail_after(5):
            assert (await http.get("http://service.test/task")).text == "answer to /task"


async def test_a_request_that_fails_or_is_cancelled_gives_its_lane_back() -> None:
    failing = Handler(error=httpx.ConnectError("refused"))
    async with lanes(1, failing) as http:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError, match="refused"):
                await http.get("http://service.test/task")

    slow = Handler(delay=10)
    async with lanes(1, slow) as http:
        with anyio.move_on_after(0.05):
            await http.get("http://service.test/task")
        slow.delay = 0
        with anyio.fail_after(5):
            assert (await http.get("http://service.test/task")).status_code == 200


async def test_lanes_reuse_their_connections_to_a_real_server(
        recording_server: RecordingServer) -> None:
    async with http_client(2, base_url=recording_server.url) as http:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for n in range(12):
                    group.start_soon(http.get, f"{recording_server.url}/{n}")

    assert sorted(recording_server.paths) == sorted(f"/{n}" for n in range(12))
    assert 1 <= len(recording_server.peers) <= 2


async def test_behind_a_proxy_requests_go_through_it(
        recording_server: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", recording_server.url)
    base = "http://api.service.test/v1/kling"
    async with http_client(2, base_url=base) as http:
        response = await http.get(f"{base}/accounts")

    assert response.status_code == 200
    assert recording_server.paths == ["http://api.service.test/v1/kling/accounts"]


async def test_a_service_on_this_machine_is_reached_directly_despite_a_proxy(
        recording_server: RecordingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    async with http_client(2, base_url=f"{recording_server.url}/v1/kling") as http:
        response = await http.get(f"{recording_server.url}/v1/kling/accounts")

    assert response.status_code == 200
    assert recording_server.paths == ["/v1/kling/accounts"]


def test_a_run_on_the_simulator_ignores_the_proxy_of_the_environment(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    path = write_pipeline(isolated / "p", "proxied", [frames_step("one", "a quiet lake")])

    code, out, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                              "--sim-speed", "10", "--poll-interval", "0.05",
                              "--connect-timeout", "5"], capsys)

    assert code == 0, err
    assert "proxied: succeeded (1 succeeded)" in out


class RecordingServer(ThreadingHTTPServer):
    """Answers 200 to every GET on 127.0.0.1; remembers each request's target (a
    proxy is sent the whole URL) and the client ports it came from."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.paths: list[str] = []
        self.peers: set[int] = set()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.server.peers.add(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    with serving(RecordingServer()) as server:
        yield server
