"""Shared by the remote cache tests: results to cache, and time that tests drive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio.lowlevel

from klingflow.cache.local import Cache, CacheEntry
from klingflow.files import canonical_hash, sha256_file

ATTRIBUTES = ("video", "first_frame", "last_frame")


def make_result(local: Cache, scratch: Path, n: int, *, size: int = 2000,
                made_by: str = "") -> CacheEntry:
    """Step `n`'s result, as a run leaves it in `local`: three files and their entry.
    Two machines that both paid for a step have different bytes: `made_by` differs."""
    request = result_request(n)
    scratch.mkdir(parents=True, exist_ok=True)
    files = {}
    for attr in ATTRIBUTES:
        path = scratch / f"{n}-{attr}{made_by}.bin"
        path.write_bytes(f"{attr} of step {n}{made_by};".encode() * (size // 16 + 1))
        files[attr] = path
    entry = CacheEntry(canonical_hash(request), 1000 + n, "main", 20,
                       {attr: sha256_file(path) for attr, path in files.items()}, request)
    local.store(entry, files)
    return entry


def result_request(n: int) -> dict[str, object]:
    return {"endpoint": "videos/image2video-effects", "backend": "sim",
            "body": {"effect": "rocket", "image": f"sha256:{n:064x}"}}


def result_key(n: int) -> str:
    """The request key of make_result(..., n)."""
    return canonical_hash(result_request(n))


class FakeTime:
    """A monotonic clock and a sleep that only moves it: waits take no real time.
    `on_sleep` runs at each sleep, to make things happen 'meanwhile'."""

    def __init__(self, start: float = 0.0,
                 on_sleep: Callable[[float], object] | None = None) -> None:
        self.now = start
        self.slept: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            outcome = self.on_sleep(seconds)
            if hasattr(outcome, "__await__"):
                await outcome  # type: ignore[misc]
        await anyio.lowlevel.checkpoint()
