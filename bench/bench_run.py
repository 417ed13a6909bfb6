"""Benchmark of `klingflow run` on the simulator: scheduling efficiency and HTTP cost.

Run: python bench/bench_run.py [--steps 200] [--task-seconds 1.0] [--seed 1]

A seeded, mixed 200-step DAG (frames and effects; chains, fan-outs and fan-ins
through `needs`; a third of the steps pinned to an account, the rest on any) runs
over 3 accounts (max_jobs 3, 2, 2) against the simulator served on 127.0.0.1,
through the real CLI (`USEAPI_TOKEN` + `KLINGFLOW_API_BASE`), without faults and
with a fixed task latency. Exits 1 when the makespan misses its target. Printed:

- makespan / lower bound (target <= 1.03). Every task takes the same time T, and a slot
  runs one task at a time, so some slot runs at least ceil(steps / slots) of them: the
  bound is max(critical path, ceil(steps / slots)) x T. The looser steps x T / slots
  is printed beside it.
- HTTP requests per task, per route (from the simulator's /_sim/stats)
- extract_last_frame on a 10 s 1080p clip: time and frames decoded vs frames from
  the last keyframe on (bench_media.bench_last_frame)

The DAG's edges are `needs`, not `${steps.X.last_frame}`: chaining through frames
would make the simulator render clips of at least 300 px, a cost of the
simulator, not of the service; clips are rendered at 64x48 so the measurement is
of klingflow's scheduling.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from klingflow.cli import main as klingflow_main
from klingflow.sim import SimConfig, running_simulator

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = {"a": ("a@example.com", 3), "b": ("b@example.com", 2), "c": ("c@example.com", 2)}
TOKEN = "user:1-bench"
TARGET_RATIO = 1.03
WINDOW = 25  # a step may need any of the 25 steps before it


def generate_steps(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    aliases = list(ACCOUNTS)
    steps: list[dict[str, Any]] = []
    effects = [(e, i) for e in ("rocket", "cartoon", "cyberpunk") for i in ("hero", "moon")]
    every = max(1, count // len(effects))  # each effect request once: a repeat would be cached
    for i in range(count):
        if i % every == every // 2 and effects:
            effect, image = effects.pop()
            step: dict[str, Any] = {"id": f"s{i:03d}", "kind": "effect", "effect": effect,
                                    "image": f"${{inputs.{image}}}"}
        else:
            step = {"id": f"s{i:03d}", "kind": "frames", "model_name": "kling-v3-0",
                    "duration": 3, "image": "${inputs.hero}", "prompt": f"bench shot {i}"}
        if rng.random() < 1 / 3:
            step["account"] = rng.choice(aliases)
        earlier = [f"s{j:03d}" for j in range(max(0, i - WINDOW), i)]
        shape = rng.random()
        if earlier and shape < 0.35:  # a chain link
            step["needs"] = [earlier[-1] if rng.random() < 0.5 else rng.choice(earlier)]
        elif len(earlier) >= 3 and shape < 0.5:  # a fan-in
            step["needs"] = sorted(rng.sample(earlier, 3))
        steps.append(step)
    return steps


def critical_path(steps: list[dict[str, Any]]) -> int:
    """The most steps on one chain of `needs`."""
    depth: dict[str, int] = {}
    for step in steps:
        depth[step["id"]] = 1 + max((depth[n] for n in step.get("needs", [])), default=0)
    return max(depth.values())


def write_pipeline(folder: Path, steps: list[dict[str, Any]]) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    for name in ("hero.png", "moon.png"):
        shutil.copyfile(ROOT / "pipelines" / "images" / name, images / name)
    document = {"version": 1, "name": "bench-run",
                "accounts": {a: {"email": e, "max_jobs": j} for a, (e, j) in ACCOUNTS.items()},
                "inputs": {"hero": "images/hero.png", "moon": "images/moon.png"},
                "prices": [{"model": f"effect:{e}", "mode": "std", "duration": 5, "credits": 10}
                           for e in ("rocket", "cartoon", "cyberpunk")],
                "steps": steps}
    path = folder / "bench-run.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _serve(config: SimConfig, urls: multiprocessing.Queue, stop: Any) -> None:
    with running_simulator(config) as base_url:
        urls.put(base_url)
        stop.wait()


@contextlib.contextmanager
def simulator_process(config: SimConfig) -> Iterator[str]:
    """The simulator in a process of its own, so it does not share the client's GIL
    (as bench_sim does); yields its base URL."""
    urls: multiprocessing.Queue = multiprocessing.Queue()
    stop = multiprocessing.Event()
    process = multiprocessing.Process(target=_serve, args=(config, urls, stop), daemon=True)
    process.start()
    try:
        yield urls.get(timeout=30)
    finally:
        stop.set()
        process.join(timeout=10)


def run_once(folder: Path, path: Path, task_seconds: float,
             poll: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    config = SimConfig(token=TOKEN, accounts=list(ACCOUNTS.values()), task_seconds=task_seconds,
                       clip_size=(64, 48))
    os.environ["KLINGFLOW_HOME"] = str(folder / "home")
    os.environ["USEAPI_TOKEN"] = TOKEN
    with simulator_process(config) as base_url:
        os.environ["KLINGFLOW_API_BASE"] = base_url
        out, err = io.StringIO(), io.StringIO()
        began = time.monotonic()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            _point_progress_at(err)
            code = klingflow_main(["run", str(path), "--out", str(folder / "runs"),
                                   "--poll-interval", str(poll), "--json"])
        wall = time.monotonic() - began
        import httpx

        stats: dict[str, Any] = httpx.get(base_url.split("/v1/")[0] + "/_sim/stats",
                                          timeout=10).json()
    report_steps = json.loads(out.getvalue())["steps"] if code == 0 else []
    if code != 0 or any(s["status"] != "succeeded" for s in report_steps):
        sys.exit(f"the run failed (exit {code}):\n{err.getvalue()[-2000:]}")
    report: dict[str, Any] = json.loads(out.getvalue())
    return report, stats, wall


def _point_progress_at(stream: io.StringIO) -> None:
    """make_progress binds sys.stderr when it is imported; keep its lines out of the figures."""
    from klingflow.progress import make_progress

    make_progress.__defaults__ = (stream,)


def _seconds(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


def print_schedule(steps: list[dict[str, Any]], report: dict[str, Any], wall: float,
                   task_seconds: float) -> bool:
    slots = sum(j for _, j in ACCOUNTS.values())
    chain = critical_path(steps)
    per_slot = math.ceil(len(steps) / slots)  # the most loaded slot runs at least this many
    bound = max(chain, per_slot) * task_seconds
    makespan = _seconds(report["finished_at"]) - _seconds(report["started_at"])
    ratio = makespan / bound
    pinned = sum(1 for s in steps if "account" in s)
    print(f"run: {len(steps)} steps ({sum(s['kind'] == 'effect' for s in steps)} effects, "
          f"{pinned} pinned to an account), 3 accounts, {slots} slots, task latency "
          f"{task_seconds:g} s, no faults")
    print(f"  critical path                 {chain:6d} steps = {chain * task_seconds:7.2f} s")
    print(f"  total task time / slots       {len(steps) * task_seconds / slots:14.2f} s   "
          f"(ratio to it {makespan / (len(steps) * task_seconds / slots):.3f})")
    print(f"  busiest slot: ceil({len(steps)} / {slots}) tasks  {per_slot * task_seconds:9.2f} s")
    print(f"  lower bound                   {bound:14.2f} s")
    print(f"  makespan (report)             {makespan:14.2f} s   (wall {wall:.2f} s with "
          "start-up)")
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER"
    print(f"  makespan / lower bound        {ratio:14.3f}     (target <= {TARGET_RATIO}: "
          f"{verdict})")
    return ratio <= TARGET_RATIO


def print_requests(stats: dict[str, Any]) -> None:
    tasks = stats["tasks"]
    requests: dict[str, int] = stats["requests"]
    total = sum(requests.values())
    print(f"HTTP requests: {total} for {tasks} tasks = {total / tasks:.2f} per task")
    for route, count in sorted(requests.items(), key=lambda kv: -kv[1]):
        print(f"  {route:40s} {count:6d}  ({count / tasks:.2f} per task)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--task-seconds", type=float, default=1.0)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-media", action="store_true",
                        help="leave out the 1080p last-frame figure")
    args = parser.parse_args()
    steps = generate_steps(args.steps, args.seed)
    with tempfile.TemporaryDirectory(prefix="klingflow-bench-run-") as tmp:
        folder = Path(tmp)
        path = write_pipeline(folder / "p", steps)
        report, stats, wall = run_once(folder, path, args.task_seconds, args.poll_interval)
        on_target = print_schedule(steps, report, wall, args.task_seconds)
        print_requests(stats)
        if not args.skip_media:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_media import bench_last_frame

            bench_last_frame(folder)
    if not on_target:
        sys.exit(1)


if __name__ == "__main__":
    main()
