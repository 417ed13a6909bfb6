"""Polling that learns against fixed 15 s polling, on task durations spread like real ones.

Kling tasks take minutes, with a long tail. This draws durations from a log-normal
(median 3 min, sigma 0.45) with 5% of tasks three times slower, feeds them in order
to klingflow's PollPolicy with the expected duration learnt the way a run learns it
(the median of the last 20 observed, each observed at detection), and prints, per
policy, the polls per task and the mean and 95th-percentile detection delay (the
service finishing to klingflow noticing). A last row gives the service an ETA that
is off by up to 20% (the real etaTime's unit and accuracy are undocumented).
Pure arithmetic: no service, no sleeping.

    python bench/bench_poll.py [--tasks 5000] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics

from klingflow.policy import PollPolicy
from klingflow.settings import REAL_POLL_FLOOR

FIXED_15 = PollPolicy(floor=15.0, ceiling=15.0, blind=15.0)
LEARNING = PollPolicy.scaled(REAL_POLL_FLOOR)

KEPT = 20


def durations(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    drawn = []
    for _ in range(count):
        seconds = rng.lognormvariate(math.log(180.0), 0.45)
        drawn.append(seconds * 3 if rng.random() < 0.05 else seconds)
    return drawn


def watch(policy: PollPolicy, duration: float, expected: float | None,
          eta_end: float | None) -> tuple[int, float]:
    """(polls, detection delay) of one task under `policy`; an ETA is known after a poll."""
    elapsed, polls, known = 0.0, 0, None
    while True:
        elapsed += policy.next_wait(elapsed, expected, known)
        polls += 1
        if elapsed >= duration:
            return polls, elapsed - duration
        known = eta_end


def measure(policy: PollPolicy, tasks: list[float], *, learn: bool,
            eta_error: float | None = None) -> dict[str, float]:
    rng = random.Random(7)
    seen: list[float] = []
    polls, delays = [], []
    for duration in tasks:
        expected = statistics.median(seen[-KEPT:]) if learn and seen else None
        eta_end = None if eta_error is None else \
            duration * rng.uniform(1 - eta_error, 1 + eta_error)
        count, delay = watch(policy, duration, expected, eta_end)
        polls.append(count)
        delays.append(delay)
        seen.append(duration + delay)
    delays.sort()
    return {"polls": statistics.mean(polls), "mean_delay": statistics.mean(delays),
            "p95_delay": delays[int(0.95 * len(delays))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tasks = durations(args.tasks, args.seed)
    print(f"{args.tasks} tasks: median {statistics.median(tasks):.0f} s, "
          f"p95 {sorted(tasks)[int(0.95 * len(tasks))]:.0f} s, max {max(tasks):.0f} s")
    rows = [("fixed 15 s", measure(FIXED_15, tasks, learn=False)),
            ("learning", measure(LEARNING, tasks, learn=True)),
            ("no history yet", measure(LEARNING, tasks, learn=False)),
            ("learning + ETA (+-20%)", measure(LEARNING, tasks, learn=True, eta_error=0.2))]
    print(f"{'policy':<24}{'polls/task':>12}{'mean delay':>13}{'p95 delay':>12}")
    for name, row in rows:
        print(f"{name:<24}{row['polls']:>12.1f}{row['mean_delay']:>12.1f}s"
              f"{row['p95_delay']:>11.1f}s")


if __name__ == "__main__":
    main()
