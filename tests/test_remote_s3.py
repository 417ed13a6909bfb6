"""The remote cache against a real S3-compatible server (moto's server mode on
127.0.0.1): the real obstore client over HTTP, real conditional writes, real time."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from klingflow.cache.bucket import Bucket
from klingflow.cache.claims import ClaimBoard, Lease, Owner, ResultReady, Unclaimed, WaitNotice
from klingflow.cache.local import Cache
from klingflow.cache.location import remote_settings
from klingflow.cache.probe import probe_store
from klingflow.cache.pushes import background_pushes
from klingflow.cache.remote import FetchResult, RemoteCache
from klingflow.errors import RemoteCacheError
from tests.conftest import ROOT
from tests.remotehelpers import make_result, result_key

if TYPE_CHECKING:
    from tests.s3server import S3Bucket

pytestmark = pytest.mark.anyio


@dataclass
class Machine:
    """One machine: its own folder, local cache and connection to the remote."""

    name: str
    local: Cache
    remote: RemoteCache


def machine(s3: S3Bucket, tmp_path: Path, name: str, *, read_only: bool = False) -> Machine:
    env = {"KLINGFLOW_REMOTE": s3.url(), "KLINGFLOW_REMOTE_READ_ONLY": "1" if read_only else "0"}
    settings = remote_settings(env)
    assert settings is not None
    return Machine(name, Cache(tmp_path / name / ".klingflow"), RemoteCache.open(settings))


async def test_push_then_fetch_into_an_empty_local_cache(s3, tmp_path) -> None:
    a, b = machine(s3, tmp_path, "a"), machine(s3, tmp_path, "b")
    entry = make_result(a.local, tmp_path / "files", 1)
    await a.remote.push(entry, a.local)
    assert s3.object_names() == sorted([f"klingflow/ac/{entry.key}"] +
                               [f"klingflow/cas/{sha}" for sha in entry.outputs.values()])
    fetched = await b.remote.fetch(entry.key, b.local)
    assert fetched.entry == entry and b.local.lookup(entry.key) == entry
    for sha in entry.outputs.values():
        assert b.local.object_path(sha).read_bytes() == a.local.object_path(sha).read_bytes()
    # the record went up after its files
    puts = [r.path.split("/")[3] for r in s3.requests
            if r.method == "PUT" and r.path.startswith(f"/{s3.name}/klingflow/")]
    assert puts == ["cas", "cas", "cas", "ac"]


async def test_a_corrupted_blob_is_detected_and_not_used(s3, tmp_path) -> None:
    a, b = machine(s3, tmp_path, "a"), machine(s3, tmp_path, "b")
    entry = make_result(a.local, tmp_path / "files", 1)
    await a.remote.push(entry, a.local)
    sha = entry.outputs["video"]
    s3.put(f"klingflow/cas/{sha}", b"\x00" * 5000)
    fetched = await b.remote.fetch(entry.key, b.local)
    bad = hashlib.sha256(b"\x00" * 5000).hexdigest()
    assert fetched == FetchResult(entry.key, problem=f"cas/{sha} is corrupt: its bytes hash to {bad}")
    assert b.local.lookup(entry.key) is None
    assert not b.local.object_path(sha).exists()


async def test_read_only_writes_nothing(s3, tmp_path) -> None:
    a = machine(s3, tmp_path, "a")
    shared = make_result(a.local, tmp_path / "files", 1)
    await a.remote.push(shared, a.local)
    before = s3.object_names()
    start = len(s3.server.requests)

    ci = machine(s3, tmp_path, "ci", read_only=True)
    await ci.remote.probe()
    assert (await ci.remote.fetch(shared.key, ci.local)).hit
    async with board(ci).claim(result_key(2), step="new", serve=ci.remote.fetcher(
            result_key(2), ci.local)) as got:
        assert got == Unclaimed(result_key(2))  # nobody has it: work on it, unclaimed
        own = make_result(ci.local, tmp_path / "files", 2)
        pushed = await ci.remote.push(own, ci.local)
    assert pushed.skipped == "the remote cache is read-only here"

    seen = s3.server.requests_to(s3.name, since=start)
    assert seen and {r.method for r in seen} <= {"GET", "HEAD"}
    assert s3.object_names() == before


async def test_the_store_is_probed_for_conditional_writes(s3) -> None:
    remote = RemoteCache.open(remote_settings({"KLINGFLOW_REMOTE": s3.url()}))  # type: ignore[arg-type]
    status = await remote.probe()
    assert (status.claims, status.message) == (True, None)
    probes = [r for r in s3.requests if "/claims/.probe-" in r.path and r.method == "PUT"]
    assert [(r.if_none_match, r.if_match is not None, r.status) for r in probes] == [
        ("*", False, 200), ("*", False, 412), (None, True, 412), (None, True, 200)]
    assert s3.object_names() == []


async def test_a_bucket_that_does_not_exist_is_a_clear_error(s3) -> None:
    url = "s3://no-such-bucket-kf/klingflow"
    bucket = Bucket.open(remote_settings({"KLINGFLOW_REMOTE": url}))  # type: ignore[arg-type]
    with pytest.raises(RemoteCacheError) as error:
        await probe_store(bucket, read_only=False, scratch="claims/.probe-test")
    assert str(error.value) == (f"remote cache {url}: cannot create claims/.probe-test: not "
                                "found (does the bucket or container exist?)")
    assert error.value.exit_code == 2
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(error.value)


async def test_a_failed_background_push_is_reported_not_fatal(s3, tmp_path) -> None:
    url = "s3://no-such-bucket-kf/klingflow"
    remote = RemoteCache.open(remote_settings({"KLINGFLOW_REMOTE": url}))  # type: ignore[arg-type]
    local = Cache(tmp_path / ".klingflow")
    entry = make_result(local, tmp_path / "files", 1)
    seen: list[str] = []
    async with background_pushes(remote, local,
                                 on_failure=lambda key, exc: seen.append(str(exc))) as pushes:
        pushes.push_soon(entry)
    first = min(entry.outputs.values())
    assert seen == [f"remote cache {url}: cannot upload cas/{first}: not found (does the "
                    "bucket or container exist?)"]
    assert pushes.pushed == [] and [key for key, _ in pushes.failures] == [entry.key]


# ---- claims between machines, in real time ------------------------------------------------

TTL = 1.5


def board(m: Machine, ttl: float = TTL) -> ClaimBoard:
    return m.remote.claims(Owner.here(f"run-{m.name}"), ttl=ttl)


async def test_two_claimers_at_once_one_pays_and_the_other_gets_its_record(s3, tmp_path) -> None:
    key = result_key(1)
    machines = [machine(s3, tmp_path, name) for name in ("a", "b")]
    paid: list[str] = []
    notices: list[WaitNotice] = []
    outcomes: dict[str, str] = {}

    async def run_step(m: Machine) -> None:
        if (await m.remote.fetch(key, m.local)).hit:
            outcomes[m.name] = "fetched"
            return
        async with board(m).claim(key, step="launch", serve=m.remote.fetcher(key, m.local),
                                  on_wait=notices.append) as got:
            if isinstance(got, ResultReady):
                outcomes[m.name] = "served by the other machine"
                return
            paid.append(m.name)
            await got.submitting(reply_ref=f"ref-{m.name}", account="main",
                                 email="a@x.test", at_ms=1)
            await got.submitted(7000 + len(paid))
            await anyio.sleep(1.5 * TTL)  # longer than a TTL: only renewals keep it
            entry = make_result(m.local, tmp_path / f"files-{m.name}", 1, made_by=m.name)
            await m.remote.push(entry, m.local)
            outcomes[m.name] = "paid"

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for m in machines:
                group.start_soon(run_step, m)
    assert len(paid) == 1
    payer, waiter = (machines if paid == ["a"] else machines[::-1])
    assert outcomes == {payer.name: "paid", waiter.name: "served by the other machine"}
    assert waiter.local.lookup(key) == payer.local.lookup(key) is not None
    assert str(notices[-1]) == (f"waiting for another machine: {socket.gethostname()} "
                                f"(pid {os.getpid()}) has submitted task 7001")
    claim_puts = [r for r in s3.requests if r.path.endswith(f"/claims/{key}") and
                  r.method == "PUT"]
    creates = [(r.if_none_match, r.status) for r in claim_puts if r.if_none_match]
    assert creates == [("*", 200), ("*", 412)]
    swaps = [r.status for r in claim_puts if r.if_match]
    assert len(swaps) >= 2 + 3 and set(swaps) == {200}  # submitting, submitted, renewals
    assert f"klingflow/claims/{key}" not in s3.object_names()


CHILD = """
import os, sys, anyio
from klingflow.cache.bucket import Bucket
from klingflow.cache.claims import ClaimBoard, Owner
from klingflow.cache.location import remote_settings

class Missing:
    hit = False

async def nothing():
    return Missing()

async def main():
    bucket = Bucket.open(remote_settings(os.environ))
    board = ClaimBoard(bucket, owner=Owner.here("run-child"), ttl=float(sys.argv[2]))
    async with board.claim(sys.argv[1], step="launch", serve=nothing) as lease:
        await lease.submitting(reply_ref="ref-child", account="main", email="c@x.test",
                               at_ms=1234)
        await lease.submitted(4242)
        print("submitted", flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def test_a_killed_holder_is_taken_over_with_its_task(s3, tmp_path) -> None:
    key = result_key(1)
    ttl = 2.0
    env = {**os.environ, "KLINGFLOW_REMOTE": s3.url()}
    child = subprocess.Popen([sys.executable, "-c", CHILD, key, str(ttl)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(child.stdout.readline)  # type: ignore[union-attr]
        assert line == "submitted\n"
        taker = machine(s3, tmp_path, "taker")
        notices: list[WaitNotice] = []
        killed_at: list[float] = []

        async def kill_later() -> None:
            await anyio.sleep(1.5 * ttl)  # alive and renewing: no takeover meanwhile
            child.send_signal(signal.SIGKILL)
            killed_at.append(time.monotonic())

        async def missing() -> FetchResult:
            return FetchResult(key)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(kill_later)
                got = await board(taker, ttl).acquire(key, step="launch", serve=missing,
                                                      on_wait=notices.append)
        taken_at = time.monotonic()
    finally:
        child.kill()
        child.wait()
    assert isinstance(got, Lease) and got.taken_over and got.previous is not None
    assert (got.previous.owner.pid, got.previous.state, got.previous.task_id,
            got.previous.email, got.previous.reply_ref) == (child.pid, "submitted", 4242,
                                                            "c@x.test", "ref-child")
    assert killed_at and taken_at >= killed_at[0] + ttl * 2 / 3 - 0.1
    assert [str(n).endswith(f"(pid {child.pid}) has submitted task 4242") for n in notices] == [
        True]
