"""Where the simulated service keeps its state: memory, or a sqlite database.

Without a state directory (`MemoryStore`) the state lives and dies with the process,
and a transaction costs nothing. With one (`SqliteStore`), `state.db` holds the
accounts (balances, spent), the uploads (their bytes are files in `assets/`), the
tasks (the ledger: one row each, with its wall-clock creation time), and the fault
plan's visit counters; a later process loads it and carries on as the same service.

Why sqlite (stdlib sqlite3, WAL) rather than an append-only event log:
- Several processes may share one state directory at once (two `klingflow run
  --sim` on one pipeline) and must be ONE service: see each other's tasks, share
  the accounts' slots. sqlite gives cross-process transactions; `BEGIN IMMEDIATE`
  serialises writers, so `maxJobs` holds across processes. A log would need its
  own locking and replay-on-change.
- A commit is atomic: a task, its ledger entry and its account's credits are one
  transaction, so a SIGKILL at any moment leaves all or nothing of it: never a
  ledger entry that cannot be polled, nor a pollable task missing from the ledger.
- WAL with synchronous=NORMAL: a commit reaches the WAL file (the kernel's cache)
  before the reply is sent, so it survives the process being killed (~30 us).
  Transactions that spend credits or store an upload use synchronous=FULL (an
  fsync, ~3 ms) so they also survive a power cut, like the client's journal.

Each process keeps the state in memory (`SimState`) as a cache of the database.
Every request runs in one short transaction that never awaits: it first reads
what changed since this process last looked (a change counter in `meta`, and a
`version` on every row), then runs, then writes what it changed (`SimState.changes`,
`FaultPlan.changed`) under the next version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from klingflow.errors import UsageError
from klingflow.models import PriceKey
from klingflow.sim import replies
from klingflow.sim.rules import Order
from klingflow.sim.state import FINAL, Account, Asset, SimState, Task, new_account

SCHEMA_VERSION = 1
DB_NAME = "state.db"
ASSETS_DIR = "assets"
BUSY_TIMEOUT = 30.0  # seconds a transaction waits for another process's to end

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (email TEXT PRIMARY KEY, max_jobs INTEGER NOT NULL,"
    " user_id INTEGER NOT NULL, credits INTEGER NOT NULL, spent INTEGER NOT NULL,"
    " peak_running INTEGER NOT NULL, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS assets (name TEXT PRIMARY KEY, content_type TEXT NOT NULL,"
    " account TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,"
    " version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks (seq INTEGER PRIMARY KEY, id INTEGER NOT NULL UNIQUE,"
    " record TEXT NOT NULL, polls INTEGER NOT NULL, issued INTEGER NOT NULL, fault TEXT,"
    " signatures TEXT NOT NULL, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS visits (identity TEXT PRIMARY KEY, count INTEGER NOT NULL,"
    " version INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS accounts_version ON accounts (version)",
    "CREATE INDEX IF NOT EXISTS assets_version ON assets (version)",
    "CREATE INDEX IF NOT EXISTS tasks_version ON tasks (version)",
    "CREATE INDEX IF NOT EXISTS visits_version ON visits (version)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0)",
    f"INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', {SCHEMA_VERSION})",
)
_UPSERT_ACCOUNT = (
    "INSERT INTO accounts (email, max_jobs, user_id, credits, spent, peak_running, version)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (email) DO UPDATE SET"
    " max_jobs = excluded.max_jobs, credits = excluded.credits, spent = excluded.spent,"
    " peak_running = excluded.peak_running, version = excluded.version")
_UPSERT_ASSET = (
    "INSERT INTO assets (name, content_type, account, width, height, version)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET version = excluded.version")
_INSERT_TASK = (
    "INSERT INTO tasks (id, record, polls, issued, fault, signatures, version)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)")
_UPDATE_TASK = (
    "UPDATE tasks SET polls = ?, issued = ?, fault = ?, signatures = ?, version = ? WHERE id = ?")
_UPSERT_VISIT = (
    "INSERT INTO visits (identity, count, version) VALUES (?, ?, ?)"
    " ON CONFLICT (identity) DO UPDATE SET count = excluded.count, version = excluded.version")

_NOTHING: AbstractContextManager[None] = nullcontext()


class MemoryStore:
    """No state directory: nothing to read or write; transactions are free."""

    def write(self, *, durable: bool = False) -> AbstractContextManager[None]:
        """A transaction that may change the state (`durable`: fsync'd at commit)."""
        return _NOTHING

    def read(self) -> AbstractContextManager[None]:
        """A transaction that only reads (sees what other processes wrote)."""
        return _NOTHING

    def save_asset(self, name: str, data: bytes) -> Path | None:
        """Keep an upload's bytes; their file, or None to keep them in memory."""
        return None

    def close(self) -> None:
        pass


class SqliteStore(MemoryStore):
    """The state of `SimState` in `directory/state.db` (see the module's docstring)."""

    def __init__(self, directory: Path, state: SimState) -> None:
        assert state.changes is not None and state.plan.changed is not None
        self.directory = directory
        self.state = state
        self.assets_dir = directory / ASSETS_DIR
        self._seen = -1  # the change counter this process's memory matches
        self._stored: set[int] = set()  # ids of the tasks the database has
        self._open = False
        try:
            self.assets_dir.mkdir(parents=True, exist_ok=True)
            self._db = _connect(directory / DB_NAME)
            self._create_schema()
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"simulator state {directory}: cannot use it ({exc}); "
                             "remove the directory to start afresh") from exc
        with self.write(durable=True):
            self._configure_accounts()

    # ---- transactions ------------------------------------------------------------------

    def write(self, *, durable: bool = False) -> AbstractContextManager[None]:
        return self._transaction("BEGIN IMMEDIATE", durable=durable, writes=True)

    def read(self) -> AbstractContextManager[None]:
        return self._transaction("BEGIN", durable=False, writes=False)

    @contextmanager
    def _transaction(self, begin: str, *, durable: bool, writes: bool) -> Iterator[None]:
        if self._open:  # nested: part of the enclosing transaction
            yield
            return
        self._open = True
        try:
            if durable:
                self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute(begin)
            yield from self._run(writes)
        finally:
            self._open = False
            if durable:
                self._db.execute("PRAGMA synchronous = NORMAL")

    def _run(self, writes: bool) -> Iterator[None]:
        try:
            self._sync()
            yield
        except replies.SimError:  # an answer: what the request did until then stands
            self._commit(writes)
            raise
        except BaseException:
            self._abort()
            raise
        self._commit(writes)

    def _commit(self, writes: bool) -> None:
        try:
            if writes:
                self._flush()
            self._db.execute("COMMIT")
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        """Undo the transaction; memory may be ahead of the database: reload it all."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        state = self.state
        state.tasks.clear()
        self._stored.clear()
        state.assets.clear()
        state.plan.seen.clear()
        for account in state.accounts.values():
            account.active.clear()
        self._clear_changes()
        self._seen = -1

    def close(self) -> None:
        self._db.close()

    # ---- reading what changed --------------------------------------------------------------

    def _sync(self) -> None:
        (version,) = self._db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if version == self._seen:
            return
        since = (self._seen,)
        for row in self._db.execute("SELECT email, max_jobs, user_id, credits, spent, "
                                    "peak_running FROM accounts WHERE version > ?", since):
            self._load_account(*row)
        for row in self._db.execute("SELECT name, content_type, account, width, height "
                                    "FROM assets WHERE version > ?", since):
            self._load_asset(*row)
        for row in self._db.execute("SELECT record, polls, issued, fault, signatures FROM tasks "
                                    "WHERE version > ? ORDER BY seq", since):
            self._load_task(*row)
        for identity, count in self._db.execute("SELECT identity, count FROM visits "
                                                "WHERE version > ?", since):
            self.state.plan.seen[identity] = count
        self._seen = version

    def _load_account(self, email: str, max_jobs: int, user_id: int, credits: int, spent: int,
                      peak_running: int) -> None:
        account = self.state.accounts.get(email)
        if account is None:
            account = self.state.accounts[email] = Account(email, max_jobs, user_id, credits)
        account.max_jobs, account.credits = max_jobs, credits
        account.spent, account.peak_running = spent, peak_running

    def _load_asset(self, name: str, content_type: str, account: str, width: int,
                    height: int) -> None:
        self.state.assets[name] = Asset(name, content_type, b"", account, width, height,
                                        path=self.assets_dir / name)

    def _load_task(self, text: str, polls: int, issued: int, fault: str | None,
                   signatures: str) -> None:
        """A task another process created, or changed (its polls and signatures)."""
        record = json.loads(text)
        task = self.state.tasks.get(record["id"])
        if task is None:
            task = task_from_record(record, self.state.accounts[record["account"]])
            self.state.tasks[task.id] = task
            self._stored.add(task.id)
            if self.state.status_of(task) not in FINAL:
                task.account.active.add(task.id)
        task.polls, task.issued, task.fault = polls, issued, fault
        task.signatures = set(json.loads(signatures))

    # ---- writing what changed -------------------------------------------------------------

    def _flush(self) -> None:
        state, changes, visits = self.state, self.state.changes, self.state.plan.changed
        assert changes is not None and visits is not None
        if not changes and not visits:
            return
        version = self._seen + 1
        if changes.accounts:
            self._db.executemany(_UPSERT_ACCOUNT, [
                (a.email, a.max_jobs, a.user_id, a.credits, a.spent, a.peak_running, version)
                for a in map(state.accounts.__getitem__, changes.accounts)])
        if changes.assets:
            self._db.executemany(_UPSERT_ASSET, [
                (a.file_name, a.content_type, a.account, a.width, a.height, version)
                for a in map(state.assets.__getitem__, changes.assets)])
        for task in map(state.tasks.__getitem__, sorted(changes.tasks)):
            self._write_task(task, version)
        if visits:
            self._db.executemany(_UPSERT_VISIT, [
                (identity, state.plan.seen[identity], version) for identity in visits])
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (version,))
        self._clear_changes()
        self._seen = version

    def _write_task(self, task: Task, version: int) -> None:
        """A new task in whole; a known one's changing fields only (polls cost little)."""
        signatures = json.dumps(sorted(task.signatures))
        if task.id in self._stored:
            self._db.execute(_UPDATE_TASK, (task.polls, task.issued, task.fault, signatures,
                                            version, task.id))
            return
        self._db.execute(_INSERT_TASK, (task.id, task_record(task), task.polls, task.issued,
                                        task.fault, signatures, version))
        self._stored.add(task.id)

    def _clear_changes(self) -> None:
        assert self.state.changes is not None and self.state.plan.changed is not None
        self.state.changes.clear()
        self.state.plan.changed.clear()

    def save_asset(self, name: str, data: bytes) -> Path:
        """Write an upload's file (content-addressed, so rewriting it is harmless),
        fsync'd before its row is committed: a row never names a missing file."""
        path = self.assets_dir / name
        if not path.exists():
            partial = path.with_name(f".{name}.{os.getpid()}.part")
            with partial.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(path)
        return path

    # ---- set-up --------------------------------------------------------------------------

    def _create_schema(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                self._db.execute(statement)
            (schema,) = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema'").fetchone()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if schema != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema {schema}, this klingflow reads {SCHEMA_VERSION}")

    def _configure_accounts(self) -> None:
        """The configured accounts join those the service already has (balances kept);
        the configuration sets their maxJobs, as `POST /accounts` would."""
        config = self.state.config
        for email, max_jobs in config.accounts:
            account = self.state.accounts.get(email)
            if account is None:
                account = new_account(email, max_jobs, config.credits)
                self.state.accounts[email] = account
            elif account.max_jobs == max_jobs:
                continue
            account.max_jobs = max_jobs
            self.state.touch_account(account)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                         check_same_thread=False)
    (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise sqlite3.DatabaseError(f"journal mode {mode}, not wal")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


# ---- tasks as JSON -------------------------------------------------------------------------


def task_record(task: Task) -> str:
    """What never changes about a task, as JSON (polls and signatures have columns)."""
    record = {"id": task.id, "work_id": task.work_id, "account": task.account.email,
              "order": dataclasses.asdict(task.order), "body_hash": task.body_hash,
              "created": task.created, "create_ms": task.create_ms, "origin": task.origin,
              "credits": task.credits, "duration": task.duration, "doomed": task.doomed}
    return json.dumps(record, separators=(",", ":"))


def task_from_record(record: dict[str, Any], account: Account) -> Task:
    return Task(id=record["id"], work_id=record["work_id"], account=account,
                order=order_from_record(record["order"]), body_hash=record["body_hash"],
                created=record["created"], create_ms=record["create_ms"],
                origin=record["origin"], credits=record["credits"],
                duration=record["duration"], doomed=record["doomed"])


def order_from_record(record: dict[str, Any]) -> Order:
    return Order(**{**record, "ignored": tuple(record["ignored"]),
                    "arguments": tuple((name, value) for name, value in record["arguments"]),
                    "price_key": PriceKey(**record["price_key"])})


def open_store(state: SimState) -> MemoryStore:
    """The store for `state`'s configuration: its state directory's, or memory."""
    directory = state.config.state_dir
    return MemoryStore() if directory is None else SqliteStore(Path(directory), state)
