"""Does one process carry the provider's ceiling? 50 accounts x 50 jobs = 2,500 tasks in flight.

Run: python bench/bench_scale.py [--steps 500,1000,5000] [--task-seconds 60] [--spread 0]

For each size, a pipeline of that many steps (every second step starts from the
previous one's last frame, so half the steps upload a frame) runs over 50 accounts
with max_jobs 50 through the real CLI, in a process of its own, against the
simulator served by `klingflow sim serve --cheap-render` in another process (one
shared 2 fps clip per duration, so the simulator's rendering is not what is
measured). Tasks take --task-seconds: all of them (the worst case: every task of a
wave ends at once), or with --spread SIGMA, durations spread log-normally around it
as real ones are (`sim serve --task-spread`; 0.45 is about Kling's). Each size runs
with a KLINGFLOW_HOME of its own (the sizes share their first steps' requests, which
another size's cache would serve), so each run learns task durations as it goes.

Printed per size: makespan / lower bound (no schedule ends sooner: the longest chain
of two tasks, the work spread evenly over the 2,500 slots, and the ceil(steps /
2,500) shortest tasks, which some slot must run one after another; the durations
are the simulator's), how long after the service ended a task its step was
collected (mean and 95th percentile),
klingflow's CPU seconds per step (user + system, from wait4; and of it, what taking
one clip's two frames costs, timed apart), its peak RSS, the simulator's CPU seconds
per step (it runs on the same machine), and HTTP requests per task by route.
Targets: ratio <= 1.05 at 2,500 tasks in flight; < 5 ms CPU per step; memory
growing linearly and under 500 MB at 5,000 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from klingflow import media
from klingflow.report.load import find_run_dir, load_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_media import cpu_ms

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "user:1-bench-scale"
ACCOUNTS = 50
JOBS = 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Simulator:
    base: str
    pid: int

    def cpu_seconds(self) -> float:
        """The simulator process's user + system CPU so far (Linux: /proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def simulator(task_seconds: float, spread: float) -> Iterator[Simulator]:
    port = free_port()
    accounts = [arg for n in range(ACCOUNTS) for arg in ("--account", f"a{n}@bench.test:{JOBS}")]
    process = subprocess.Popen(
        [sys.executable, "-m", "klingflow", "sim", "serve", "--port", str(port), "--token",
         TOKEN, "--task-seconds", str(task_seconds), "--task-spread", str(spread),
         "--cheap-render", *accounts],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1/kling"
    try:
        wait_until_up(base)
        yield Simulator(base, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_up(base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base.split("/v1/")[0] + "/_sim/stats", timeout=5)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def write_pipeline(folder: Path, steps: int, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    shutil.copyfile(ROOT / "pipelines" / "images" / "hero.png", folder / "images" / "hero.png")
    document: dict[str, Any] = {
        "version": 1, "name": name,
        "accounts": {f"a{n}": {"email": f"a{n}@bench.test", "max_jobs": JOBS}
                     for n in range(ACCOUNTS)},
        "inputs": {"hero": "images/hero.png"},
        "steps": []}
    for i in range(steps):
        image = "${inputs.hero}" if i % 2 == 0 else f"${{steps.s{i - 1}.last_frame}}"
        document["steps"].append({"id": f"s{i}", "kind": "frames", "model_name": "kling-v2-1",
                                  "duration": 5, "image": image, "prompt": f"shot {i}"})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def run(path: Path, home: Path, base: str, out: Path) -> tuple[dict[str, Any], Cpu, float]:
    """(report, its CPU user and system seconds, peak RSS in MB) of one `klingflow run`.

    The report is read from the run directory, not from `--json` on a pipe: a signal,
    or a profiler's ptrace stop, that interrupts a large write to a full pipe makes
    CPython drop the rest of it (py-spy on this benchmark got the first 64 KiB)."""
    env = {**os.environ, "USEAPI_TOKEN": TOKEN, "KLINGFLOW_API_BASE": base,
           "KLINGFLOW_HOME": str(home)}
    with (out.parent / f"{path.stem}.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "klingflow", "run", str(path),
                                    "--out", str(out)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the run failed; see {out.parent / f'{path.stem}.log'}")
    return load_report(find_run_dir(out)), Cpu(usage.ru_utime, usage.ru_stime), \
        usage.ru_maxrss / 1024


@dataclass(frozen=True)
class Cpu:
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


def frames_cpu_ms(report: dict[str, Any]) -> float:
    """CPU milliseconds that taking the first and last frames of one of the run's clips
    costs, timed apart in this process: the part of a step's CPU that is media work."""
    video = Path(report["run_dir"]) / next(step["outputs"]["video"]["path"]
                                          for step in report["steps"] if step["outputs"])
    with tempfile.TemporaryDirectory() as tmp:
        first, last = Path(tmp) / "first.png", Path(tmp) / "last.png"
        return cpu_ms(lambda: media.extract_frames(video, first, last), 20)


def seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def lower_bound(durations: dict[str, float]) -> float:
    """No schedule of these steps' tasks (by step id) ends sooner: the longest chain (a
    step and the next one, which starts from its last frame), the work spread evenly
    over the slots, and the ceil(steps / slots) shortest tasks, which some slot runs
    one after another."""
    slots, steps = ACCOUNTS * JOBS, len(durations)
    chain = max(durations[f"s{i}"] + durations.get(f"s{i + 1}", 0.0) for i in range(0, steps, 2))
    busiest = sum(sorted(durations.values())[:math.ceil(steps / slots)])
    return max(chain, sum(durations.values()) / slots, busiest)


def service_times(report: dict[str, Any], base: str) -> tuple[dict[str, float], list[float]]:
    """Each step's task duration at the service, and how long after the service ended
    it the step was collected (seconds), from the simulator's ledger."""
    ledger = {e["task_id"]: e for e in
              httpx.get(base.split("/v1/")[0] + "/_sim/ledger", timeout=120).json()}
    durations, lags = {}, []
    for step in report["steps"]:
        task = ledger[step["task_id"]]
        durations[step["id"]] = task["runs_ms"] / 1000
        lags.append(seconds(step["finished_at"]) - (task["created"] + task["runs_ms"]) / 1000)
    return durations, lags


def sending(report: dict[str, Any]) -> tuple[float, float, float]:
    """(first, last, the last chain's): when the steps that wait for nothing were sent,
    in seconds after the run started, and when the first step of the chain that ended
    the run was. The lower bound starts every such step at 0."""
    start, steps = seconds(report["started_at"]), {s["id"]: s for s in report["steps"]}
    sent = sorted(seconds(s["submitted_at"]) - start for s in report["steps"]
                  if not s["needs"] and s["submitted_at"])
    step = max(report["steps"], key=lambda s: seconds(s["finished_at"]))
    while step["needs"]:
        step = steps[step["needs"][0]]
    return sent[0], sent[-1], seconds(step["submitted_at"]) - start


def measure(steps: int, folder: Path, sim: Simulator) -> None:
    base = sim.base
    path = write_pipeline(folder / "p", steps, f"scale-{steps}")
    stats_before = httpx.get(base.split("/v1/")[0] + "/_sim/stats", timeout=30).json()
    sim_before, began = sim.cpu_seconds(), time.monotonic()
    report, cpu, rss = run(path, folder / "home", base, folder / "runs")
    wall, sim_cpu = time.monotonic() - began, sim.cpu_seconds() - sim_before
    stats = httpx.get(base.split("/v1/")[0] + "/_sim/stats", timeout=30).json()
    makespan = seconds(report["finished_at"]) - seconds(report["started_at"])
    durations, lags = service_times(report, base)
    bound = lower_bound(durations)
    done = sum(s["status"] == "succeeded" for s in report["steps"])
    per_step = cpu.total / steps * 1000
    print(f"{steps:>6} steps  {done:>6} succeeded  makespan {makespan:7.1f} s  "
          f"bound {bound:6.1f} s  ratio {makespan / bound:5.3f}  "
          f"CPU {cpu.total:6.1f} s = {per_step:5.2f} ms/step  peak RSS {rss:6.1f} MB  "
          f"(wall {wall:.1f} s)")
    lags.sort()
    print(f"        collected after the service ended: mean {statistics.mean(lags):.2f} s, "
          f"p95 {lags[int(0.95 * (len(lags) - 1))]:.2f} s; tasks took "
          f"{min(durations.values()):.0f} to {max(durations.values()):.0f} s")
    first, last, chain = sending(report)
    print(f"        steps that wait for nothing sent from {first:.1f} to {last:.1f} s after the "
          f"start; the chain that ended the run, at {chain:.1f} s")
    print(f"        CPU per step: user {cpu.user / steps * 1000:.2f} ms, system "
          f"{cpu.system / steps * 1000:.2f} ms; of it, taking the clip's two frames "
          f"{frames_cpu_ms(report):.2f} ms (timed apart)")
    print(f"        the simulator's CPU per step: {sim_cpu / steps * 1000:.2f} ms (it shares "
          f"this machine's {os.cpu_count()} cores with klingflow)")
    requests = {k: v - stats_before["requests"].get(k, 0) for k, v in stats["requests"].items()}
    tasks = stats["tasks"] - stats_before["tasks"]
    print("        requests per task: " + ", ".join(
        f"{route} {count / tasks:.2f}" for route, count in
        sorted(requests.items(), key=lambda kv: -kv[1]) if count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="500,1000,5000",
                        help="comma-separated pipeline sizes, run in this order")
    parser.add_argument("--task-seconds", type=float, default=60.0)
    parser.add_argument("--spread", type=float, default=0.0, metavar="SIGMA",
                        help="spread task durations log-normally (0.45: like Kling's)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working folder (a benchmark that fails or is stopped "
                             "always keeps it)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="klingflow-bench-scale-"))
    spread = f" (median; spread {args.spread:g})" if args.spread else ""
    print(f"{ACCOUNTS} accounts x {JOBS} jobs, tasks of {args.task_seconds:g} s{spread}, "
          f"working in {folder}")
    with simulator(args.task_seconds, args.spread) as sim:
        for size in (int(s) for s in args.steps.split(",")):
            measure(size, folder / str(size), sim)  # an error or Ctrl-C keeps `folder`
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
