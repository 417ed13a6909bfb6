"""The sim's result clips: real MP4s of the requested length that chain seamlessly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from klingflow import media
from klingflow.sim.images import decode
from tests.test_sim_support import Sim, png, sim

pytestmark = pytest.mark.anyio


async def download(s: Sim, task_id: int, out: Path) -> Path:
    reply = await s.finish(task_id)
    assert reply["status_name"] == "succeed", reply
    response = await s.client.get(reply["works"][0]["resource"]["resource"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    out.write_bytes(response.content)
    return out


def difference(a: Image.Image, b: Image.Image) -> float:
    first = np.asarray(a.convert("RGB"), dtype=np.float32)
    second = np.asarray(b.convert("RGB").resize(a.size), dtype=np.float32)
    return float(np.abs(first - second).mean())


async def test_an_effect_clip_then_a_frames_clip_from_its_last_frame(tmp_path: Path) -> None:
    async with sim(media_dir=tmp_path / "media") as s:
        hero = await s.upload(png((480, 320), (200, 40, 40)))
        effect = await s.effect(effect="rocket", image=hero)
        first = await download(s, effect.json()["task"]["id"], tmp_path / "effect.mp4")
        info = media.probe(first)
        assert (info.width, info.height, info.codec) == (400, 304, "h264")
        assert info.duration == pytest.approx(5, abs=0.1)

        last = media.extract_last_frame(first, tmp_path / "last.png").path
        seam = await s.upload(last.read_bytes())
        skyline_png = png((640, 360), (30, 60, 200))
        skyline = await s.upload(skyline_png)
        frames = await s.frames(image=seam, image_tail=skyline, model_name="kling-v1-6",
                                duration="10", prompt="climb")
        second = await download(s, frames.json()["task"]["id"], tmp_path / "frames.mp4")
        assert media.probe(second).duration == pytest.approx(10, abs=0.1)

        head = media.extract_first_frame(second, tmp_path / "head.png").path
        tail = media.extract_last_frame(second, tmp_path / "tail.png").path
        # the seam: the next clip starts where this one ended (H.264 4:2:0 blurs hard
        # colour edges a little, hence the tolerance; unrelated pictures differ by > 40)
        with Image.open(last) as a, Image.open(head) as b, Image.open(tail) as end:
            assert difference(a, b) < 6
            wanted = media.fit_image(decode(skyline_png), (400, 304))
            assert difference(end, wanted) < 6  # a clip given an end image ends on it
            assert difference(a, wanted) > 40 and difference(end, a) > 40


async def test_a_clip_is_rendered_once_and_cached(tmp_path: Path) -> None:
    async with sim(media_dir=tmp_path) as s:
        task_id = (await s.effect(effect="spinoff", image="https://example.com/image.jpg",
                                  mode="pro")).json()["task"]["id"]
        reply = await s.finish(task_id)
        url = reply["works"][0]["resource"]["resource"]
        one = (await s.client.get(url)).content
        two = (await s.client.get(url)).content
        assert one == two and list(tmp_path.glob("*.mp4")) == [tmp_path / f"{task_id}.mp4"]


async def test_no_video_before_success(tmp_path: Path) -> None:
    async with sim(media_dir=tmp_path) as s:
        task_id = (await s.frames(image="https://example.com/image.jpg")).json()["task"]["id"]
        work_id = s.service.state.tasks[task_id].work_id
        response = await s.client.get(f"http://testserver/_sim/media/{task_id}/{work_id}.mp4")
        assert response.status_code == 404
