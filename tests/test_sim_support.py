"""Helpers shared by the simulator's tests (no tests here)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from klingflow.sim import SimConfig, create_app, sim_transport
from klingflow.sim.service import SimService

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED_EMAIL = "[email protected]"  # as the seed pages print it
SEED_URLS = {"https://example.com/start-image.jpg", "https://example.com/end-image.jpg",
             "https://example.com/image.jpg"}


class FakeClock:
    """An injectable clock the tests move by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def png(size: tuple[int, int] = (400, 320), color: tuple[int, int, int] = (20, 160, 40),
        *, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 40):  # some structure, so frames can be compared
        image.paste((255 - color[0], color[1], 255 - color[2]), (x, 0, x + 20, size[1]))
    image.save(buffer, kind)
    return buffer.getvalue()


@dataclass
class Sim:
    client: httpx.AsyncClient
    service: SimService
    clock: FakeClock

    async def ledger(self) -> list[dict[str, Any]]:
        response = await self.client.get("http://testserver/_sim/ledger")
        result: list[dict[str, Any]] = response.json()
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.client.get("http://testserver/_sim/stats")).json()
        return result

    async def upload(self, data: bytes | None = None, *, email: str | None = None,
                     content_type: str = "image/png") -> str:
        params = {"email": email} if email else {}
        response = await self.client.post("/assets/", content=data or png(), params=params,
                                          headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        url: str = response.json()["url"]
        return url

    async def frames(self, **body: Any) -> httpx.Response:
        return await self.client.post("/videos/image2video-frames", json=body)

    async def effect(self, **body: Any) -> httpx.Response:
        return await self.client.post("/videos/image2video-effects", json=body)

    async def poll(self, task_id: int, email: str | None = None) -> httpx.Response:
        params = {"email": email} if email else {}
        return await self.client.get(f"/tasks/{task_id}", params=params)

    async def finish(self, task_id: int, email: str | None = None) -> dict[str, Any]:
        self.clock.advance(self.service.config.task_duration + 1)
        reply: dict[str, Any] = (await self.poll(task_id, email)).json()
        return reply


@asynccontextmanager
async def sim(**options: Any) -> AsyncIterator[Sim]:
    """A simulator app with a fake clock and an authorised in-process client."""
    clock = options.pop("clock", None) or FakeClock()
    options.setdefault("accept_urls", set(SEED_URLS))
    app = create_app(SimConfig(clock=clock, **options))
    async with httpx.AsyncClient(transport=sim_transport(app), headers=AUTH,
                                 base_url="http://testserver/v1/kling") as client:
        yield Sim(client, app.state.sim, clock)
