"""What the simulated service remembers: accounts, uploads, tasks, the ledger.

A task's status is computed from the injected clock whenever it is read (no
per-task loop), so thousands of tasks cost nothing while they wait.

With a state directory (klingflow.sim.persist) this is a cache of the database:
every mutation below marks what it changed in `changes`, which the store writes
at the end of the request's transaction.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klingflow.sim import replies
from klingflow.sim.config import SimConfig
from klingflow.sim.faults import FaultPlan, Visit, unit_hash
from klingflow.sim.rules import Order

SUBMITTED, PROCESSING, SUCCEED, FAILED = "submitted", "processing", "succeed", "failed"
STATUS_CODES = {SUBMITTED: 5, PROCESSING: 10, FAILED: 50, SUCCEED: 99}
"""5 and 99 are documented; 10 and 50 are the sim's choice (clients must not rely on them)."""
FINAL = frozenset({SUCCEED, FAILED})
PROCESSING_FROM = 0.2  # share of the task's time spent submitted
FAIL_AT = 0.6  # share of the task's time after which a doomed task fails


def body_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _number(seed: int, *parts: object, digits: int = 12) -> int:
    low = 10 ** (digits - 1)
    return low + int(unit_hash(seed, *parts) * 9 * low)


def _draw(seed: int, *parts: object) -> float:
    """A number in (0, 1), never 0, fixed by the seed and `parts`."""
    return max(unit_hash(seed, *parts), 2.0**-64)


@dataclass(slots=True)
class Account:
    email: str
    max_jobs: int
    user_id: int
    credits: int
    active: set[int] = field(default_factory=set)
    peak_running: int = 0
    spent: int = 0


@dataclass(frozen=True, slots=True)
class Asset:
    file_name: str
    content_type: str
    data: bytes
    account: str
    width: int = 0
    height: int = 0
    path: Path | None = None  # persisted uploads: the bytes live in this file

    def content(self) -> bytes:
        return self.data if self.path is None else self.path.read_bytes()


@dataclass(slots=True)
class Task:
    id: int
    work_id: int
    account: Account
    order: Order
    body_hash: str
    created: float  # clock seconds (wall clock seconds when persisted)
    create_ms: int
    origin: str  # scheme://host[:port] the task was created through
    credits: int
    duration: float  # clock seconds from submit to the end, fixed at submit
    doomed: bool = False
    fault: str | None = None
    polls: int = 0
    issued: int = 0  # signed result URLs handed out
    signatures: set[str] = field(default_factory=set)

    @property
    def user_id(self) -> int:
        return self.account.user_id


@dataclass(slots=True)
class Changes:
    """What a request changed, for the store to write (None when nothing persists)."""

    tasks: set[int] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    assets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.accounts or self.assets)

    def clear(self) -> None:
        self.tasks.clear()
        self.accounts.clear()
        self.assets.clear()


def new_account(email: str, max_jobs: int, credits: int) -> Account:
    return Account(email, max_jobs, _number(0, "user", email, digits=8), credits)


@dataclass(slots=True)
class SimState:
    config: SimConfig
    plan: FaultPlan = field(init=False)
    accounts: dict[str, Account] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    assets: dict[str, Asset] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    changes: Changes | None = None
    _base_clock: float = 0.0
    _base_ms: int = 0

    def __post_init__(self) -> None:
        persistent = self.config.state_dir is not None
        self.plan = FaultPlan(self.config.seed, self.config.faults,
                              changed=set() if persistent else None)
        if persistent:  # the store loads accounts; the wall clock is the epoch
            self.changes = Changes()
            return
        for email, max_jobs in self.config.accounts:
            self.accounts[email] = new_account(email, max_jobs, self.config.credits)
        self._base_clock = self.config.clock()
        self._base_ms = int(time.time() * 1000)

    def touch_task(self, task: Task) -> None:
        if self.changes is not None:
            self.changes.tasks.add(task.id)

    def touch_account(self, account: Account) -> None:
        if self.changes is not None:
            self.changes.accounts.add(account.email)

    # ---- time and status -----------------------------------------------------------

    def now(self) -> float:
        return self.config.clock()

    def epoch_ms(self, clock_time: float) -> int:
        return self._base_ms + int((clock_time - self._base_clock) * 1000)

    def end_time(self, task: Task) -> float:
        share = FAIL_AT if task.doomed else 1.0
        return task.created + share * task.duration

    def processing_time(self, task: Task) -> float:
        return task.created + PROCESSING_FROM * task.duration

    def status_of(self, task: Task, now: float | None = None) -> str:
        now = self.now() if now is None else now
        if now >= self.end_time(task):
            return FAILED if task.doomed else SUCCEED
        return PROCESSING if now >= self.processing_time(task) else SUBMITTED

    # ---- accounts ------------------------------------------------------------------

    def running(self, account: Account, now: float | None = None) -> int:
        now = self.now() if now is None else now
        done = [tid for tid in account.active if self.status_of(self.tasks[tid], now) in FINAL]
        account.active.difference_update(done)
        return len(account.active)

    def account_named(self, email: str | None) -> Account:
        """The account a GET or an upload names; email may be left out with one account."""
        if email is None:
            if len(self.accounts) > 1:
                raise replies.email_required()
            return next(iter(self.accounts.values()))
        if email not in self.accounts:
            raise replies.account_unknown(email)
        return self.accounts[email]

    def account_for(self, order: Order) -> Account:
        """The account a generation POST runs on; 429 when it is full.

        As the seed pages say, `email` may be left out only when one account is
        configured, for a POST as for every other request (a poll without it is
        refused too, so a task could not be followed)."""
        account = self.account_named(order.email)
        limit = order.max_jobs or account.max_jobs
        if self.running(account, self.now()) >= limit:
            raise replies.busy(limit, account.email)
        return account

    # ---- tasks ---------------------------------------------------------------------

    def create_task(self, order: Order, account: Account, digest: str, visit: Visit,
                    origin: str) -> Task:
        now = self.now()
        task_id = self._new_id(digest, visit)
        task = Task(id=task_id, work_id=_number(self.config.seed, "work", task_id),
                    account=account, order=order, body_hash=digest, created=now,
                    create_ms=self.epoch_ms(now), origin=origin, credits=order.credits,
                    duration=self.config.duration_of(_draw(self.config.seed, "duration",
                                                             task_id)),
                    doomed=self.plan.hits("moderation-during", visit, rate_kind="moderation"))
        self.tasks[task_id] = task
        account.active.add(task_id)
        account.peak_running = max(account.peak_running, len(account.active))
        account.credits -= task.credits
        account.spent += task.credits
        self.touch_task(task)
        self.touch_account(account)
        return task

    def _new_id(self, digest: str, visit: Visit) -> int:
        salt = 0
        while (task_id := _number(self.config.seed, "task", digest, visit.number, salt)) \
                in self.tasks:
            salt += 1
        return task_id

    def count_poll(self, task: Task) -> None:
        task.polls += 1
        self.touch_task(task)

    def task_for(self, task_id: int, account: Account) -> Task:
        task = self.tasks.get(task_id)
        if task is None or task.account is not account:
            raise replies.SimError(404, dict(replies.NOT_FOUND))
        return task

    def history(self, account: Account, *, page_size: int, after: int | None,
                before: int | None) -> list[Task]:
        own = [t for t in self.tasks.values() if t.account is account
               and (after is None or t.create_ms > after)
               and (before is None or t.create_ms < before)]
        own.sort(key=lambda t: (t.create_ms, t.created), reverse=True)
        return own[:page_size]

    def unfinished(self) -> list[Task]:
        now = self.now()
        return [self.tasks[tid] for a in self.accounts.values() for tid in sorted(a.active)
                if self.status_of(self.tasks[tid], now) not in FINAL]

    # ---- signed result URLs -------------------------------------------------------------

    def sign(self, task: Task, *, expired: bool) -> str:
        task.issued += 1
        self.touch_task(task)
        sig = hashlib.sha256(f"{self.config.seed}|sig|{task.id}|{task.issued}".encode())\
            .hexdigest()[:20]
        if not expired:
            task.signatures.add(sig)
        return sig

    # ---- uploads ---------------------------------------------------------------------

    def add_asset(self, asset: Asset) -> None:
        self.assets[asset.file_name] = asset
        if self.changes is not None:
            self.changes.assets.add(asset.file_name)

    def asset_for_url(self, url: str) -> Asset | None:
        marker = "/_sim/assets/"
        if marker not in url:
            return None
        return self.assets.get(url.split(marker, 1)[1].split("?", 1)[0])
