"""The bucket's own behaviour that no real test server shows: S3's 409 on racing
conditional writes, and how obstore's failures read once translated."""

from __future__ import annotations

from typing import Any

import obstore.exceptions as obx
import pytest

from klingflow.cache.bucket import Bucket, Version
from klingflow.errors import RemoteCacheError

pytestmark = pytest.mark.anyio

CONFLICT = ("Generic S3 error: Error performing PUT http://127.0.0.1:9/b/claims/k in 3ms - "
            "Server returned non-2xx status code: 409 Conflict: <?xml version=\"1.0\"?>"
            "<Error><Code>ConditionalRequestConflict</Code></Error>")


class RacingStore:
    """Answers the first `conflicts` puts with S3's 409, then accepts."""

    def __init__(self, conflicts: int, error: str = CONFLICT) -> None:
        self.conflicts = conflicts
        self.error = error
        self.puts: list[Any] = []

    async def put_async(self, path: str, data: bytes, **options: Any) -> dict[str, Any]:
        self.puts.append(options["mode"])
        if len(self.puts) <= self.conflicts:
            raise obx.GenericError(self.error)
        return {"e_tag": '"new"', "version": None}


def bucket(store: RacingStore) -> Bucket:
    return Bucket(store, where="s3://b/p", conflict_delays=(0, 0, 0))  # type: ignore[arg-type]


async def test_a_conditional_write_that_met_a_conflict_is_tried_again() -> None:
    store = RacingStore(conflicts=3)
    assert await bucket(store).replace("claims/k", b"x", Version('"old"')) == Version('"new"')
    assert store.puts == [{"e_tag": '"old"'}] * 4


async def test_a_conflict_that_lasts_is_an_error_not_a_lost_claim() -> None:
    store = RacingStore(conflicts=4)
    with pytest.raises(RemoteCacheError) as error:
        await bucket(store).create("claims/k", b"x")
    assert str(error.value) == (
        "remote cache s3://b/p: cannot create claims/k: Generic S3 error: Error performing PUT "
        "http://127.0.0.1:9/b/claims/k in 3ms - Server returned non-2xx status code: 409 "
        "Conflict")
    assert store.puts == ["create"] * 4


async def test_other_failures_are_not_retried_here() -> None:
    store = RacingStore(conflicts=1, error="Generic S3 error: 503 Slow Down")
    with pytest.raises(RemoteCacheError) as error:
        await bucket(store).write("ac/k", b"x")
    assert str(error.value) == ("remote cache s3://b/p: cannot write ac/k: Generic S3 error: "
                                "503 Slow Down")
    assert len(store.puts) == 1


async def test_a_version_without_etag_or_generation_cannot_be_replaced() -> None:
    with pytest.raises(RemoteCacheError) as error:
        await bucket(RacingStore(0)).replace("claims/k", b"x", Version(None))
    assert str(error.value) == ("remote cache s3://b/p: replace claims/k: this store gives "
                                "objects no ETag or version")
