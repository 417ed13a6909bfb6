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


@dataclass(slots=True)
class Renderer:
    media_dir: Path | None
    resolve: ImageSource
    size: tuple[int, int]
    _clips: dict[int, Path] = field(default_factory=dict)
    _locks: dict[int, anyio.Lock] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def directory(self) -> Path:
        if self.media_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="klingflow-sim-")
            self.media_dir = Path(self._tmp.name)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        return self.media_dir

    async def clip(self, task: Task) -> Path:
        """The task's MP4, rendered once however many clients ask at the same time."""
        if task.id in self._clips:
            return self._clips[task.id]
        lock = self._locks.setdefault(task.id, anyio.Lock())
        async with lock:
            if task.id not in self._clips:
                out = self.directory() / f"{task.id}.mp4"
                if not out.exists():  # a clip is only ever renamed in whole
                    await anyio.to_thread.run_sync(self._render, task, out)
                self._clips[task.id] = out
        return self._clips[task.id]

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
