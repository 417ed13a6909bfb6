"""Once per run: can this machine use the remote, and does the store honour the
conditional writes that shared claims are made of?

Stores differ (AWS S3, R2, GCS, Azure and MinIO do; Ceph and SeaweedFS are
unreliable; Garage and `file://` lack If-Match), and a store that silently ignores a
precondition would let two machines both "win" a claim. So the probe tries each
write on a scratch object and checks that the refusals really happen.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from klingflow.cache.bucket import Bucket, Version
from klingflow.errors import ConditionalWriteUnsupportedError

_OFF = ("claims across machines are off, and two machines may pay for the same step "
        "at the same time; claims between runs on this machine still work")


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """`claims`: use the remote's claim board for every step this machine would pay
    for (read-only, the board only waits for other machines' claims).
    `message`: what the run should tell the user, if anything."""

    claims: bool
    message: str | None = None


async def probe_store(bucket: Bucket, *, read_only: bool,
                      scratch: str | None = None) -> RemoteStatus:
    """Raises RemoteCacheError when the store cannot be reached or used at all.
    `scratch` names the test object (default: a random name under claims/)."""
    if read_only:
        await bucket.stat("ac/.probe")  # reachable, and the credentials may read
        return RemoteStatus(True, f"remote cache {bucket.where} is read-only here: results "
                                  "are read from it and nothing is written to it; steps that "
                                  "other machines have claimed are waited for, but this "
                                  "machine claims none")
    path = scratch or f"claims/.probe-{secrets.token_hex(8)}"
    try:
        missing = await _missing_condition(bucket, path)
    except ConditionalWriteUnsupportedError as exc:
        missing = _which(exc.message)
    await bucket.delete(path)
    if missing is None:
        return RemoteStatus(True)
    return RemoteStatus(False, f"remote cache {bucket.where}: the store does not honour "
                               f"{missing}: {_OFF}")


async def _missing_condition(bucket: Bucket, path: str) -> str | None:
    """The conditional write the store does not honour, or None when it honours both."""
    first = await bucket.create(path, b"1")
    if first is None or await bucket.create(path, b"2") is not None:
        return "create-only writes (If-None-Match: *)"
    if await bucket.replace(path, b"3", Version('"klingflow-probe"', "0")) is not None:
        return "compare-and-swap writes (If-Match)"
    if await bucket.replace(path, b"4", first) is None:
        return "compare-and-swap writes (If-Match)"
    return None


def _which(message: str) -> str:
    if message.startswith("create"):
        return "create-only writes (If-None-Match: *)"
    return "compare-and-swap writes (If-Match)"
