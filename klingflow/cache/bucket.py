"""Object storage through obstore: the few operations the remote cache needs, async,
with obstore's errors translated into klingflow's (never showing a credential).

Create-only writes are `If-None-Match: *`; replacing a version is `If-Match: ETAG`
(or the store's own generation match on GCS), as obstore maps them per store.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import anyio
import obstore.exceptions as obx
from obstore.store import MemoryStore, from_url

from klingflow.cache.location import CREDENTIALS_HINT, RemoteSettings, display_url
from klingflow.errors import ConditionalWriteUnsupportedError, RemoteCacheError

if TYPE_CHECKING:
    from obstore import UpdateVersion
    from obstore.store import ObjectStore, RetryConfig

_T = TypeVar("_T")
CHUNK = 1 << 20
WHOLE = 8 << 20  # objects up to this size are read in one piece; larger ones stream
# Bounded so that a store that is down fails a run within seconds, not obstore's 3 minutes.
RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=20),
         "backoff": {"init_backoff": timedelta(milliseconds=100),
                     "max_backoff": timedelta(seconds=2), "base": 2}}
# S3 answers 409 when two conditional writes to one key race; it says to try again.
CONFLICT_RETRIES = (0.05, 0.2, 0.5)
_CONFLICT = re.compile(r"\b409 Conflict\b")
SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET", "AZURE_STORAGE_CLIENT_SECRET", "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN", "USEAPI_TOKEN",
)


@dataclass(frozen=True, slots=True)
class Version:
    """Which version of an object a conditional write expects (ETag and/or generation)."""

    e_tag: str | None
    version: str | None = None

    def as_mode(self) -> UpdateVersion:
        mode: UpdateVersion = {}
        if self.e_tag is not None:
            mode["e_tag"] = self.e_tag
        if self.version is not None:
            mode["version"] = self.version
        return mode


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    version: Version


@dataclass(frozen=True, slots=True)
class Download:
    sha256: str
    size: int


class Bucket:
    """One store under one prefix. Paths are relative to the prefix (`cas/SHA`...)."""

    def __init__(self, store: ObjectStore, *, where: str,
                 conflict_delays: Sequence[float] = CONFLICT_RETRIES) -> None:
        self.store = store
        self.where = where  # the URL to show in messages
        self._conflict_delays = conflict_delays

    @classmethod
    def open(cls, settings: RemoteSettings) -> Bucket:
        """The store `settings.url` names; configuration from the environment only."""
        where = display_url(settings.url)
        try:
            if settings.scheme == "memory":
                return cls(MemoryStore(), where=where)
            if settings.scheme == "file":
                store = from_url(settings.url, mkdir=not settings.read_only)
                return cls(store, where=where)
            return cls(from_url(settings.url, retry_config=RETRY), where=where)
        except (obx.BaseError, ValueError, OSError) as exc:
            raise RemoteCacheError(where, f"cannot be opened: {reason(exc)}") from exc

    async def read(self, path: str) -> Blob | None:
        """The object and its version, or None when there is none."""
        async def get() -> Blob:
            result = await self.store.get_async(path)
            return Blob(bytes(await result.bytes_async()), _version(result.meta))
        return await self._absent_is_none(get, f"read {path}")

    async def stat(self, path: str) -> Version | None:
        async def head() -> Version:
            return _version(await self.store.head_async(path))
        return await self._absent_is_none(head, f"look up {path}")

    async def write(self, path: str, data: bytes) -> Version:
        return await self._put(path, data, "overwrite", f"write {path}")

    async def create(self, path: str, data: bytes) -> Version | None:
        """Write only if nothing is there (If-None-Match: *); None when something is."""
        try:
            return await self._put(path, data, "create", f"create {path}")
        except obx.AlreadyExistsError:
            return None

    async def replace(self, path: str, data: bytes, expected: Version) -> Version | None:
        """Write only over `expected` (If-Match); None when the object is another version
        or gone."""
        if expected.e_tag is None and expected.version is None:
            raise ConditionalWriteUnsupportedError(
                self.where, f"replace {path}: this store gives objects no ETag or version")
        try:
            return await self._put(path, data, expected.as_mode(), f"replace {path}")
        except obx.PreconditionError:
            return None

    async def delete(self, path: str) -> None:
        await self._call(lambda: self.store.delete_async(path), f"delete {path}")

    async def download(self, path: str, dest: Path) -> Download | None:
        """Stream the object into `dest` (file writes off the event loop); its SHA-256
        and size, or None when there is no such object."""
        async def fetch() -> Download:
            result = await self.store.get_async(path)
            if result.meta["size"] <= WHOLE:  # one read, one hop to a worker thread
                data = await result.bytes_async()
                return await anyio.to_thread.run_sync(_save, dest, data)
            digest, size = hashlib.sha256(), 0
            with dest.open("wb") as sink:
                async for chunk in result.stream(min_chunk_size=CHUNK):
                    await anyio.to_thread.run_sync(_write, sink, digest, chunk)
                    size += len(chunk)
            return Download(digest.hexdigest(), size)
        return await self._absent_is_none(fetch, f"download {path}")

    async def upload(self, path: str, source: Path) -> None:
        data = await anyio.to_thread.run_sync(source.read_bytes)
        await self._put(path, data, "overwrite", f"upload {path}")

    # ---- plumbing ----------------------------------------------------------------------

    async def _put(self, path: str, data: bytes, mode: Any, doing: str) -> Version:
        async def put_once() -> Version:
            result = await self.store.put_async(path, data, mode=mode, use_multipart=False)
            return Version(result["e_tag"], result["version"])

        async def put() -> Version:
            for delay in self._conflict_delays:
                try:
                    return await put_once()
                except obx.GenericError as exc:
                    if not _CONFLICT.search(str(exc)):
                        raise
                await anyio.sleep(delay)
            return await put_once()
        try:
            return await self._call(put, doing, passing=(obx.AlreadyExistsError,
                                                         obx.PreconditionError))
        except (NotImplementedError, obx.NotSupportedError) as exc:
            raise ConditionalWriteUnsupportedError(
                self.where, f"{doing}: this store does not support conditional writes "
                f"({reason(exc)})") from exc

    async def _absent_is_none(self, call: Callable[[], Awaitable[_T]], doing: str) -> _T | None:
        try:
            return await self._call(call, doing, passing=(FileNotFoundError,))
        except FileNotFoundError:
            return None

    async def _call(self, call: Callable[[], Awaitable[_T]], doing: str,
                    passing: tuple[type[BaseException], ...] = ()) -> _T:
        unsupported: tuple[type[BaseException], ...] = (NotImplementedError,
                                                         obx.NotSupportedError)
        try:
            return await call()
        except passing + unsupported:
            raise
        except (obx.BaseError, OSError, ValueError) as exc:
            raise RemoteCacheError(self.where, f"cannot {doing}: {explain(exc)}") from exc


def _save(dest: Path, data: Any) -> Download:
    view = memoryview(data)
    with dest.open("wb") as sink:
        sink.write(view)
    return Download(hashlib.sha256(view).hexdigest(), len(view))


def _write(sink: IO[bytes], digest: Any, chunk: Any) -> None:
    view = memoryview(chunk)
    digest.update(view)
    sink.write(view)


def _version(meta: Any) -> Version:
    return Version(meta.get("e_tag"), meta.get("version"))


def explain(exc: BaseException) -> str:
    """What went wrong, for a person: what to check, then obstore's reason, redacted."""
    if isinstance(exc, obx.PermissionDeniedError):
        return f"permission denied; check the credentials ({CREDENTIALS_HINT})"
    if isinstance(exc, obx.UnauthenticatedError):
        return f"the credentials were not accepted ({CREDENTIALS_HINT})"
    if isinstance(exc, FileNotFoundError):
        return "not found (does the bucket or container exist?)"
    return reason(exc)


_URL_SECRETS = re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://)[^/\s@]*@|(?P<query>[?#][^\s\"'<>]*)",
                          re.IGNORECASE)


def reason(exc: BaseException) -> str:
    """The first line of `exc`'s message, without URL credentials, queries, XML bodies
    or the value of any credential variable set in the environment."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = text.split("<?xml", 1)[0].rstrip(" :")
    text = _URL_SECRETS.sub(lambda m: m.group("keep") or "", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text or type(exc).__name__
