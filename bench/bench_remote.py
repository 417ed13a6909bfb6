"""The remote cache against a real S3 server (moto) on 127.0.0.1.

    python bench/bench_remote.py [--steps 50] [--repeat 3] [--ttl 0.6] [--task-seconds 1.5]

1. Restore: a pipeline's worth of results (`--steps`, each a rendered 5 s clip and its
   first and last frames as PNGs, made unique per step) is pushed from one machine;
   then the time to restore all of them through `RemoteCache.fetch` into an empty local
   cache (record, download, SHA-256 check, local files and entries) against the time
   to download the same bytes with plain GETs at the same concurrency (best of
   `--repeat`), and the requests per step each takes.
2. Claims: the requests one claimed step costs, counted at the server, for a few
   steps run in real time with a short TTL (`--ttl`) and task (`--task-seconds`):
   acquire, state updates, renewals (one per TTL/3 of work), release; then what that
   comes to at the default TTL of 60 s for tasks of a few minutes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_media import picture  # noqa: E402
from klingflow.cache.claims import TTL, ClaimBoard, Lease, Owner  # noqa: E402
from klingflow.cache.local import Cache, CacheEntry  # noqa: E402
from klingflow.cache.location import remote_settings  # noqa: E402
from klingflow.cache.remote import FetchResult, RemoteCache  # noqa: E402
from klingflow.files import canonical_hash, sha256_file  # noqa: E402
from klingflow.media import extract_first_frame, extract_last_frame, render_clip  # noqa: E402
from tests.s3server import S3Request, S3Server  # noqa: E402

ATTRIBUTES = {"video": ".mp4", "first_frame": ".first.png", "last_frame": ".last.png"}


# ---- the results ---------------------------------------------------------------------------


def sample_files(folder: Path) -> dict[str, bytes]:
    clip = folder / "sample.mp4"
    render_clip(clip, start=picture(640, 384, 0.0), end=picture(640, 384, 2.0), duration=5.0,
                size=(640, 384), seed=1)
    extract_first_frame(clip, folder / "sample.first.png")
    extract_last_frame(clip, folder / "sample.last.png")
    return {attr: (folder / f"sample{suffix}").read_bytes() for attr, suffix in ATTRIBUTES.items()}


def cache_results(local: Cache, folder: Path, samples: dict[str, bytes],
                  steps: int) -> list[CacheEntry]:
    """`steps` results in `local`; each file gets its step's number appended, so every
    one has its own hash (bytes after an MP4's or PNG's end are ignored by readers)."""
    entries = []
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(steps):
        files = {}
        for attr, data in samples.items():
            files[attr] = folder / f"{n}{ATTRIBUTES[attr]}"
            files[attr].write_bytes(data + f"step {n}".encode())
        request = {"endpoint": "videos/image2video-effects", "backend": "sim",
                   "body": {"effect": "rocket", "image": f"sha256:{n:064x}"}}
        entry = CacheEntry(canonical_hash(request), 1000 + n, "main", 20,
                           {a: sha256_file(p) for a, p in files.items()}, request)
        local.store(entry, files)
        entries.append(entry)
    return entries


# ---- restore -------------------------------------------------------------------------------


def remote_at(url: str) -> RemoteCache:
    settings = remote_settings({"KLINGFLOW_REMOTE": url})
    assert settings is not None
    return RemoteCache.open(settings)


async def push_all(remote: RemoteCache, local: Cache, entries: list[CacheEntry]) -> float:
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for entry in entries:
            group.start_soon(remote.push, entry, local)
    return time.perf_counter() - started


async def restore_all(url: str, local: Cache, keys: list[str]) -> tuple[float, int]:
    remote = remote_at(url)
    results: list[FetchResult] = []

    async def fetch(key: str) -> None:
        results.append(await remote.fetch(key, local))

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(fetch, key)
    elapsed = time.perf_counter() - started
    assert len(results) == len(keys) and all(r.hit for r in results), "a restore missed"
    return elapsed, sum(r.downloaded for r in results)


async def download_all(url: str, paths: list[str], concurrency: int) -> tuple[float, int]:
    """The same bytes with plain GETs through the same client, kept in memory only."""
    store = RemoteCache.open(remote_settings({"KLINGFLOW_REMOTE": url})).bucket.store  # type: ignore[arg-type]
    limiter = anyio.CapacityLimiter(concurrency)
    sizes: list[int] = []

    async def get(path: str) -> None:
        async with limiter:
            result = await store.get_async(path)
            sizes.append(len(await result.bytes_async()))

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for path in paths:
            group.start_soon(get, path)
    return time.perf_counter() - started, sum(sizes)


# ---- claims --------------------------------------------------------------------------------


async def claimed_steps(url: str, keys: list[str], ttl: float, task_seconds: float) -> int:
    """Run each key as a claimed step (claim, submitting, submitted, work, release)."""
    remote = remote_at(url)
    board = ClaimBoard(remote.bucket, owner=Owner.here("bench"), ttl=ttl)
    serves = 0

    async def missing() -> FetchResult:
        nonlocal serves
        serves += 1
        return FetchResult("")

    async def step(key: str) -> None:
        async with board.claim(key, step="bench", serve=missing) as lease:
            assert isinstance(lease, Lease)
            await lease.submitting(reply_ref="r", account="main", email="a@x.test", at_ms=0)
            await lease.submitted(1)
            await anyio.sleep(task_seconds)

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(step, key)
    return serves


def claim_kinds(requests: list[S3Request]) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for r in requests:
        if "/claims/" not in r.path:
            continue
        if r.method == "PUT" and r.if_none_match == "*":
            kinds["acquire (create, If-None-Match: *)"] += 1
        elif r.method == "PUT" and r.if_match:
            kinds["updates and renewals (If-Match)"] += 1
        elif r.method == "HEAD":
            kinds["release (HEAD: still ours?)"] += 1
        else:
            kinds[f"release ({r.method})"] += 1
    for r in requests:  # S3 deletes go as a bulk delete: POST /BUCKET?delete
        if r.method == "POST" and "delete" in r.query:
            kinds["release (DELETE, as S3's bulk POST ?delete)"] += 1
    return kinds


# ---- the server, in its own process ----------------------------------------------------------


def _serve(pipe: Connection) -> None:
    server = S3Server()
    pipe.send((server.endpoint, server.environment()))
    while (command := pipe.recv()) != "stop":
        if command == "log":
            pipe.send(list(server.requests))
        else:
            pipe.send(server.create_bucket())
    server.close()


class ServerProcess:
    """moto's S3 (tests/s3server.py) in a child process, so that its Python work does
    not share a GIL with the client being measured; its request log is sent on demand."""

    def __init__(self) -> None:
        self._pipe, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(target=_serve,
                                                                     args=(child,), daemon=True)
        self._process.start()
        self.endpoint, self.environment = self._pipe.recv()

    def create_bucket(self) -> str:
        self._pipe.send("bucket")
        name: str = self._pipe.recv()
        return name

    @property
    def requests(self) -> list[S3Request]:
        self._pipe.send("log")
        log: list[S3Request] = self._pipe.recv()
        return log

    def close(self) -> None:
        self._pipe.send("stop")
        self._process.join(10)


# ---- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=0.6)
    parser.add_argument("--task-seconds", type=float, default=1.5)
    parser.add_argument("--claim-steps", type=int, default=4)
    return parser.parse_args()


async def bench_restore(server: ServerProcess, work: Path, args: argparse.Namespace) -> None:
    samples = sample_files(work)
    url = f"s3://{server.create_bucket()}/klingflow"
    source = Cache(work / "a" / ".klingflow")
    entries = cache_results(source, work / "files", samples, args.steps)
    sizes = {a: len(d) for a, d in samples.items()}
    print(f"results: {args.steps} steps, each a {sizes['video'] / 1e3:.0f} kB clip and two "
          f"PNGs of {sizes['first_frame'] / 1e3:.0f} and {sizes['last_frame'] / 1e3:.0f} kB")
    remote = remote_at(url)
    pushed = await push_all(remote, source, entries)
    print(f"push from one machine: {pushed:.2f} s")

    keys = [e.key for e in entries]
    blobs = [f"cas/{sha}" for e in entries for sha in e.outputs.values()]
    restores, downloads = [], []
    for attempt in range(args.repeat):
        start = len(server.requests)
        restores.append(await restore_all(url, Cache(work / f"r{attempt}" / ".klingflow"), keys))
        per_step = (len(server.requests) - start) / len(keys)
        downloads.append(await download_all(url, blobs, concurrency=8))
    (restore, restored), (direct, fetched) = min(restores), min(downloads)
    assert restored == fetched
    middle = statistics.median(t for t, _ in restores), statistics.median(t for t, _ in downloads)
    print(f"restore all {len(keys)} through fetch() into an empty local cache: {restore:.3f} s "
          f"best, {middle[0]:.3f} s median ({restored / 1e6:.1f} MB, "
          f"{restored / 1e6 / restore:.0f} MB/s), {per_step:.0f} requests per step")
    print(f"plain GETs of the same {len(blobs)} files, same concurrency (8), to memory: "
          f"{direct:.3f} s best, {middle[1]:.3f} s median ({fetched / 1e6 / direct:.0f} MB/s)")
    print(f"restore / plain download: {restore / direct:.2f}x best, "
          f"{middle[0] / middle[1]:.2f}x median (of {args.repeat})")


async def bench_claims(server: ServerProcess, args: argparse.Namespace) -> None:
    url = f"s3://{server.create_bucket()}/klingflow"
    keys = [canonical_hash({"claim": n}) for n in range(args.claim_steps)]
    start = len(server.requests)
    serves = await claimed_steps(url, keys, args.ttl, args.task_seconds)
    kinds = claim_kinds(server.requests[start:])
    steps = len(keys)
    per_step = sum(kinds.values()) / steps + serves / steps
    renewals = kinds["updates and renewals (If-Match)"] / steps - 2
    print(f"claims: {steps} steps, TTL {args.ttl:g} s, {args.task_seconds:g} s of work each "
          f"(renewal every {args.ttl / 3:.2f} s), counted at the server:")
    for kind, count in sorted(kinds.items()):
        print(f"  {kind}: {count / steps:.1f} per step")
    print(f"  record check right after the claim (GET ac/KEY): {serves / steps:.1f} per step")
    print(f"  total: {per_step:.1f} requests per step (2 of the If-Match writes are the "
          f"submitting and submitted updates, {renewals:.1f} are renewals)")
    for minutes in (1, 3, 10):
        beats = math.floor(minutes * 60 / (TTL / 3))
        print(f"  at the default TTL of {TTL:g} s, a {minutes} min task: 1 create + 1 record "
              f"check + 2 updates + {beats} renewals + 2 release = {6 + beats} requests")
    print("  a machine waiting on a claim: 2 GETs per poll (record, claim); polls back off "
          "1 s -> 10 s, so about 2 x (6 + minutes x 6) requests for a wait of some minutes")
    print("  once per run: the probe, 4 conditional PUTs and a DELETE")


def main() -> int:
    args = parse_args()
    server = ServerProcess()
    os.environ.update(server.environment)
    load = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-remote-") as folder:
            anyio.run(bench_restore, server, Path(folder), args)
        anyio.run(bench_claims, server, args)
    finally:
        server.close()
    print(f"load average at start: {load:.2f} (2-core machine shared with other work)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
