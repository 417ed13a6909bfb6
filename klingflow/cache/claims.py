"""Claims across machines: before paying for a request, a machine holds `claims/KEY`.

- Acquire: a create-only write (If-None-Match: *). One machine wins; the others wait
  for the result record, polling with backoff, and tell the user they are waiting.
- Hold: the owner rewrites its claim every TTL/3 with If-Match on its ETag (a beat
  counter changes the bytes, hence the ETag), and records its progress the same way:
  `submitting` (replyRef, account, e-mail, time) before the POST, `submitted` (task
  id) after it.
- Take over: a claim whose ETag has not changed for a TTL, measured on the waiter's
  own monotonic clock (machines' clocks are never compared), is stale. The waiter
  replaces it with If-Match on the stale ETag, so exactly one taker wins, and gets
  the previous holder's state, to re-attach to its task instead of paying again.
- Release: the claim is deleted after the record is pushed, or on failure; a claim
  whose POST may have created a task is left for a taker to recover.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

import anyio

from klingflow.cache.bucket import Bucket, Version
from klingflow.errors import ClaimLostError, RemoteCacheError

CLAIM_FORMAT = "klingflow-claim/1"
CLAIMED, SUBMITTING, SUBMITTED = "claimed", "submitting", "submitted"
TTL = 60.0  # seconds without a renewal before a claim is taken over
FIRST_POLL, MAX_POLL = 1.0, 10.0  # a waiter's backoff (never above TTL/3)


class Servable(Protocol):
    @property
    def hit(self) -> bool: ...


_S = TypeVar("_S", bound=Servable)


def claim_path(key: str) -> str:
    return f"claims/{key}"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a claim; `token` tells two runs of one process apart."""

    host: str
    pid: int
    run_id: str
    token: str

    @classmethod
    def here(cls, run_id: str) -> Owner:
        return cls(socket.gethostname(), os.getpid(), run_id, secrets.token_hex(8))


@dataclass(frozen=True, slots=True)
class ClaimState:
    """The contents of `claims/KEY`: never a token or any other credential."""

    key: str
    owner: Owner
    state: str = CLAIMED
    beat: int = 0
    step: str | None = None
    reply_ref: str | None = None
    account: str | None = None
    email: str | None = None
    at_ms: int | None = None
    task_id: int | None = None

    def encode(self) -> bytes:
        return json.dumps({"format": CLAIM_FORMAT, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> ClaimState | None:
        """The claim `data` holds, or None when it is not a readable klingflow claim."""
        try:
            fields: dict[str, Any] = json.loads(data)
            if fields.pop("format") != CLAIM_FORMAT or fields.get("key") != key:
                return None
            return cls(**{**fields, "owner": Owner(**fields["owner"])})
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def describe(self) -> str:
        who = f"{self.owner.host} (pid {self.owner.pid})"
        if self.state == SUBMITTED:
            return f"{who} has submitted task {self.task_id}"
        if self.state == SUBMITTING:
            return f"{who} is submitting it"
        return f"{who} has claimed it"


@dataclass(frozen=True, slots=True)
class WaitNotice:
    """Shown while this machine waits for another one's result."""

    key: str
    step: str | None
    holder: ClaimState | None  # None: a claim klingflow cannot read
    waited: float  # seconds, on this machine's clock

    def __str__(self) -> str:
        held = self.holder.describe() if self.holder else "an unreadable claim holds it"
        return f"waiting for another machine: {held}"


@dataclass(frozen=True, slots=True)
class ResultReady(Generic[_S]):
    """Another machine made the result; `served` is what serving it gave."""

    key: str
    served: _S


class Lease:
    """A claim this machine holds. Every write is a compare-and-swap on its ETag, so a
    lease that another machine took over can never be written again: `lost`."""

    def __init__(self, bucket: Bucket, state: ClaimState, version: Version, *,
                 previous: ClaimState | None = None, taken_over: bool = False) -> None:
        self._bucket = bucket
        self.state = state
        self.version = version
        self.previous = previous  # the holder this machine took over from, if readable
        self.taken_over = taken_over
        self.lost = False
        self.released = False
        self._lock = anyio.Lock()

    @property
    def key(self) -> str:
        return self.state.key

    async def renew(self) -> None:
        await self._write({})

    async def submitting(self, *, reply_ref: str, account: str | None, email: str | None,
                         at_ms: int) -> None:
        """Record, before the POST, what finds its task again if this machine dies."""
        await self._write({"state": SUBMITTING, "reply_ref": reply_ref, "account": account,
                           "email": email, "at_ms": at_ms, "task_id": None})

    async def submitted(self, task_id: int) -> None:
        await self._write({"state": SUBMITTED, "task_id": task_id})

    async def reattached(self, task_id: int, *, account: str | None,
                         email: str | None) -> None:
        """Record a task found again (an earlier POST's), with what reads it: a machine
        that takes the claim over re-attaches to it too."""
        await self._write({"state": SUBMITTED, "task_id": task_id, "account": account,
                           "email": email})

    async def release(self) -> None:
        """Delete the claim if it is still this machine's."""
        async with self._lock:
            if self.lost or self.released:
                return
            self.released = True
            if await self._bucket.stat(claim_path(self.key)) == self.version:
                await self._bucket.delete(claim_path(self.key))

    async def _write(self, changes: dict[str, Any]) -> None:
        async with self._lock:
            if self.lost or self.released:
                raise self._lost_error()
            state = replace(self.state, beat=self.state.beat + 1, **changes)
            version = await self._bucket.replace(claim_path(self.key), state.encode(),
                                                 self.version)
            if version is None:
                self.lost = True
                raise self._lost_error()
            self.state, self.version = state, version

    def _lost_error(self) -> ClaimLostError:
        step = f" (step {self.state.step})" if self.state.step else ""
        return ClaimLostError(self._bucket.where, f"the claim on {self.key}{step} is no longer "
                              "this machine's: another machine took it over after it went "
                              "a TTL without renewal, so this machine does not submit it")


@dataclass(frozen=True, slots=True)
class Unclaimed:
    """Read-only: nobody (alive) holds the key, and this machine may not claim it: it
    works on the step without a claim. `previous`: a stale holder's state, if any, to
    re-attach to its task as a taker would."""

    key: str
    previous: ClaimState | None = None


@dataclass(frozen=True, slots=True)
class Waiting:
    """Another machine holds the key and is alive, as far as this machine can tell."""

    holder: ClaimState | None


class ClaimBoard:
    """Acquires, keeps and releases claims in one bucket for one owner."""

    def __init__(self, bucket: Bucket, *, owner: Owner, ttl: float = TTL,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
                 rng: random.Random | None = None,
                 first_poll: float = FIRST_POLL, max_poll: float = MAX_POLL,
                 read_only: bool = False) -> None:
        self.bucket = bucket
        self.owner = owner
        self.read_only = read_only  # wait for other machines' claims, never write one
        self.ttl = ttl
        self.clock = clock
        self.sleep = sleep
        self._rng = rng or random.Random()
        self._first_poll = min(first_poll, ttl / 3)
        self._max_poll = min(max_poll, ttl / 3)

    @asynccontextmanager
    async def claim(self, key: str, *, step: str | None, serve: Callable[[], Awaitable[_S]],
                    on_wait: Callable[[WaitNotice], None] | None = None,
                    max_wait: float | None = None,
                    ) -> AsyncIterator[Lease | ResultReady[_S] | Unclaimed]:
        """Hold `key` (renewed in the background) for the body, or learn that another
        machine made its result meanwhile. `serve()` tries to serve the result from
        the remote (RemoteCache.fetch); it runs before acquiring would pay."""
        got = await self.acquire(key, step=step, serve=serve, on_wait=on_wait,
                                 max_wait=max_wait)
        if not isinstance(got, Lease):
            yield got
            return
        try:
            async with anyio.create_task_group() as keeper:
                keeper.start_soon(self.keep, got)
                try:
                    yield got
                except BaseException as exc:
                    await self._finish(got, keep=_keep_after(exc, got.state.state))
                    raise
                finally:
                    keeper.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the body's error, not the keeper's group of it
            raise (group.exceptions[0] if len(group.exceptions) == 1 else group) from None
        await self._finish(got, keep=False)

    async def acquire(self, key: str, *, step: str | None, serve: Callable[[], Awaitable[_S]],
                      on_wait: Callable[[WaitNotice], None] | None = None,
                      max_wait: float | None = None) -> Lease | ResultReady[_S] | Unclaimed:
        """A lease on `key`, or the result another machine made; waits meanwhile.
        Read-only, Unclaimed when no live machine holds the key."""
        created = None if self.read_only else await self._create(key, step, serve)
        if created is not None:
            return created
        watch = Watch(self, key, step, serve)
        started, delay, last = self.clock(), self._first_poll, _NOTHING_SHOWN
        while True:
            outcome = await watch.poll()
            if not isinstance(outcome, Waiting):
                return outcome
            waited = self.clock() - started
            if on_wait is not None and _shown(outcome.holder) != last:
                on_wait(WaitNotice(key, step, outcome.holder, waited))
            last = _shown(outcome.holder)
            if max_wait is not None and waited > max_wait:
                raise RemoteCacheError(self.bucket.where, f"waited {waited:.0f} s for another "
                                       f"machine's result for {key}; giving up")
            await self.sleep(delay * self._rng.uniform(0.8, 1.2))
            delay = min(delay * 1.5, self._max_poll)

    async def keep(self, lease: Lease) -> None:
        """Renew `lease` every TTL/3 until cancelled or lost. A failed renewal is tried
        again at the next beat: a lease survives a store's hiccup shorter than a TTL."""
        while not (lease.lost or lease.released):
            await self.sleep(self.ttl / 3)
            # Shielded: a renewal cut short after the store took it would leave the lease
            # with an old ETag, and its release or next update would then fail.
            with anyio.CancelScope(shield=True):
                try:
                    await lease.renew()
                except ClaimLostError:
                    return
                except RemoteCacheError:
                    continue

    # ---- the steps the waiting is made of -----------------------------------------------

    async def _create(self, key: str, step: str | None,
                      serve: Callable[[], Awaitable[_S]]) -> Lease | ResultReady[_S] | None:
        state = ClaimState(key, self.owner, step=step)
        version = await self.bucket.create(claim_path(key), state.encode())
        if version is None:
            return None
        lease = Lease(self.bucket, state, version)
        served = await serve()  # another machine may have finished just before we claimed
        if served.hit:
            await lease.release()
            return ResultReady(key, served)
        return lease

    async def _take_over(self, key: str, step: str | None, stale: Version,
                         holder: ClaimState | None) -> Lease | None:
        base = holder or ClaimState(key, self.owner)
        state = replace(base, owner=self.owner, beat=0, step=step)  # the task carries on
        version = await self.bucket.replace(claim_path(key), state.encode(), stale)
        if version is None:
            return None  # another taker won, or the holder came back to life
        return Lease(self.bucket, state, version, previous=holder, taken_over=True)

    async def _finish(self, lease: Lease, *, keep: bool) -> None:
        if keep:
            return
        # If this fails the claim is left behind: it goes stale after a TTL.
        with anyio.CancelScope(shield=True), suppress(RemoteCacheError):
            await lease.release()


class Watch(Generic[_S]):
    """One waiter's view of one key's claim, with the waiter's own clock."""

    def __init__(self, board: ClaimBoard, key: str, step: str | None,
                 serve: Callable[[], Awaitable[_S]]) -> None:
        self.board, self.key, self.step, self.serve = board, key, step, serve
        self.seen: Version | None = None
        self.seen_at = 0.0

    async def poll(self) -> Lease | ResultReady[_S] | Unclaimed | Waiting:
        served = await self.serve()
        if served.hit:
            return ResultReady(self.key, served)
        blob = await self.board.bucket.read(claim_path(self.key))
        if blob is None and self.board.read_only:
            return Unclaimed(self.key)
        if blob is None:  # released without a result (it failed): this machine tries
            created = await self.board._create(self.key, self.step, self.serve)
            return Waiting(None) if created is None else created
        holder = ClaimState.decode(blob.data, self.key)
        now = self.board.clock()
        if blob.version != self.seen:
            self.seen, self.seen_at = blob.version, now
            return Waiting(holder)
        if now - self.seen_at < self.board.ttl:
            return Waiting(holder)
        if self.board.read_only:
            return Unclaimed(self.key, holder)
        lease = await self.board._take_over(self.key, self.step, blob.version, holder)
        if lease is None:
            self.seen = None  # look again, and start the TTL afresh from what is there now
            return Waiting(holder)
        return lease


_NOTHING_SHOWN: tuple[Any, ...] | None = ("nothing shown yet",)


def _shown(holder: ClaimState | None) -> tuple[Any, ...] | None:
    """What a waiting notice shows of a holder: a renewal alone is no news."""
    return None if holder is None else (holder.owner, holder.state, holder.task_id)


def _keep_after(exc: BaseException, state: str) -> bool:
    """Whether a claim outlives its body's failure: a POST whose outcome is unknown, an
    interrupted one that may have made a task, or a task that is paid for but was not
    collected (the error says `unresolved`, as run.results.StepFailed does) is for a
    taker to recover; it re-attaches to the task the claim names."""
    interrupted = isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt)
    unresolved = bool(getattr(exc, "unresolved", False))
    return unresolved or state == SUBMITTING or (interrupted and state == SUBMITTED)
