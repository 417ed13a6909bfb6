"""The claim protocol on obstore's MemoryStore (which has create-only and If-Match
writes): each machine has its own board, owner and clock; time is driven by the test."""

from __future__ import annotations

import json
from dataclasses import dataclass

import anyio
import pytest
from obstore.store import MemoryStore

from klingflow.cache.bucket import Bucket
from klingflow.cache.claims import (
    ClaimBoard,
    ClaimState,
    Lease,
    Owner,
    ResultReady,
    Unclaimed,
    Waiting,
    WaitNotice,
    Watch,
)
from klingflow.errors import ClaimLostError, RemoteCacheError
from tests.remotehelpers import FakeTime

pytestmark = pytest.mark.anyio

KEY = "a" * 64
TTL = 30.0


@dataclass(frozen=True)
class Served:
    """What a fetch from the remote gave: a hit once the holder's record is there."""

    hit: bool


class Remote:
    """The result record's side of the story: does the remote hold the result yet?"""

    def __init__(self) -> None:
        self.done = False
        self.fetches = 0

    async def serve(self) -> Served:
        self.fetches += 1
        return Served(self.done)


class Machine:
    def __init__(self, store: MemoryStore, name: str, *, start: float = 0.0,
                 remote: Remote | None = None, read_only: bool = False) -> None:
        self.time = FakeTime(start)
        self.remote = remote or Remote()
        self.board = ClaimBoard(Bucket(store, where="memory://"),
                                owner=Owner(f"host-{name}", 100 + len(name), f"run-{name}",
                                            f"token-{name}"),
                                ttl=TTL, clock=self.time.clock, sleep=self.time.sleep,
                                read_only=read_only)

    async def acquire(self, **options: object) -> Lease | ResultReady[Served] | Unclaimed:
        return await self.board.acquire(KEY, step="launch", serve=self.remote.serve,
                                        **options)  # type: ignore[arg-type]

    def watch(self) -> Watch[Served]:
        return Watch(self.board, KEY, "launch", self.remote.serve)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def stored_claim(store: MemoryStore) -> dict[str, object]:
    return json.loads(bytes(store.get(f"claims/{KEY}").bytes()))


def has_claim(store: MemoryStore) -> bool:
    return any(meta["path"] == f"claims/{KEY}" for batch in store.list() for meta in batch)


async def test_the_first_machine_claims_with_its_owner_and_step(store) -> None:
    lease = await Machine(store, "a").acquire()
    assert isinstance(lease, Lease)
    assert (lease.taken_over, lease.previous) == (False, None)
    assert stored_claim(store) == {
        "format": "klingflow-claim/1", "key": KEY, "state": "claimed", "beat": 0,
        "owner": {"host": "host-a", "pid": 101, "run_id": "run-a", "token": "token-a"},
        "step": "launch", "reply_ref": None, "account": None, "email": None, "at_ms": None,
        "task_id": None}


async def test_progress_is_recorded_in_the_claim_with_compare_and_swap(store) -> None:
    lease = await Machine(store, "a").acquire()
    assert isinstance(lease, Lease)
    before = lease.version
    await lease.submitting(reply_ref="r-1", account="main", email="a@example.com", at_ms=1234)
    assert lease.version != before
    await lease.submitted(4242)
    await lease.renew()
    claim = stored_claim(store)
    assert {k: claim[k] for k in ("state", "beat", "reply_ref", "account", "email", "at_ms",
                                  "task_id")} == {
        "state": "submitted", "beat": 3, "reply_ref": "r-1", "account": "main",
        "email": "a@example.com", "at_ms": 1234, "task_id": 4242}


async def test_a_second_machine_waits_visibly_then_gets_the_result(store) -> None:
    remote = Remote()
    a, b = Machine(store, "a", remote=remote), Machine(store, "b", remote=remote)
    lease = await a.acquire()
    assert isinstance(lease, Lease)

    async def meanwhile(_: float) -> None:  # the holder's work, while b sleeps
        if len(b.time.slept) == 2:
            await lease.submitting(reply_ref="r", account="main", email="a@x.test", at_ms=1)
            await lease.submitted(77)
        if len(b.time.slept) == 4:
            remote.done = True  # a pushed its record ...
            await lease.release()  # ... then let go of the claim

    b.time.on_sleep = meanwhile
    notices: list[WaitNotice] = []
    got = await b.acquire(on_wait=notices.append)
    assert got == ResultReady(KEY, Served(True))
    assert [str(n) for n in notices] == [
        "waiting for another machine: host-a (pid 101) has claimed it",
        "waiting for another machine: host-a (pid 101) has submitted task 77"]
    assert [n.step for n in notices] == ["launch", "launch"]
    assert not has_claim(store)


@pytest.mark.parametrize(("ttl", "cap"), [(TTL, 10.0), (6.0, 2.0)])
async def test_the_waiter_backs_off_to_at_most_a_third_of_the_ttl(store, ttl, cap) -> None:
    a, b = Machine(store, "a"), Machine(store, "b")
    b.board = ClaimBoard(b.board.bucket, owner=b.board.owner, ttl=ttl, clock=b.time.clock,
                         sleep=b.time.sleep)
    lease = await a.acquire()
    assert isinstance(lease, Lease)

    async def renew(_: float) -> None:
        await lease.renew()  # a is alive throughout
        if len(b.time.slept) == 12:
            b.remote.done = True

    b.time.on_sleep = renew
    assert isinstance(await b.acquire(), ResultReady)
    bases = [min(1.5 ** i, cap) for i in range(len(b.time.slept))]
    assert len(b.time.slept) == 12
    assert all(0.8 * base <= slept <= 1.2 * base
               for slept, base in zip(b.time.slept, bases, strict=True))


async def test_a_live_holder_is_never_taken_over(store) -> None:
    a, b = Machine(store, "a"), Machine(store, "b", start=5000.0)
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    watch = b.watch()
    for _ in range(10):  # b's clock runs far past a TTL, but a renews every TTL / 2
        assert isinstance(await watch.poll(), Waiting)
        b.time.now += TTL / 2
        await lease.renew()
    assert isinstance(await watch.poll(), Waiting)
    assert stored_claim(store)["owner"]["host"] == "host-a"  # type: ignore[index]


async def test_expiry_is_judged_on_the_waiters_own_clock(store) -> None:
    a = Machine(store, "a")
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    await lease.submitted(99)  # then a dies: no renewal ever again
    b = Machine(store, "b", start=1_000_000.0)  # b's clock says nothing about a's
    watch = b.watch()
    assert isinstance(await watch.poll(), Waiting)  # first seen now: the TTL starts now
    b.time.now += TTL - 0.001
    waiting = await watch.poll()
    assert isinstance(waiting, Waiting) and waiting.holder is not None
    assert (waiting.holder.state, waiting.holder.task_id) == ("submitted", 99)
    b.time.now += 0.002
    taken = await watch.poll()
    assert isinstance(taken, Lease) and taken.taken_over


async def test_a_stale_claim_goes_to_exactly_one_of_several_takers(store) -> None:
    a = Machine(store, "a")
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    await lease.submitting(reply_ref="ref-a", account="main", email="a@x.test", at_ms=1700)
    await lease.submitted(4242)
    takers = [Machine(store, name) for name in ("b", "c", "d", "e", "f")]
    watches = [t.watch() for t in takers]
    for watch in watches:
        assert isinstance(await watch.poll(), Waiting)
    for taker in takers:
        taker.time.now += TTL
    outcomes: list[object] = []

    async def poll(watch: Watch[Served]) -> None:
        outcomes.append(await watch.poll())

    async with anyio.create_task_group() as group:
        for watch in watches:
            group.start_soon(poll, watch)
    leases = [o for o in outcomes if isinstance(o, Lease)]
    assert len(leases) == 1 and len(outcomes) == 5
    winner = leases[0]
    assert winner.previous is not None
    assert (winner.previous.owner.host, winner.previous.state, winner.previous.task_id,
            winner.previous.reply_ref, winner.previous.email, winner.previous.at_ms) == (
        "host-a", "submitted", 4242, "ref-a", "a@x.test", 1700)
    claim = stored_claim(store)
    # the taker's claim carries the task on, in case the taker dies too
    assert (claim["owner"], claim["state"], claim["task_id"]) == (  # type: ignore[call-overload]
        {"host": winner.state.owner.host, "pid": winner.state.owner.pid,
         "run_id": winner.state.owner.run_id, "token": winner.state.owner.token},
        "submitted", 4242)


async def test_a_taker_of_a_claim_that_was_submitting_gets_what_finds_the_task(store) -> None:
    a = Machine(store, "a")
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    await lease.submitting(reply_ref="ref-a", account="main", email="a@x.test", at_ms=1700)
    b = Machine(store, "b")
    got = await b.acquire()
    assert isinstance(got, Lease) and got.previous is not None
    assert (got.previous.state, got.previous.task_id, got.previous.reply_ref,
            got.previous.email, got.previous.at_ms) == ("submitting", None, "ref-a",
                                                        "a@x.test", 1700)
    assert TTL <= sum(b.time.slept) <= TTL + 10 * 1.2


async def test_the_old_holder_can_no_longer_write_or_delete_the_claim(store) -> None:
    a, b = Machine(store, "a"), Machine(store, "b")
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    taken = await b.acquire()
    assert isinstance(taken, Lease) and taken.taken_over
    with pytest.raises(ClaimLostError) as lost:
        await lease.submitting(reply_ref="r", account=None, email=None, at_ms=0)
    assert str(lost.value) == (
        f"remote cache memory://: the claim on {KEY} (step launch) is no longer this "
        "machine's: another machine took it over after it went a TTL without renewal, so "
        "this machine does not submit it")
    assert lease.lost
    await lease.release()
    assert stored_claim(store)["owner"]["host"] == "host-b"  # type: ignore[index]


async def test_an_unreadable_claim_is_still_taken_over_after_a_ttl(store) -> None:
    store.put(f"claims/{KEY}", b"not json")
    b = Machine(store, "b")
    notices: list[WaitNotice] = []
    got = await b.acquire(on_wait=notices.append)
    assert isinstance(got, Lease) and got.taken_over and got.previous is None
    assert [str(n) for n in notices] == [
        "waiting for another machine: an unreadable claim holds it"]
    assert stored_claim(store)["owner"]["host"] == "host-b"  # type: ignore[index]


async def test_a_claim_released_without_a_result_goes_to_a_waiter(store) -> None:
    a, b = Machine(store, "a"), Machine(store, "b")
    lease = await a.acquire()
    assert isinstance(lease, Lease)

    async def fail(_: float) -> None:
        await lease.release()  # a's step failed: no record, no claim

    b.time.on_sleep = fail
    got = await b.acquire()
    assert isinstance(got, Lease) and not got.taken_over
    assert stored_claim(store)["owner"]["host"] == "host-b"  # type: ignore[index]


async def test_a_result_that_appears_as_the_claim_is_made_is_not_paid_again(store) -> None:
    remote = Remote()
    remote.done = True  # the holder pushed and released between our fetch and our claim
    got = await Machine(store, "b", remote=remote).acquire()
    assert got == ResultReady(KEY, Served(True))
    assert not has_claim(store)


async def test_waiting_has_a_deadline_when_asked(store) -> None:
    a, b = Machine(store, "a"), Machine(store, "b")
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    b.time.on_sleep = lambda _: lease.renew()
    with pytest.raises(RemoteCacheError) as timeout:
        await b.acquire(max_wait=25.0)
    waited = sum(b.time.slept)  # on b's clock, up to the check that gave up
    assert sum(b.time.slept[:-1]) <= 25.0 < waited
    assert str(timeout.value) == (f"remote cache memory://: waited {waited:.0f} s for "
                                  f"another machine's result for {KEY}; giving up")


# ---- the context manager: renewal in the background, release on the way out ------------


async def test_the_claim_is_renewed_in_the_background_and_released_after(store) -> None:
    a = Machine(store, "a")
    async with a.board.claim(KEY, step="launch", serve=a.remote.serve) as got:
        assert isinstance(got, Lease)
        while got.state.beat < 3:
            await anyio.sleep(0)
        assert stored_claim(store)["beat"] >= 3  # type: ignore[operator]
    assert a.time.slept[:3] == [TTL / 3] * 3
    assert not has_claim(store)


@pytest.mark.parametrize(("progress", "kept"), [
    ("claimed", False), ("submitting", True), ("submitted", False)])
async def test_a_failed_step_releases_unless_a_post_may_have_made_a_task(store, progress,
                                                                          kept) -> None:
    a = Machine(store, "a")
    with pytest.raises(RuntimeError, match="the step failed"):
        async with a.board.claim(KEY, step="launch", serve=a.remote.serve) as got:
            assert isinstance(got, Lease)
            await _advance(got, progress)
            raise RuntimeError("the step failed")
    assert has_claim(store) is kept


@pytest.mark.parametrize(("progress", "kept"), [
    ("claimed", False), ("submitting", True), ("submitted", True)])
async def test_an_interrupted_step_leaves_its_task_to_a_taker(store, progress, kept) -> None:
    a = Machine(store, "a")
    with anyio.CancelScope() as scope:
        async with a.board.claim(KEY, step="launch", serve=a.remote.serve) as got:
            assert isinstance(got, Lease)
            await _advance(got, progress)
            scope.cancel()
            await anyio.sleep_forever()
    assert has_claim(store) is kept


async def test_a_served_result_needs_no_claim(store) -> None:
    remote = Remote()
    a, b = Machine(store, "a"), Machine(store, "b", remote=remote)
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    remote.done = True
    async with b.board.claim(KEY, step="launch", serve=remote.serve) as got:
        assert got == ResultReady(KEY, Served(True))
    assert stored_claim(store)["owner"]["host"] == "host-a"  # type: ignore[index]


def test_a_claim_holds_no_credential_and_reads_back() -> None:
    state = ClaimState(KEY, Owner("h", 1, "r", "t"), "submitted", 2, "launch", "ref", "main",
                       "a@x.test", 5, 6)
    assert ClaimState.decode(state.encode(), KEY) == state
    assert ClaimState.decode(state.encode(), "b" * 64) is None  # another key's claim
    assert set(json.loads(state.encode())) == {
        "format", "key", "owner", "state", "beat", "step", "reply_ref", "account", "email",
        "at_ms", "task_id"}


async def _advance(lease: Lease, progress: str) -> None:
    if progress in ("submitting", "submitted"):
        await lease.submitting(reply_ref="r", account="main", email="a@x.test", at_ms=1)
    if progress == "submitted":
        await lease.submitted(5)


# ---- read-only machines: they wait for others' claims and never write one --------------


async def test_read_only_a_free_key_is_worked_on_without_a_claim(store) -> None:
    got = await Machine(store, "ci", read_only=True).acquire()
    assert got == Unclaimed(KEY, None)
    assert not has_claim(store)


async def test_read_only_waits_for_a_live_holder_and_gets_its_result(store) -> None:
    remote = Remote()
    a, ci = Machine(store, "a", remote=remote), Machine(store, "ci", remote=remote,
                                                        read_only=True)
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    written = stored_claim(store)

    async def holder_works(_: float) -> None:
        await lease.renew()
        if len(ci.time.slept) == 8:
            remote.done = True

    ci.time.on_sleep = holder_works
    notices: list[WaitNotice] = []
    assert await ci.acquire(on_wait=notices.append) == ResultReady(KEY, Served(True))
    assert [str(n) for n in notices] == [
        "waiting for another machine: host-a (pid 101) has claimed it"]
    assert stored_claim(store)["owner"] == written["owner"]  # ci wrote nothing


async def test_read_only_a_stale_holder_is_left_in_place_and_its_task_handed_on(store) -> None:
    a, ci = Machine(store, "a"), Machine(store, "ci", read_only=True)
    lease = await a.acquire()
    assert isinstance(lease, Lease)
    await lease.submitted(31)
    got = await ci.acquire()
    assert isinstance(got, Unclaimed) and got.previous is not None
    assert (got.previous.task_id, got.previous.owner.host) == (31, "host-a")
    assert sum(ci.time.slept) >= TTL
    assert stored_claim(store)["owner"]["host"] == "host-a"  # type: ignore[index]


class Unresolved(Exception):
    """As run.results.StepFailed(..., unresolved=True): a task paid for, not collected."""

    unresolved = True


async def test_a_paid_task_that_was_not_collected_keeps_its_claim_for_a_taker(store) -> None:
    a = Machine(store, "a")
    with pytest.raises(Unresolved):
        async with a.board.claim(KEY, step="launch", serve=a.remote.serve) as got:
            assert isinstance(got, Lease)
            await _advance(got, "submitted")
            raise Unresolved("its clip could not be downloaded")
    assert has_claim(store)
    assert stored_claim(store)["task_id"] is not None  # what a taker re-attaches to


async def test_a_task_found_again_is_recorded_with_its_account_for_a_taker(store) -> None:
    """A run that re-attaches (from a local in-flight record) under a new claim, then
    cannot collect: the claim names the task and how to read it, and stays."""
    a = Machine(store, "a")
    with pytest.raises(Unresolved):
        async with a.board.claim(KEY, step="launch", serve=a.remote.serve) as got:
            assert isinstance(got, Lease)
            await got.reattached(4242, account="main", email="main@example.com")
            raise Unresolved("its clip could not be downloaded")
    claim = stored_claim(store)
    assert (claim["state"], claim["task_id"], claim["account"], claim["email"]) == (
        "submitted", 4242, "main", "main@example.com")
