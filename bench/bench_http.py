"""klingflow's CPU per HTTP request: the run's client (lanes) against httpx's own pool.

Run: python bench/bench_http.py [--requests 3000] [--concurrency 12]

`klingflow sim serve` runs in a process of its own; this process creates one task,
then GETs it `--requests` times from `--concurrency` tasks at once through a
KlingClient, as a run polls. Printed for each client: the CPU seconds of this
process (user + system) per request, and the wall time per request. Best of 3 rounds.

Then the HTTP layer alone (a GET, its JSON body read and decoded), on the run's lanes
and, if it is installed (`pip install aiohttp`; klingflow does not use it), on aiohttp,
whose response parser is written in C: what a client other than httpx would save.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import free_port, wait_until_up  # noqa: E402

from klingflow.client import CONNECTIONS, KlingClient  # noqa: E402
from klingflow.lanes import http_client  # noqa: E402

TOKEN = "user:1-bench-http"
EMAIL = "a@bench.test"
CLIENTS: dict[str, Callable[[str], httpx.AsyncClient]] = {
    f"lanes ({CONNECTIONS} of one connection)": lambda base: http_client(CONNECTIONS,
                                                                         base_url=base),
    f"httpx pool of {CONNECTIONS} connections": lambda base: httpx.AsyncClient(
        limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)),
}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (400, 304), (40, 90, 160)).save(out, format="PNG")
    return out.getvalue()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def a_task(client: KlingClient) -> int:
    """The id of a new task to GET."""
    asset = await client.upload_asset(png(), "image/png", email=EMAIL)
    task = await client.submit_frames({"email": EMAIL, "prompt": "a lighthouse",
                                       "image": asset.url})
    return task.id


async def measure(base: str, make: Callable[[str], httpx.AsyncClient], requests: int,
                  concurrency: int) -> tuple[float, float]:
    """Best (CPU, wall) seconds per request over 3 rounds."""
    async with make(base) as http:
        client = KlingClient(http, token=TOKEN, base_url=base)
        task_id = await a_task(client)

        async def get() -> None:
            await client.get_task(task_id, email=EMAIL)

        return await best_of_3(get, requests, concurrency)


async def best_of_3(get: Callable[[], Awaitable[None]], requests: int,
                    concurrency: int) -> tuple[float, float]:
    """Best (CPU, wall) seconds per call of `get` over 3 rounds, `concurrency` at once."""

    async def poll(count: int) -> None:
        for _ in range(count):
            await get()

    best = (float("inf"), float("inf"))
    for _ in range(3):
        cpu, wall = cpu_seconds(), time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(concurrency):
                group.start_soon(poll, requests // concurrency)
        done = requests // concurrency * concurrency
        best = min(best, ((cpu_seconds() - cpu) / done, (time.perf_counter() - wall) / done))
    return best


async def measure_layers(base: str, requests: int, concurrency: int) -> dict[str, float]:
    """CPU seconds per request of the HTTP layer alone (GET a task; read and decode its
    JSON): the run's lanes, and aiohttp if it is installed."""
    async with http_client(CONNECTIONS, base_url=base) as http:
        url = f"{base}/tasks/{await a_task(KlingClient(http, token=TOKEN, base_url=base))}"
        params = {"email": EMAIL}
        headers = {"Authorization": f"Bearer {TOKEN}"}

        async def lanes_get() -> None:
            (await http.get(url, headers=headers, params=params)).json()

        found = {f"lanes ({CONNECTIONS} of one connection)":
                 (await best_of_3(lanes_get, requests, concurrency))[0]}
    try:
        import aiohttp
    except ImportError:
        return found
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as s:

        async def aiohttp_get() -> None:
            async with s.get(url, headers=headers, params=params) as response:
                json.loads(await response.read())

        found[f"aiohttp, pool of {CONNECTIONS}"] = \
            (await best_of_3(aiohttp_get, requests, concurrency))[0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=12)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "klingflow", "sim", "serve", "--port", str(port), "--token", TOKEN,
         "--account", f"{EMAIL}:50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1/kling"
    try:
        wait_until_up(base)
        print(f"{args.requests} GETs of a task, {args.concurrency} at once, against "
              "`klingflow sim serve` in another process (best of 3):")
        for label, make in CLIENTS.items():
            cpu, wall = anyio.run(measure, base, make, args.requests, args.concurrency)
            print(f"  {label:38s} CPU {cpu * 1e6:6.0f} us/request   "
                  f"wall {wall * 1e6:6.0f} us/request")
        print("the HTTP layer alone (GET, JSON body decoded), the same way:")
        layers = anyio.run(measure_layers, base, args.requests, args.concurrency)
        for label, cpu in layers.items():
            print(f"  {label:38s} CPU {cpu * 1e6:6.0f} us/request")
        if len(layers) == 1:
            print("  (pip install aiohttp to compare a client whose parser is C)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
