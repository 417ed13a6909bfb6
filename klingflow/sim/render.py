"""Result clips, rendered lazily (first download) in a worker thread, then cached."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
from PIL import Image

from klingflow import media
from klingflow.sim.state import Task

ImageSource = Callable[[str], Image.Image]
"""Resolves an input URL of a task to its picture (an upload or a pattern)."""


CHEAP_FPS = 2


@dataclass(slots=True)
class Renderer:
    """`cheap`: every task of a duration gets one shared clip at 2 frames a second,
    rendered once, for benchmarks of klingflow at thousands of tasks."""

    media_dir: Path | None
    resolve: ImageSource
    size: tuple[int, int]
    cheap: bool = False
    _clips: dict[int | str, Path] = field(default_factory=dict)
    _locks: dict[int | str, anyio.Lock] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def directory(self) -> Path:
        if self.media_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="klingflow-sim-")
            self.media_dir = Path(self._tmp.name)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        return self.media_dir

    async def clip(self, task: Task) -> Path:
        """The task's MP4, rendered once however many clients ask at the same time."""
        key: int | str = f"cheap-{task.order.duration}" if self.cheap else task.id
        if key in self._clips:
            return self._clips[key]
        async with self._locks.setdefault(key, anyio.Lock()):
            if key not in self._clips:
                out = self.directory() / f"{key}.mp4"
                if not out.exists():  # a clip is only ever renamed in whole
                    render = self._render_cheap if self.cheap else self._render
                    await anyio.to_thread.run_sync(render, task, out)
                self._clips[key] = out
        return self._clips[key]

    def _images(self, task: Task) -> tuple[Image.Image | None, Image.Image | None]:
        order = task.order
        start = self.resolve(order.image) if order.image else None
        end = self.resolve(order.image_tail) if order.image_tail else None
        return start, end

    def _render(self, task: Task, out: Path) -> None:
        start, end = self._images(task)
        partial = _partial(out)
        media.render_clip(partial, start=start, end=end, duration=task.order.duration,
                          motion=task.order.motion, size=self.size,
                          seed=task.work_id)  # each generation differs, as on the service
        partial.replace(out)

    def _render_cheap(self, task: Task, out: Path) -> None:
        partial = _partial(out)
        media.render_clip(partial, start=Image.new("RGB", self.size, (40, 90, 160)), end=None,
                          duration=task.order.duration, size=self.size, fps=CHEAP_FPS,
                          gop=CHEAP_FPS * 2)
        partial.replace(out)

    async def preview(self, name: str, motion: str, picture: Image.Image) -> Path:
        """An effect's sample clip (its catalogue `webVideoUrl`), rendered once."""
        out = self.directory() / f"effect-{name}.mp4"
        if not out.exists():
            async with self._locks.setdefault(-1, anyio.Lock()):
                if not out.exists():
                    await anyio.to_thread.run_sync(self._render_preview, out, motion, picture)
        return out

    def _render_preview(self, out: Path, motion: str, picture: Image.Image) -> None:
        partial = _partial(out)
        media.render_clip(partial, start=picture, end=None, duration=2, motion=motion,
                          size=self.size)
        partial.replace(out)

    async def cover(self, task: Task) -> bytes:
        """A JPEG poster: the clip's last picture (its end image, else its start)."""
        return await anyio.to_thread.run_sync(self._cover, task)

    def _cover(self, task: Task) -> bytes:
        start, end = self._images(task)
        picture = end or start
        assert picture is not None
        return jpeg(media.fit_image(picture, self.size))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _partial(out: Path) -> Path:
    """A file to render into, this process's own (another may share the directory)."""
    return out.with_name(f".{out.stem}.{os.getpid()}.part.mp4")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
