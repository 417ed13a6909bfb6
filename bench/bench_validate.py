"""Benchmark: validation of hostile files, and the cost of judging effects by a catalogue.

Run from the repository root: `python bench/bench_validate.py`. Each case is loaded in a
fresh forked process, which reports its wall time and its max RSS:

- the 12-line file of issue 9 (six matrix keys of 20 values: 64,000,000 steps), and six
  keys of 10 values (1,000,000): refused from the value counts, before expanding;
- three matrices of 4,000 steps (12,000 in all): refused at the third;
- an input PNG whose header says 20000 x 20000: refused from its header;
- bench_plan's 10,000-step pipeline without a catalogue, then judged by the simulator's.

Targets (2-core machine): each hostile file answered in under 1 s and 100 MB; judging
effects by a catalogue adds under 10% to loading the 10,000-step pipeline.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_plan import write_pipeline  # noqa: E402

from klingflow.catalogue import FetchedCatalogues  # noqa: E402
from klingflow.errors import PipelineError  # noqa: E402
from klingflow.spec import load_pipeline  # noqa: E402

HOSTILE_SECONDS, HOSTILE_MB, CATALOGUE_SHARE = 1.0, 100.0, 0.10
URL = "https://x.test/a.png"


def matrix_file(folder: Path, keys: int, values: int) -> Path:
    listed = ", ".join(f"k{n}: [{', '.join(map(str, range(values)))}]" for n in range(keys))
    path = folder / f"matrix-{keys}x{values}.yaml"
    path.write_text(f"version: 1\nname: bomb\nsteps:\n  - id: big\n    kind: frames\n"
                    f"    matrix: {{{listed}}}\n    image: {URL}\n    prompt: ${{matrix.k0}}\n")
    return path


def many_matrices(folder: Path) -> Path:
    values = ", ".join(map(str, range(100)))
    steps = "".join(f"  - {{id: m{n}, kind: frames, image: {URL}, prompt: '${{matrix.p}}', "
                    f"matrix: {{p: [{values}], q: [{', '.join(map(str, range(40)))}]}}}}\n"
                    for n in range(3))
    path = folder / "many.yaml"
    path.write_text(f"version: 1\nname: many\nsteps:\n{steps}")
    return path


def huge_png(folder: Path) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                      + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    path = folder / "huge.yaml"
    path.write_text("version: 1\nname: huge\ninputs: {hero: huge.png}\n"
                    "steps:\n  - {id: a, kind: frames, image: '${inputs.hero}'}\n")
    return path


def sim_catalogue() -> FetchedCatalogues:
    sys.path.insert(0, str(ROOT / "tests"))
    from effecthelpers import sim_catalogues  # the simulator's, fetched as the service's is

    emails = ("main@example.com", "backup@example.com")
    return FetchedCatalogues(sim_catalogues(*emails))


def _child(load: Callable[[], object], queue: multiprocessing.Queue[tuple[float, float, str]]) -> None:
    start = time.perf_counter()
    try:
        load()
        outcome = "valid"
    except PipelineError as exc:
        outcome = f"{len(exc.problems)} problem(s): {exc.problems[0].message[:70]}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    queue.put((time.perf_counter() - start, rss, outcome))


def measured(load: Callable[[], object]) -> tuple[float, float, str]:
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[tuple[float, float, str]] = context.Queue()
    child = context.Process(target=_child, args=(load, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> int:
    ok = True
    with tempfile.TemporaryDirectory(prefix="klingflow-bench-") as tmp:
        folder = Path(tmp)
        cases = {"six keys x 20 values (64,000,000 steps)": matrix_file(folder, 6, 20),
                 "six keys x 10 values (1,000,000 steps)": matrix_file(folder, 6, 10),
                 "three matrices of 4,000 steps": many_matrices(folder),
                 "a 20000 x 20000 PNG input": huge_png(folder)}
        print("bench_validate: hostile files, each loaded in a fresh process")
        for label, path in cases.items():
            seconds, mb, outcome = measured(lambda p=path: load_pipeline(p))
            good = seconds < HOSTILE_SECONDS and mb < HOSTILE_MB
            ok &= good
            print(f"  {label:<42} {seconds * 1000:7.0f} ms {mb:7.1f} MB max RSS  "
                  f"{'ok' if good else 'MISSED'}  ({outcome})")
        big = write_pipeline(folder / "big", 10_000)
        effects = sim_catalogue()
        bare = min(measured(lambda: load_pipeline(big))[0] for _ in range(3))
        judged = min(measured(lambda: load_pipeline(big, effects=effects))[0] for _ in range(3))
        share = judged / bare - 1
        ok &= share < CATALOGUE_SHARE
        print(f"  10,000-step pipeline: {bare * 1000:.0f} ms without a catalogue, "
              f"{judged * 1000:.0f} ms judged by the simulator's ({share:+.1%}; target < "
              f"{CATALOGUE_SHARE:.0%}: {'ok' if share < CATALOGUE_SHARE else 'MISSED'})")
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs (a busy machine inflates every figure)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
