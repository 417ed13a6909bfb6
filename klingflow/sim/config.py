"""The simulator's configuration: accounts, token, seed, fault rates, time scale."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import httpx

from klingflow.errors import UsageError
from klingflow.sim.catalogue import CATALOGUE, SimEffect

DEFAULT_ACCOUNT = ("sim@example.com", 3)
CLIP_SIZE = (400, 304)
"""Width, height of rendered clips: small to render fast, yet at least 300 px on each
side, so a clip's last frame can be uploaded again (POST /assets wants >= 300 px)."""

FAULT_KINDS = ("429", "500", "moderation", "reset", "slow", "expire")
"""What `--faults` may name; each takes a probability from 0 to 1."""

MAX_SPREAD = 1.0
"""The widest `--task-spread`: at 1, one task in a thousand takes 22 times the median."""

UrlPredicate = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Faults:
    """Probability of each injected fault (see klingflow.sim.faults for semantics)."""

    rates: dict[str, float] = field(default_factory=dict)

    def rate(self, kind: str) -> float:
        return self.rates.get(kind, 0.0)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """`429=0.1,500=0.05,...` -> Faults; raises ValueError naming the bad part."""
        rates: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            kind, sep, value = part.partition("=")
            kind = kind.strip()
            if not sep or kind not in FAULT_KINDS:
                raise ValueError(f"fault {part!r}: expected KIND=RATE with KIND one of "
                                 f"{', '.join(FAULT_KINDS)}")
            try:
                rate = float(value)
            except ValueError:
                rate = math.nan
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault {part!r}: the rate must be a number from 0 to 1")
            rates[kind] = rate
        return cls(rates)


MAX_JOBS_RANGE = (1, 50)


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")  # as the pipeline schema's account email


def parse_account(text: str) -> tuple[str, int]:
    """`email:maxJobs` (maxJobs defaults to 1) -> (email, max_jobs); ValueError if bad."""
    email, sep, jobs = text.rpartition(":")
    if not sep:
        email, jobs = text, "1"
    low, high = MAX_JOBS_RANGE
    if not _EMAIL.fullmatch(email.strip()) or not jobs.strip().isdigit() \
            or not low <= int(jobs) <= high:
        raise ValueError(f"account {text!r}: expected EMAIL:MAX_JOBS with MAX_JOBS from "
                         f"{low} to {high}, e.g. a@example.com:3")
    return email.strip(), int(jobs)


@dataclass(slots=True)
class SimConfig:
    """Everything the simulated service needs; every field has a test-friendly default.

    `accept_urls` names external https images the sim treats as existing (a set of
    URLs or a predicate); they are rendered as a pattern derived from the URL hash.
    `callback_transport` lets tests deliver replyUrl callbacks in-process.
    `state_dir` makes the service durable (klingflow.sim.persist): a later process, or
    another one at the same time, carries on as the same service. Its clock must be
    the wall clock (time.time, the default then), since task times outlive processes.
    `effects` is the service's effects catalogue; `account_effects` gives an account
    (by email) a catalogue of its own, as Kling's may differ between accounts.
    """

    token: str = "test-token"
    accounts: list[tuple[str, int]] = field(default_factory=lambda: [DEFAULT_ACCOUNT])
    seed: int = 0
    faults: Faults = field(default_factory=Faults)
    speed: float = 1.0
    task_seconds: float = 2.0
    task_spread: float = 0.0  # sigma of log-normal task durations (median task_seconds)
    accept_urls: set[str] | UrlPredicate = field(default_factory=set)
    media_dir: Path | None = None
    clock: Callable[[], float] = time.monotonic
    credits: int = 100_000
    slow_seconds: float = 3.0
    clip_size: tuple[int, int] = CLIP_SIZE
    callback_transport: httpx.AsyncBaseTransport | None = None
    state_dir: Path | None = None
    cheap_render: bool = False  # one shared low-rate clip per duration (benchmarks)
    effects: tuple[SimEffect, ...] = CATALOGUE
    account_effects: dict[str, tuple[SimEffect, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state_dir is not None and self.clock is time.monotonic:
            self.clock = time.time

    def accepts_url(self, url: str) -> bool:
        if callable(self.accept_urls):
            return bool(self.accept_urls(url))
        return url in self.accept_urls

    def effects_for(self, email: str | None) -> tuple[SimEffect, ...]:
        """The catalogue of the account `email`; the service's own without one."""
        return self.account_effects.get(email or "", self.effects)

    @property
    def task_duration(self) -> float:
        """Clock seconds from submit to the end of a task (the median one, with a spread)."""
        return self.task_seconds / self.speed

    def duration_of(self, draw: float) -> float:
        """Clock seconds from submit to the end of the task with `draw` in (0, 1): all
        `task_duration` without a spread; else spread log-normally around it, like
        real tasks (bench/bench_poll.py takes sigma 0.45 for Kling's)."""
        if not self.task_spread:
            return self.task_duration
        return self.task_duration * math.exp(self.task_spread * NormalDist().inv_cdf(draw))


def config_from_cli(*, token: str, accounts: Iterable[str], seed: int, faults: str,
                    speed: float, state_dir: Path | None = None, task_seconds: float = 2.0,
                    slow_seconds: float = 3.0, cheap_render: bool = False,
                    task_spread: float = 0.0) -> SimConfig:
    """A SimConfig from `klingflow sim serve` options; UsageError names a bad one."""
    try:
        parsed = [parse_account(a) for a in accounts] or [DEFAULT_ACCOUNT]
        parsed_faults = Faults.parse(faults)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    for name, value in (("--speed", speed), ("--task-seconds", task_seconds)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be above 0, got {value}")
    if not (math.isfinite(slow_seconds) and slow_seconds >= 0):
        raise UsageError(f"--slow-seconds must be 0 or more, got {slow_seconds}")
    if not 0 <= task_spread <= MAX_SPREAD:
        raise UsageError(f"--task-spread must be from 0 to {MAX_SPREAD:g}, got {task_spread}")
    return SimConfig(token=token, accounts=parsed, seed=seed, faults=parsed_faults, speed=speed,
                     state_dir=state_dir, task_seconds=task_seconds, slow_seconds=slow_seconds,
                     cheap_render=cheap_render, task_spread=task_spread)
