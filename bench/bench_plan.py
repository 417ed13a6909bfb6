"""Benchmark: load and plan a generated 10,000-step pipeline.

Run from the repository root: `python bench/bench_plan.py [--steps N] [--repeat R]`.
Targets on a 2-core machine: load_pipeline + build_plan, called one after the other,
under 1 s (best of 3) and peak memory under 200 MB. Prints per-phase figures so a slow
phase is easy to find: libyaml's parse events (the floor), load_pipeline, build_plan,
Plan.to_json, format_plan.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from klingflow.plan import Plan, build_plan  # noqa: E402
from klingflow.report import format_plan  # noqa: E402
from klingflow.spec import load_pipeline  # noqa: E402

TIME_TARGET_S = 1.0  # issue 13
MEMORY_TARGET_MB = 200.0
IMAGES = ("hero.png", "skyline.jpg", "moon.png", "forest.jpg")
EFFECTS = ("rocket", "cartoon", "cyberpunk", "expansion")
FRAMES = (  # model, extra fields: a mix of std/pro, end frames and pro-only models
    ("kling-v2-1", "    negative_prompt: text, watermark\n"),
    ("kling-v2-6", "    mode: pro\n"),
    ("kling-v1-6", "    image_tail: ${inputs.skyline}\n    cfg_scale: 0.4\n"),
    ("kling-v2-5", ""),
)
CHAIN = 10  # one effect, then frames chained on last frames
MATRIX_PROMPTS = 10  # a matrix step expands to MATRIX_PROMPTS x len(IMAGES) steps


def header() -> str:
    return """\
# yaml-language-server: $schema=../schemas/pipeline.schema.json
version: 1
name: bench
description: A generated pipeline for the planner benchmark.
accounts:
  main: {email: main@example.com, max_jobs: 5}
  backup: {email: backup@example.com, max_jobs: 3}
defaults:
  account: main
  duration: 5
inputs:
  hero: images/hero.png
  skyline: images/skyline.jpg
  moon: images/moon.png
  forest: images/forest.jpg
  harbor: https://example.com/harbor.jpg
vars:
  look: cinematic, golden hour
limits:
  max_jobs: 8
prices:
""" + "".join(f"  - {{model: \"effect:{e}\", mode: std, duration: 5, credits: 20}}\n"
              for e in EFFECTS) + "steps:\n"


def matrix_step(n: int) -> str:
    prompts = "".join(f"        - Variation {i} of the scene, ${{vars.look}}\n"
                      for i in range(MATRIX_PROMPTS))
    images = "".join(f'        - "${{inputs.{Path(i).stem}}}"\n' for i in IMAGES)
    return (f"  - id: grid-{n}\n    kind: frames\n    matrix:\n      prompt:\n{prompts}"
            f"      image:\n{images}    prompt: ${{matrix.prompt}}\n"
            "    image: ${matrix.image}\n")


def chain(c: int) -> Iterator[str]:
    account = "main" if c % 2 == 0 else "backup"
    image = Path(IMAGES[c % len(IMAGES)]).stem
    yield (f"  - id: c{c}-0\n    kind: effect\n    account: {account}\n"
           f"    effect: {EFFECTS[c % len(EFFECTS)]}\n    image: ${{inputs.{image}}}\n")
    for k in range(1, CHAIN):
        model, extra = FRAMES[(c + k) % len(FRAMES)]
        yield (f"  - id: c{c}-{k}\n    kind: frames\n    account: {account}\n"
               f"    model_name: {model}\n    image: ${{steps.c{c}-{k - 1}.last_frame}}\n"
               f"    prompt: Shot {k} of chain {c}, ${{vars.look}}\n"
               f"    duration: {10 if k % 3 == 0 else 5}\n{extra}")


def pipeline_text(steps: int) -> str:
    matrices = 2
    chains = (steps - matrices * MATRIX_PROMPTS * len(IMAGES)) // CHAIN
    parts = [header(), matrix_step(0)]
    for c in range(chains):
        parts.extend(chain(c))
        if c == chains // 2:
            parts.append(matrix_step(1))
    return "".join(parts)


def write_pipeline(directory: Path, steps: int) -> Path:
    shutil.copytree(ROOT / "pipelines" / "images", directory / "images",
                    ignore=shutil.ignore_patterns("*.py"))
    path = directory / "bench.yaml"
    path.write_text(pipeline_text(steps), "utf-8")
    return path


Timing = tuple[float, float]  # best wall-clock seconds, best CPU seconds


def best_of(repeat: int, func: Callable[[], object]) -> tuple[Timing, object]:
    """The best wall and CPU times of `repeat` calls (CPU time is steadier on a busy box)."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        result = None  # not kept through the next call, whose collections would scan it
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = func()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return (wall, cpu), result


def max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _load_and_plan(path: Path, traced: bool, queue: multiprocessing.Queue[float]) -> None:
    if traced:
        tracemalloc.start()
    build_plan(load_pipeline(path))
    queue.put(tracemalloc.get_traced_memory()[1] / 2**20 if traced else max_rss_mb())


def measured_in_child(path: Path, *, traced: bool) -> float:
    """Peak memory of load + plan in a fresh forked process (its RSS or tracemalloc's peak)."""
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[float] = context.Queue()
    child = context.Process(target=_load_and_plan, args=(path, traced, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


def yaml_phases(path: Path, repeat: int) -> list[tuple[str, Timing]]:
    """The floor of any loader that keeps positions: libyaml's parser events alone, read
    with the cyclic GC off, as load_pipeline reads them."""
    text = path.read_text("utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    label = f"yaml.parse events, {loader.__name__} (floor)"

    def events() -> None:
        parser = loader(text)
        try:
            while parser.get_event() is not None:
                pass
        finally:
            parser.dispose()

    gc.disable()
    try:
        return [(label, best_of(repeat, events)[0])]
    finally:
        gc.enable()


def report(rows: list[tuple[str, Timing]], total: Timing,
           memory: tuple[float, float, float]) -> bool:
    base, peak, rss = memory
    print(f"  {'phase':<40} {'wall':>8}    {'cpu':>8}")
    for label, (wall, cpu) in rows:
        print(f"  {label:<40} {wall * 1000:8.0f} ms {cpu * 1000:8.0f} ms")
    time_ok, memory_ok = total[0] < TIME_TARGET_S, max(peak, rss) < MEMORY_TARGET_MB
    print(f"  {'load_pipeline + build_plan':<40} {total[0] * 1000:8.0f} ms {total[1] * 1000:8.0f} ms"
          f"  (target < {TIME_TARGET_S:.0f} s wall: {'ok' if time_ok else 'MISSED'})")
    print(f"  {'RSS after imports, before loading':<40} {base:8.1f} MB")
    print(f"  {'peak traced memory (load + plan)':<40} {peak:8.1f} MB")
    print(f"  {'max RSS of a process loading+planning':<40} {rss:8.1f} MB  "
          f"(target < {MEMORY_TARGET_MB:.0f} MB: {'ok' if memory_ok else 'MISSED'})")
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs (a busy machine inflates every figure)")
    return time_ok and memory_ok


def run(steps: int, repeat: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="klingflow-bench-") as tmp:
        path = write_pipeline(Path(tmp), steps)
        print(f"bench_plan: {path.stat().st_size / 2**20:.1f} MB of YAML, best of {repeat}")
        memory = (max_rss_mb(), measured_in_child(path, traced=True),
                  measured_in_child(path, traced=False))
        rows = yaml_phases(path, repeat)
        # The target's figure: both in one go, as `klingflow plan` does them, in a heap
        # that holds no other pipeline. The phases below are timed apart, each after a
        # gc.collect(), so they leave out the collector's first passes over the pipeline
        # just made; this does not.
        total, _ = best_of(repeat, lambda: build_plan(load_pipeline(path)))
        load_t, pipeline = best_of(repeat, lambda: load_pipeline(path))
        plan_t, plan = best_of(repeat, lambda: build_plan(pipeline))  # type: ignore[arg-type]
        assert isinstance(plan, Plan)
        print(f"  {len(plan.steps)} steps planned, {plan.credits} credits known, "
              f"{len(plan.unknown)} unknown")
        rows += [("load_pipeline", load_t), ("build_plan", plan_t),
                 ("Plan.to_json", best_of(repeat, plan.to_json)[0]),
                 ("format_plan", best_of(repeat, lambda: format_plan(plan))[0])]
        return report(rows, total, memory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    return 0 if run(args.steps, args.repeat) else 1


if __name__ == "__main__":
    sys.exit(main())
