"""The remote cache: results shared by machines through object storage.

Layout under the URL's prefix (Bazel's split): `cas/SHA256` holds files by content,
`ac/KEY` holds result records by request key (written only after their files),
`claims/KEY` holds the claims that keep two machines from paying for one request.

A record serves a step only when every file it names downloads and hashes to the
name it is kept under: records can be written by anyone who can write the bucket,
file hashes cannot lie. Files land in the local cache first, then the record.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from klingflow.cache.bucket import Bucket, Version
from klingflow.cache.claims import TTL, ClaimBoard, Owner
from klingflow.cache.local import Cache, CacheEntry
from klingflow.cache.location import RemoteSettings
from klingflow.cache.probe import RemoteStatus, probe_store
from klingflow.cache.records import RecordError, decode_record, encode_record
from klingflow.errors import RemoteCacheError
from klingflow.files import temporary_beside

TRANSFERS = 8  # files moving at once, per remote
_KEY = re.compile(r"[0-9a-f]{64}")


def blob_path(sha: str) -> str:
    return f"cas/{sha}"


def record_path(key: str) -> str:
    return f"ac/{key}"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What the remote had for a key. `entry` is set when it served the step (the files
    and the entry are in the local cache now); `problem` says why a record that exists
    was not used (a file missing or corrupt, a malformed record)."""

    key: str
    entry: CacheEntry | None = None
    problem: str | None = None
    downloaded: int = 0  # bytes

    @property
    def hit(self) -> bool:
        return self.entry is not None


@dataclass(frozen=True, slots=True)
class PushResult:
    key: str
    uploaded: tuple[str, ...] = ()  # SHA-256 of each file sent
    sent: int = 0  # bytes
    skipped: str | None = None  # why nothing was written


class RemoteCache:
    """fetch / push / probe / claims over one bucket. `read_only` writes nothing at all."""

    def __init__(self, bucket: Bucket, *, read_only: bool = False,
                 transfers: int = TRANSFERS) -> None:
        self.bucket = bucket
        self.read_only = read_only
        self._limiter = anyio.CapacityLimiter(transfers)
        self._rejected: dict[str, tuple[Version, str]] = {}  # key -> (record version, why)
        self._corrupt: set[str] = set()  # blobs seen corrupt: a push sends them again

    @classmethod
    def open(cls, settings: RemoteSettings) -> RemoteCache:
        return cls(Bucket.open(settings), read_only=settings.read_only)

    @property
    def where(self) -> str:
        return self.bucket.where

    async def probe(self) -> RemoteStatus:
        """Once per run: is the store reachable, and can it carry shared claims?"""
        return await probe_store(self.bucket, read_only=self.read_only)

    def claims(self, owner: Owner, *, ttl: float = TTL) -> ClaimBoard:
        """The claim board for this remote, once a probe said claims work here. A
        read-only machine's board waits for other machines' claims but writes none."""
        return ClaimBoard(self.bucket, owner=owner, ttl=ttl, read_only=self.read_only)

    def fetcher(self, key: str, local: Cache) -> Callable[[], Awaitable[FetchResult]]:
        """`fetch(key, local)` as a call without arguments, for ClaimBoard.claim."""
        return lambda: self.fetch(key, local)

    # ---- fetch --------------------------------------------------------------------------

    async def holds(self, key: str) -> bool:
        """Whether the remote has a record for `key` (one HEAD; its files are not checked:
        for `plan`, which only says what a run would do)."""
        _check_key(key)
        return await self.bucket.stat(record_path(key)) is not None

    async def record(self, key: str) -> CacheEntry | None:
        """The remote's record for `key`, its files unchecked (for `plan` and `lock`, which
        only say what a run would do); None when there is none or it is unreadable."""
        _check_key(key)
        blob = await self.bucket.read(record_path(key))
        if blob is None:
            return None
        try:
            return decode_record(blob.data, key)
        except RecordError:
            return None

    async def fetch(self, key: str, local: Cache) -> FetchResult:
        """Serve `key` from the remote into `local`, or say why not."""
        _check_key(key)
        blob = await self.bucket.read(record_path(key))
        if blob is None:
            return FetchResult(key)
        known = self._rejected.get(key)
        if known is not None and known[0] == blob.version:
            return FetchResult(key, problem=known[1])  # the same bad record: no download
        try:
            entry = decode_record(blob.data, key)
        except RecordError as exc:
            return self._reject(key, blob.version, f"{record_path(key)} {exc}")
        problems: list[str] = []
        sizes: list[int] = []
        await _each(self._download, [sha for sha in sorted(set(entry.outputs.values()))
                                     if not local.object_path(sha).exists()],
                    local, problems, sizes)
        if problems:
            return self._reject(key, blob.version, sorted(problems)[0])
        paths = {attr: local.object_path(sha) for attr, sha in entry.outputs.items()}
        await anyio.to_thread.run_sync(local.store, entry, paths)
        self._rejected.pop(key, None)
        return FetchResult(key, entry, downloaded=sum(sizes))

    async def _download(self, sha: str, local: Cache, problems: list[str],
                        sizes: list[int]) -> None:
        target = local.object_path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(target)
        try:
            async with self._limiter:
                got = await self.bucket.download(blob_path(sha), tmp)
            if got is None:
                problems.append(f"{blob_path(sha)} is missing")
            elif got.sha256 != sha:
                self._corrupt.add(sha)
                problems.append(f"{blob_path(sha)} is corrupt: its bytes hash to {got.sha256}")
            else:
                tmp.replace(target)
                sizes.append(got.size)
        finally:
            tmp.unlink(missing_ok=True)

    def _reject(self, key: str, version: Version, problem: str) -> FetchResult:
        self._rejected[key] = (version, problem)
        return FetchResult(key, problem=problem)

    # ---- push ---------------------------------------------------------------------------

    async def push(self, entry: CacheEntry, local: Cache) -> PushResult:
        """Send `entry`'s files (those the remote lacks), then its record."""
        _check_key(entry.key)
        if self.read_only:
            return PushResult(entry.key, skipped="the remote cache is read-only here")
        shas = sorted(set(entry.outputs.values()))
        repair = entry.key in self._rejected or not self._corrupt.isdisjoint(shas)
        if not repair and await self.bucket.stat(record_path(entry.key)) is not None:
            return PushResult(entry.key, skipped="already in the remote cache")
        sent: list[tuple[str, int]] = []
        await _each(self._upload, shas, local, sent)
        await self.bucket.write(record_path(entry.key), encode_record(entry))
        self._rejected.pop(entry.key, None)
        return PushResult(entry.key, tuple(sorted(sha for sha, _ in sent)),
                          sum(size for _, size in sent))

    async def _upload(self, sha: str, local: Cache, sent: list[tuple[str, int]]) -> None:
        source = local.object_path(sha)
        async with self._limiter:
            if sha not in self._corrupt and await self.bucket.stat(blob_path(sha)) is not None:
                return
            await self.bucket.upload(blob_path(sha), source)
        self._corrupt.discard(sha)
        sent.append((sha, source.stat().st_size))


async def _each(transfer: Callable[..., Awaitable[None]], shas: list[str],
                *args: object) -> None:
    """`transfer(sha, *args)` for every file at once; if some fail, raise one
    RemoteCacheError (the first by file name), not a group of them."""
    errors: list[tuple[str, RemoteCacheError]] = []

    async def one(sha: str) -> None:
        try:
            await transfer(sha, *args)
        except RemoteCacheError as exc:
            errors.append((sha, exc))

    async with anyio.create_task_group() as group:
        for sha in shas:
            group.start_soon(one, sha)
    if errors:
        raise min(errors, key=lambda error: error[0])[1]


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError(f"not a request key: {key!r}")
