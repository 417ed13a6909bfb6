"""How much the simulator carries, and how fast it renders.

    python bench/bench_sim.py [--steps 100,250,500,1000,2000] [--connections 16] [--state]

1. Load: `klingflow sim serve` in its own process (so client and server do not share
   a GIL), then tasks in flight ramped 100 -> 2000 over real HTTP on 127.0.0.1. At
   each step every task in flight is polled once through `--connections` keep-alive
   connections; the figure is the median (and p95) time a poll takes to answer.
   Target: 1,000 tasks in flight with the median poll under 50 ms.
   `--state`: the same with the durable simulator (`sim serve --state` on a fresh
   temporary directory): every request is a sqlite transaction, every POST an fsync.
2. Render: the time to render a 5 s clip the way the sim does (frames cross-fade and
   each effect motion). Target: under 0.3 s.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from klingflow import media  # noqa: E402
from klingflow.sim.catalogue import CATALOGUE  # noqa: E402
from klingflow.sim.config import CLIP_SIZE  # noqa: E402
from klingflow.sim.images import pattern_image  # noqa: E402

TOKEN = "bench-token"
JOBS_PER_ACCOUNT = 50
TARGET_TASKS, TARGET_MS, TARGET_RENDER = 1000, 50.0, 0.3


# ---- the server --------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def sim_server(accounts: int, state_dir: Path | None = None) -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, "-m", "klingflow", "sim", "serve", "--port", str(port),
               "--token", TOKEN, "--speed", "0.001"]  # tasks last ~2000 s: all stay in flight
    for n in range(accounts):
        command += ["--account", f"bench{n}@example.com:{JOBS_PER_ACCOUNT}"]
    if state_dir is not None:
        command += ["--state", str(state_dir)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        base = f"http://127.0.0.1:{port}/v1/kling"
        _wait_up(base)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_up(base: str) -> None:
    for _ in range(200):
        try:
            httpx.get(base + "/accounts", headers={"Authorization": f"Bearer {TOKEN}"})
            return
        except httpx.ConnectError:
            time.sleep(0.05)
    raise RuntimeError("the simulator did not start")


# ---- load ----------------------------------------------------------------------------------------


def _png() -> bytes:
    buffer = io.BytesIO()
    pattern_image("bench").save(buffer, "PNG")
    return buffer.getvalue()


async def _timed(client: httpx.AsyncClient, method: str, url: str,
                 **kwargs: object) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    return (time.perf_counter() - started) * 1000, response


async def _many(count: int, connections: int, job: object) -> None:
    limit = anyio.Semaphore(connections)

    async def one(index: int) -> None:
        async with limit:
            await job(index)  # type: ignore[operator]

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)


async def submit(client: httpx.AsyncClient, image: str, tasks: list[tuple[int, str]],
                 count: int, connections: int) -> list[float]:
    times: list[float] = []
    start = len(tasks)

    async def job(index: int) -> None:
        email = f"bench{(start + index) // JOBS_PER_ACCOUNT}@example.com"
        ms, response = await _timed(client, "POST", "/videos/image2video-frames",
                                    json={"email": email, "image": image,
                                          "prompt": f"task {start + index}"})
        response.raise_for_status()
        tasks.append((response.json()["task"]["id"], email))
        times.append(ms)

    await _many(count, connections, job)
    return times


async def _poller(host: str, port: int, paths: list[str], times: list[float]) -> None:
    """One keep-alive connection polling until `paths` is empty.

    A bare HTTP/1.1 client: httpx costs ~2 ms of CPU a request, more than the server,
    so with it the figure would measure the client.
    """
    stream = await anyio.connect_tcp(host, port)
    buffer = b""
    async with stream:
        while paths:
            request = (f"GET {paths.pop()} HTTP/1.1\r\nHost: {host}\r\n"
                       f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()
            started = time.perf_counter()
            await stream.send(request)
            head, body, buffer = await _read_response(stream, buffer)
            times.append((time.perf_counter() - started) * 1000)
            assert head.startswith(b"HTTP/1.1 200") and b'"status_final":false' in body


async def _read_response(stream: anyio.abc.ByteStream,
                         buffer: bytes) -> tuple[bytes, bytes, bytes]:
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive()
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    found = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    assert found, head
    length = int(found.group(1))
    while len(buffer) < length:
        buffer += await stream.receive()
    return head, buffer[:length], buffer[length:]


async def poll_all(base: str, tasks: list[tuple[int, str]], connections: int) -> list[float]:
    """Every task in flight polled once, over `connections` keep-alive connections."""
    url = httpx.URL(base)
    paths = [f"{url.path}/tasks/{task_id}?email={email}" for task_id, email in tasks]
    random.Random(0).shuffle(paths)
    times: list[float] = []
    async with anyio.create_task_group() as group:
        for _ in range(connections):
            group.start_soon(_poller, url.host, url.port or 80, paths, times)
    return times


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def load(steps: list[int], connections: int, state_dir: Path | None) -> int:
    carried = 0
    accounts = -(-max(steps) // JOBS_PER_ACCOUNT)
    kind = f"durable (--state {state_dir})" if state_dir else "in memory (no --state)"
    print(f"load: {accounts} accounts x maxJobs {JOBS_PER_ACCOUNT}; polls over {connections} "
          "keep-alive connections, real HTTP on 127.0.0.1, server in its own process, "
          f"state {kind}")
    print(f"{'tasks':>6} {'poll median':>12} {'poll p95':>9} {'polls/s':>8} {'POST median':>12}")
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    with sim_server(accounts, state_dir) as base:
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            upload = await client.post("/assets/", params={"email": "bench0@example.com"},
                                       content=_png(), headers={"Content-Type": "image/png"})
            image = upload.json()["url"]
            tasks: list[tuple[int, str]] = []
            for step in steps:
                posts = await submit(client, image, tasks, step - len(tasks), connections)
                started = time.perf_counter()
                polls = await poll_all(base, tasks, connections)
                rate = len(polls) / (time.perf_counter() - started)
                median = statistics.median(polls)
                print(f"{len(tasks):>6} {median:>10.1f}ms {_percentile(polls, 0.95):>7.1f}ms "
                      f"{rate:>8.0f} {statistics.median(posts) if posts else 0:>10.1f}ms")
                if median < TARGET_MS:
                    carried = len(tasks)
    return carried


# ---- render ----------------------------------------------------------------------------------


def render_times(repeats: int = 3) -> dict[str, float]:
    start, end = pattern_image("start"), pattern_image("end")
    cases: dict[str, tuple[object, object, str | None]] = {"frames (start->end)":
                                                           (start, end, None)}
    motions = {e.motion: e.name for e in reversed(CATALOGUE) if e.usable}  # first per motion
    for motion, name in sorted(motions.items()):
        cases[f"effect {name} ({motion})"] = (start, None, motion)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.mp4"
        media.render_clip(out, start=start, end=end, duration=1, size=CLIP_SIZE)  # warm up
        for name, (first, last, motion) in cases.items():
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                media.render_clip(out, start=first, end=last, duration=5,  # type: ignore[arg-type]
                                  motion=motion, size=CLIP_SIZE)
                times.append(time.perf_counter() - began)
            results[name] = statistics.median(times)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,250,500,1000,2000")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--state", action="store_true",
                        help="load the durable simulator (sim serve --state TMPDIR)")
    args = parser.parse_args()
    if not args.skip_load:
        steps = [int(s) for s in args.steps.split(",")]
        with tempfile.TemporaryDirectory(prefix="bench-sim-state-") as tmp:
            state_dir = Path(tmp) if args.state else None
            carried = anyio.run(load, steps, args.connections, state_dir)
        verdict = "meets" if carried >= TARGET_TASKS else "MISSES"
        print(f"=> carries {carried} tasks in flight with the median poll under {TARGET_MS:.0f} ms "
              f"({verdict} the target of {TARGET_TASKS})\n")
    print(f"render: a 5 s clip at {CLIP_SIZE[0]}x{CLIP_SIZE[1]}, 24 fps, median of 3")
    times = render_times()
    for name, seconds in times.items():
        print(f"  {name:<28} {seconds:6.3f} s")
    worst = max(times.values())
    print(f"=> median over kinds {statistics.median(times.values()):.3f} s, worst {worst:.3f} s "
          f"(target < {TARGET_RENDER} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
