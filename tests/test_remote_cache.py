"""The remote cache's fetch, push and probe on in-memory and file stores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from obstore.store import MemoryStore

from klingflow.cache.bucket import Bucket
from klingflow.cache.local import Cache
from klingflow.cache.location import RemoteSettings
from klingflow.cache.pushes import background_pushes
from klingflow.cache.remote import RemoteCache
from klingflow.files import canonical_hash
from tests.remotehelpers import make_result
from tests.runhelpers import frames_step, run_cli, write_pipeline

pytestmark = pytest.mark.anyio


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def remote_on(store: MemoryStore, *, read_only: bool = False) -> RemoteCache:
    """One machine's view of the shared store."""
    return RemoteCache(Bucket(store, where="memory://"), read_only=read_only)


def contents(store: MemoryStore) -> dict[str, bytes]:
    return {meta["path"]: bytes(store.get(meta["path"]).bytes())
            for batch in store.list() for meta in batch}


async def test_a_pushed_result_is_served_into_an_empty_local_cache(store, tmp_path) -> None:
    first = Cache(tmp_path / "a" / ".klingflow")
    entry = make_result(first, tmp_path / "files", 1)
    pushed = await remote_on(store).push(entry, first)
    assert pushed.uploaded == tuple(sorted(entry.outputs.values()))
    assert pushed.sent == sum(first.object_path(s).stat().st_size for s in entry.outputs.values())

    second = Cache(tmp_path / "b" / ".klingflow")
    fetched = await remote_on(store).fetch(entry.key, second)
    assert fetched.hit and fetched.problem is None
    assert fetched.entry == entry
    assert second.lookup(entry.key) == entry
    for sha in entry.outputs.values():
        assert second.object_path(sha).read_bytes() == first.object_path(sha).read_bytes()
    assert fetched.downloaded == pushed.sent


async def test_the_layout_is_files_by_hash_and_records_by_key(store, tmp_path) -> None:
    local = Cache(tmp_path / ".klingflow")
    entry = make_result(local, tmp_path / "files", 1)
    await remote_on(store).push(entry, local)
    kept = contents(store)
    assert sorted(kept) == sorted([f"ac/{entry.key}"] + [f"cas/{s}" for s in entry.outputs.values()])
    for sha in entry.outputs.values():
        assert hashlib.sha256(kept[f"cas/{sha}"]).hexdigest() == sha
    record = json.loads(kept[f"ac/{entry.key}"])
    assert record == {"format": "klingflow-result/1", "key": entry.key, "task_id": 1001,
                      "account": "main", "credits": 20, "outputs": dict(entry.outputs),
                      "request": dict(entry.request)}


async def test_what_the_remote_holds_can_be_asked_without_downloading(store, tmp_path) -> None:
    local = Cache(tmp_path / ".klingflow")
    entry = make_result(local, tmp_path / "files", 1)
    remote = remote_on(store)
    assert not await remote.holds(entry.key)
    await remote.push(entry, local)
    assert await remote_on(store, read_only=True).holds(entry.key)


async def test_a_key_the_remote_lacks_is_a_plain_miss(store, tmp_path) -> None:
    fetched = await remote_on(store).fetch("0" * 64, Cache(tmp_path / ".klingflow"))
    assert (fetched.hit, fetched.entry, fetched.problem, fetched.downloaded) == (False, None,
                                                                                 None, 0)


async def test_files_already_in_the_local_cache_are_not_downloaded(store, tmp_path) -> None:
    local = Cache(tmp_path / ".klingflow")
    entry = make_result(local, tmp_path / "files", 1)
    await remote_on(store).push(entry, local)
    (local.root / "entries" / f"{entry.key}.json").unlink()  # the entry lost, files kept
    fetched = await remote_on(store).fetch(entry.key, local)
    assert fetched.hit and fetched.downloaded == 0


async def test_push_sends_only_what_the_remote_lacks(store, tmp_path) -> None:
    local = Cache(tmp_path / ".klingflow")
    one = make_result(local, tmp_path / "files", 1)
    remote = remote_on(store)
    await remote.push(one, local)
    again = await remote.push(one, local)
    assert (again.uploaded, again.sent, again.skipped) == ((), 0, "already in the remote cache")
    # a second result that shares one file with the first: only two files travel
    shared = dict(one.outputs, video=make_result(local, tmp_path / "files", 2).outputs["video"])
    request = {**one.request, "body": {"effect": "squish"}}
    two = type(one)(canonical_hash(request), 7, "main", 20, shared, request)
    local.store(two, {a: local.object_path(s) for a, s in shared.items()})
    pushed = await remote.push(two, local)
    assert pushed.uploaded == (shared["video"],)


async def test_a_corrupt_blob_is_detected_reported_and_not_used(store, tmp_path) -> None:
    first = Cache(tmp_path / "a")
    entry = make_result(first, tmp_path / "files", 1)
    await remote_on(store).push(entry, first)
    sha = entry.outputs["last_frame"]
    bad = b"not the last frame"
    store.put(f"cas/{sha}", bad)

    second = Cache(tmp_path / "b")
    remote = remote_on(store)
    fetched = await remote.fetch(entry.key, second)
    assert not fetched.hit
    assert fetched.problem == (f"cas/{sha} is corrupt: its bytes hash to "
                               f"{hashlib.sha256(bad).hexdigest()}")
    assert second.lookup(entry.key) is None
    assert not second.object_path(sha).exists()
    assert list((second.root / "objects").rglob("*.tmp")) == []


async def test_a_machine_with_the_good_file_repairs_a_corrupt_blob(store, tmp_path) -> None:
    first = Cache(tmp_path / "a")
    entry = make_result(first, tmp_path / "files", 1)
    remote = remote_on(store)
    await remote.push(entry, first)
    sha = entry.outputs["video"]
    store.put(f"cas/{sha}", b"broken")
    assert not (await remote.fetch(entry.key, Cache(tmp_path / "b"))).hit
    repaired = await remote.push(entry, first)  # the same machine knows the blob is bad
    assert repaired.uploaded == (sha,)
    assert (await remote_on(store).fetch(entry.key, Cache(tmp_path / "c"))).hit


async def test_a_record_whose_file_is_missing_is_not_used(store, tmp_path) -> None:
    first = Cache(tmp_path / "a")
    entry = make_result(first, tmp_path / "files", 1)
    await remote_on(store).push(entry, first)
    sha = entry.outputs["first_frame"]
    store.delete(f"cas/{sha}")
    second, remote = Cache(tmp_path / "b"), remote_on(store)
    fetched = await remote.fetch(entry.key, second)
    assert (fetched.hit, fetched.problem) == (False, f"cas/{sha} is missing")

    # so the second machine pays, and its push replaces the record that was of no use
    own = make_result(second, tmp_path / "files", 1, made_by="b")
    pushed = await remote.push(own, second)
    assert (pushed.uploaded, pushed.skipped) == (tuple(sorted(own.outputs.values())), None)
    assert (await remote_on(store).fetch(entry.key, Cache(tmp_path / "c"))).entry == own


@pytest.mark.parametrize(("record", "problem"), [
    (b"{", "is not JSON (Expecting property name enclosed in double quotes: "
           "line 1 column 2 (char 1))"),
    (b"[]", "is not a klingflow-result/1 record"),
    (json.dumps({"format": "klingflow-result/1", "key": "K", "request": {"other": 1},
                 "outputs": {"video": "0" * 64}}).encode(),
     "does not describe the request of its key"),
    (json.dumps({"format": "klingflow-result/1", "key": "K", "request": "R",
                 "outputs": {"video": "../../../etc/passwd"}}).encode(),
     "output video is not a SHA-256"),
    (json.dumps({"format": "klingflow-result/1", "key": "K", "request": "R",
                 "outputs": {}}).encode(), "names no output files"),
    (json.dumps({"format": "klingflow-result/1", "key": "K", "request": "R", "task_id": "1",
                 "outputs": {"video": "0" * 64}}).encode(), "has no valid task_id"),
])
async def test_a_malformed_record_is_reported_and_not_used(store, tmp_path, record,
                                                            problem) -> None:
    request = {"endpoint": "e", "body": {}, "backend": "sim"}
    key = canonical_hash(request)
    text = record.replace(b'"K"', json.dumps(key).encode())
    text = text.replace(b'"R"', json.dumps(request).encode())
    store.put(f"ac/{key}", text)
    local = Cache(tmp_path / ".klingflow")
    fetched = await remote_on(store).fetch(key, local)
    assert (fetched.hit, fetched.problem) == (False, f"ac/{key} {problem}")
    assert local.lookup(key) is None


async def test_read_only_writes_nothing(store, tmp_path) -> None:
    local = Cache(tmp_path / ".klingflow")
    entry = make_result(local, tmp_path / "files", 1)
    remote = remote_on(store, read_only=True)
    pushed = await remote.push(entry, local)
    assert (pushed.uploaded, pushed.skipped) == ((), "the remote cache is read-only here")
    status = await remote.probe()
    assert status.claims  # to wait for other machines' claims
    assert status.message == ("remote cache memory:// is read-only here: results are read "
                              "from it and nothing is written to it; steps that other "
                              "machines have claimed are waited for, but this machine "
                              "claims none")
    assert contents(store) == {}


async def test_read_only_still_reads(store, tmp_path) -> None:
    first = Cache(tmp_path / "a")
    entry = make_result(first, tmp_path / "files", 1)
    await remote_on(store).push(entry, first)
    fetched = await remote_on(store, read_only=True).fetch(entry.key, Cache(tmp_path / "b"))
    assert fetched.hit


async def test_a_store_with_both_conditional_writes_carries_claims(store) -> None:
    status = await remote_on(store).probe()
    assert (status.claims, status.message) == (True, None)
    assert contents(store) == {}  # the probe cleans up after itself


async def test_a_file_store_has_no_if_match_and_the_run_is_told(tmp_path) -> None:
    url = f"file://{tmp_path}/shared"
    remote = RemoteCache.open(RemoteSettings(url, "file"))
    status = await remote.probe()
    assert not status.claims
    assert status.message == (
        f"remote cache {url}: the store does not honour compare-and-swap writes (If-Match): "
        "claims across machines are off, and two machines may pay for the same step at "
        "the same time; claims between runs on this machine still work")
    assert [p for p in (tmp_path / "shared").rglob("*") if p.is_file()] == []


async def test_a_file_store_shares_results_between_folders(tmp_path) -> None:
    url = f"file://{tmp_path}/shared"
    first = Cache(tmp_path / "a")
    entry = make_result(first, tmp_path / "files", 1)
    await RemoteCache.open(RemoteSettings(url, "file")).push(entry, first)
    fetched = await RemoteCache.open(RemoteSettings(url, "file")).fetch(entry.key,
                                                                        Cache(tmp_path / "b"))
    assert fetched.entry == entry
    assert sorted(p.name for p in (tmp_path / "shared" / "cas").iterdir()) == sorted(
        entry.outputs.values())


async def test_keys_that_are_not_request_keys_are_refused(store, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"^not a request key: '\.\./x'$"):
        await remote_on(store).fetch("../x", Cache(tmp_path))


async def test_a_file_larger_than_one_read_is_streamed_and_checked(store, tmp_path) -> None:
    first = Cache(tmp_path / "a")
    entry = make_result(first, tmp_path / "files", 1, size=9 << 20)  # over 8 MB: streamed
    await remote_on(store).push(entry, first)
    second = Cache(tmp_path / "b")
    fetched = await remote_on(store).fetch(entry.key, second)
    assert fetched.hit and fetched.downloaded > 3 * (9 << 20)
    sha = entry.outputs["video"]
    store.put(f"cas/{sha}", b"x" * (9 << 20))
    corrupt = await remote_on(store).fetch(entry.key, Cache(tmp_path / "c"))
    assert corrupt.problem == (f"cas/{sha} is corrupt: its bytes hash to "
                               f"{hashlib.sha256(b'x' * (9 << 20)).hexdigest()}")


async def test_background_pushes_finish_before_the_block_ends(store, tmp_path) -> None:
    local = Cache(tmp_path / ".klingflow")
    entries = [make_result(local, tmp_path / "files", n) for n in range(3)]
    done: list[str] = []
    async with background_pushes(remote_on(store), local,
                                 on_done=lambda pushed: done.append(pushed.key)) as pushes:
        for entry in entries:
            pushes.push_soon(entry)  # returns at once
        assert done == []
    assert sorted(done) == sorted(e.key for e in entries)
    assert pushes.failures == []
    assert {f"ac/{e.key}" for e in entries} <= set(contents(store))


def test_a_step_paid_for_goes_to_a_remote_without_claims_in_the_same_run(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """file:// has no If-Match, so no shared claims: what a run pays for must still reach
    the remote at once, not only when a later run serves it from the cache."""
    path = write_pipeline(isolated / "p", "pushed", [frames_step("one", "a lighthouse")])
    shared = isolated / "shared"
    code, out, err = run_cli(["run", str(path), "--sim", "--sim-speed", "20", "--remote",
                              f"file://{shared}", "--json"], capsys)
    assert code == 0, err
    step = json.loads(out)["steps"][0]
    assert step["served_by"] is None and step["tasks"] == 1  # paid in this run
    assert (shared / "ac" / step["key"]).is_file()
    assert {p.name for p in (shared / "cas").rglob("*") if p.is_file()} >= {
        o["sha256"] for o in step["outputs"].values()}
