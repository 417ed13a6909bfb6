"""The command line: `main(argv) -> int`, one small function per subcommand.

This is the only module that prints or chooses an exit code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from klingflow import __version__
from klingflow.errors import (
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    KlingflowError,
    PipelineError,
    UsageError,
)

if TYPE_CHECKING:  # imported when used, inside main(), where Ctrl-C is handled
    from klingflow.settings import Settings

if TYPE_CHECKING:
    from klingflow.catalogue import KeptCatalogues


def _cmd_validate(args: argparse.Namespace) -> int:
    from klingflow.lockfile import is_lock_file, lock_path, read_lock
    from klingflow.spec import load_pipeline

    settings = _settings(args)
    problems: list[str] = []  # located, one per line
    readable: dict[Path, bool] = {}  # each lock read once, named or beside its pipeline

    def read(lock: Path) -> bool:
        """Whether the lock is readable (a missing one is); a problem if not. A lock a
        merge left broken stops plan and run: CI on a pull request should say so."""
        if lock not in readable:
            try:
                read_lock(lock)
                readable[lock] = True
            except UsageError as exc:
                problems.append(str(exc))
                readable[lock] = False
        return readable[lock]

    for path in args.pipelines:
        if is_lock_file(Path(path)):  # `validate pipelines/*.yaml` after a run
            if read(Path(path)):
                print(f"{path}: skipped: a lock file written by klingflow run, not a pipeline")
            continue
        effects = _kept_catalogues(Path(path), settings, settings.backend)
        try:
            pipeline = load_pipeline(Path(path), effects=effects)
        except PipelineError as exc:
            problems.extend(str(problem) for problem in exc.problems)
        else:
            print(f"{path}: ok ({len(pipeline.steps)} steps)")
        read(lock_path(Path(path)))
        _note_unchecked_effects(path, effects)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(_count(len(problems), "problem"), "found", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _kept_catalogues(path: Path, settings: Settings, backend: str) -> KeptCatalogues:
    from klingflow.catalogue import KeptCatalogues

    return KeptCatalogues(settings.cache_root(path), backend)


def _note_unchecked_effects(path: str, effects: KeptCatalogues) -> None:
    import shlex  # the command is to be pasted into a shell: a path with spaces, quoted

    sim = " --sim" if effects.backend == "sim" else ""
    note = effects.unchecked_note(f"klingflow effects {shlex.quote(path)}{sim}")
    if note:
        print(f"{path}: note: {note}", file=sys.stderr)


def _cmd_schema(args: argparse.Namespace) -> int:
    from klingflow.schema_files import schema_text

    sys.stdout.write(schema_text(args.name))
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    from klingflow.planning import forced_steps, plan_with_verdicts
    from klingflow.report import format_plan
    from klingflow.spec import load_pipeline

    path, settings = Path(args.pipeline), _settings(args)
    effects = _kept_catalogues(path, settings, settings.backend)
    try:
        pipeline = load_pipeline(path, effects=effects)
    finally:
        _note_unchecked_effects(args.pipeline, effects)
    forced = frozenset(forced_steps(pipeline, args.force, args.force_all))
    plan = plan_with_verdicts(pipeline, settings, forced=forced)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print(format_plan(plan))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from klingflow.plan import build_plan
    from klingflow.progress import make_progress
    from klingflow.runner import run_pipeline
    from klingflow.spec import load_pipeline

    plan = build_plan(load_pipeline(Path(args.pipeline)))
    settings = _settings(args)
    progress = make_progress([s.id for s in plan.steps])
    try:
        report = run_pipeline(plan, settings, on_event=progress)
    finally:
        progress.close()
    document = report.to_json()
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        from klingflow.report import format_report

        print(format_report(document))
    if report.status == "interrupted":
        print("klingflow: interrupted; continue with --resume", file=sys.stderr)
    elif report.status == "aborted":
        print(f"klingflow: run stopped: {report.error}", file=sys.stderr)
    return report.exit_code


def _cmd_effects(args: argparse.Namespace) -> int:
    from klingflow.report.effects_text import catalogues_json, format_catalogues
    from klingflow.runner import fetch_effects

    settings = _settings(args)
    kept = fetch_effects(Path(args.pipeline) if args.pipeline else None, settings)
    print(json.dumps(catalogues_json(kept), indent=2) if args.json else format_catalogues(kept))
    return EXIT_OK


def _cmd_lock(args: argparse.Namespace) -> int:
    from klingflow.planning import rebuild_lock

    settings = _settings(args)
    path, locked, total, kept = rebuild_lock(Path(args.pipeline), settings)
    older = f"; {kept} older {'entry' if kept == 1 else 'entries'} kept" if kept else ""
    print(f"{path}: {locked} of {total} steps locked from the cache ({settings.backend})"
          f"{older}")
    return EXIT_OK


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of this command, from its arguments and the environment."""
    from klingflow.settings import RunFlags, Settings, SimOptions

    sim = SimOptions(seed=getattr(args, "sim_seed", 0), faults=getattr(args, "sim_faults", ""),
                     speed=getattr(args, "sim_speed", 1.0)) if args.sim else None
    if args.command == "run":
        run = RunFlags(out=Path(args.out), max_jobs=args.max_jobs,
                       poll_interval=args.poll_interval, fail_fast=args.fail_fast,
                       budget=args.budget, force=tuple(args.force), force_all=args.force_all,
                       resume=args.resume, connect_timeout=args.connect_timeout)
    elif "connect_timeout" in args:  # effects reaches the service too
        run = RunFlags(connect_timeout=args.connect_timeout)
    else:
        run = RunFlags()
    return Settings.from_environment(sim=sim, run=run, remote=getattr(args, "remote", None),
                                     remote_read_only=getattr(args, "remote_read_only", False))


def _add_connect_timeout(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--connect-timeout", type=SECONDS, default=60.0, metavar="SECONDS",
                   help=f"how long to keep trying to reach the service before giving up, "
                        f"{when} (default 60)")


def _add_remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote", metavar="URL",
                   help="a cache shared by machines: s3://BUCKET/PREFIX, gs://..., az://..., "
                        "file:///PATH (default: KLINGFLOW_REMOTE; credentials only from the "
                        "usual AWS_*, GOOGLE_* or AZURE_* variables)")
    p.add_argument("--remote-read-only", action="store_true",
                   help="read the remote cache, write nothing to it (as "
                        "KLINGFLOW_REMOTE_READ_ONLY=1): for pull-request CI")


def _cmd_report(args: argparse.Namespace) -> int:
    from klingflow.report import format_report
    from klingflow.report.html import write_html
    from klingflow.report.load import REPORT_NAME, find_run_dir, load_report, unreported_newer

    run_dir = Path(args.run_dir) if args.run_dir else find_run_dir(Path(args.out))
    report = load_report(run_dir)
    newer = None if args.run_dir else unreported_newer(Path(args.out), run_dir)
    if newer is not None:
        print(f"klingflow: note: {newer} is newer, but has no {REPORT_NAME} yet: it is still "
              "running, or was stopped before it ended (continue it with run --resume); "
              f"this is the newest report, {run_dir}", file=sys.stderr)
    try:
        page = write_html(report, run_dir) if args.format == "html" or args.open else None
    except OSError as exc:
        raise UsageError(f"{run_dir}: cannot write report.html: {exc.strerror or exc}") from exc
    if args.format == "json":
        print(json.dumps(report, indent=2))
    elif args.format == "html":
        print(page)
    else:
        print(format_report({**report, "run_dir": str(run_dir)}))
    if page is not None and args.open:
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            print(f"klingflow: no browser could be opened; the page is {page}", file=sys.stderr)
    return EXIT_OK


def _cmd_sim_serve(args: argparse.Namespace) -> int:
    from klingflow.sim.server import serve

    serve(host=args.host, port=args.port, token=args.token, accounts=args.account,
          seed=args.seed, faults=args.faults, speed=args.speed,
          state_dir=Path(args.state) if args.state else None,
          task_seconds=args.task_seconds, slow_seconds=args.slow_seconds,
          cheap_render=args.cheap_render, task_spread=args.task_spread)
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# ---- option values: refused with a usage error (exit 2) before anything runs -----------


def _whole(low: int, high: int | None = None, *, note: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from `low` (to `high`)."""
    expected = (f"a whole number from {low} to {high}" if high is not None
                else f"a whole number of {low} or more") + note

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def _positive(unit: str, *, zero: bool = False,
              high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number above 0 (or from 0, with `zero`), up to `high`."""
    expected = (f"{unit} from 0 to {high:g}" if high < math.inf
                else f"{unit} of 0 or more" if zero else f"{unit} above 0")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0 <= value <= high or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def _fault_rates(text: str) -> str:
    """An argparse type: `KIND=RATE,...` as the simulator takes it (checked, kept as text).
    argparse passes the default ("") through it too: that needs no simulator imported."""
    if not text:
        return text
    from klingflow.sim.config import Faults

    try:
        Faults.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


JOBS = _whole(1)
CREDITS = _whole(0)
SECONDS = _positive("a number of seconds")
SECONDS_OR_ZERO = _positive("a number of seconds", zero=True)
FACTOR = _positive("a number")
SPREAD = _positive("a number", zero=True, high=1.0)  # klingflow.sim.config.MAX_SPREAD
PORT = _whole(0, 65535, note=" (0: any free port)")


def _build_parser() -> argparse.ArgumentParser:
    from klingflow.schema_files import SCHEMA_NAMES

    parser = argparse.ArgumentParser(
        prog="klingflow",
        description="Run version-controlled YAML pipelines of Kling video generations.")
    parser.add_argument("--version", action="version", version=f"klingflow {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check pipeline files; print every problem")
    p.add_argument("pipelines", nargs="+", metavar="PIPELINE")
    p.add_argument("--sim", action="store_true",
                   help="judge effects by the simulator's kept catalogue (default: the "
                        "service's, KLINGFLOW_API_BASE or useapi.net)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("effects", help="fetch, keep and show the service's effects catalogue")
    p.add_argument("pipeline", nargs="?", metavar="PIPELINE",
                   help="for each account of this pipeline (default: the default account)")
    p.add_argument("--json", action="store_true", help="print the catalogues as JSON")
    p.add_argument("--sim", action="store_true", help="from the embedded simulator")
    _add_connect_timeout(p, "when fetching the catalogue")
    p.set_defaults(func=_cmd_effects, sim_seed=0, sim_faults="", sim_speed=1.0)

    p = sub.add_parser("plan", help="dry run: the requests, their order and their cost")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--sim", action="store_true",
                   help="plan for the simulator (default: the backend run would use, "
                        "KLINGFLOW_API_BASE or useapi.net)")
    p.add_argument("--force", action="append", default=[], metavar="STEP",
                   help="plan STEP and what depends on it as regenerated")
    p.add_argument("--force-all", action="store_true", help="plan every step as regenerated")
    _add_remote_options(p)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("schema", help="print a JSON Schema (default: the pipeline file's)")
    p.add_argument("name", nargs="?", default="pipeline", choices=SCHEMA_NAMES)
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("lock", help="rebuild a pipeline's lock file from the cache")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("--sim", action="store_true", help="from the simulator's results")
    _add_remote_options(p)
    p.set_defaults(func=_cmd_lock)

    _add_run_parser(sub)
    _add_report_parser(sub)
    _add_sim_parser(sub)
    return parser


def _add_run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run a pipeline (on the embedded simulator with --sim)")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("--sim", action="store_true",
                   help="run on the embedded simulator (no credits spent)")
    p.add_argument("--out", default="runs", metavar="DIR",
                   help="where run directories go: DIR/NAME/RUN-ID (default: runs)")
    p.add_argument("--max-jobs", type=JOBS, metavar="N", help="cap on tasks in flight in the run")
    p.add_argument("--poll-interval", type=SECONDS, metavar="SECONDS",
                   help="the shortest wait between two polls of a task (default 5; 0.05 on "
                        "the simulator); polls come near each task's expected end")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop submitting new steps after the first failure")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                   help="continue the latest run (or RUN_DIR), re-attaching to its tasks")
    p.add_argument("--force", action="append", default=[], metavar="STEP",
                   help="regenerate STEP and what depends on it, even if cached")
    p.add_argument("--force-all", action="store_true", help="regenerate every step")
    _add_connect_timeout(p, "at the start of the run")
    p.add_argument("--budget", type=CREDITS, metavar="CREDITS",
                   help="refuse any submit that would take the run past this many credits")
    sim = p.add_argument_group("simulator options (with --sim)")
    sim.add_argument("--sim-seed", type=int, default=0, metavar="N")
    sim.add_argument("--sim-faults", type=_fault_rates, default="", metavar="KIND=RATE,...",
                     help="KIND one of 429, 500, moderation, reset, slow, expire; e.g. "
                          "429=0.1,500=0.05,moderation=0.02,reset=0.02")
    sim.add_argument("--sim-speed", type=FACTOR, default=1.0, metavar="X",
                     help="make simulated tasks finish X times faster")
    _add_remote_options(p)
    p.set_defaults(func=_cmd_run)


def _add_report_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="show a finished run again: text, JSON or the review page")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="a run directory (default: the latest run under --out, any pipeline)")
    p.add_argument("--out", default="runs", metavar="DIR",
                   help="where run directories are: DIR/NAME/RUN-ID (default: runs)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--text", dest="format", action="store_const", const="text",
                       help="the summary `run` prints (the default)")
    shown.add_argument("--json", dest="format", action="store_const", const="json",
                       help="print report.json")
    shown.add_argument("--html", dest="format", action="store_const", const="html",
                       help="render RUN_DIR/report.html again and print its path")
    p.add_argument("--open", action="store_true",
                   help="render the review page and open it in the browser")
    p.set_defaults(func=_cmd_report, format="text")


def _add_sim_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sim = sub.add_parser("sim", help="the embedded simulator of the useapi.net Kling API")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    p = sim_sub.add_parser("serve", help="serve the simulator on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=8765, help="default 8765; 0: any free port")
    p.add_argument("--token", default="test-token", help="the API token clients must send")
    p.add_argument("--account", action="append", default=[], metavar="EMAIL:MAX_JOBS",
                   help="a Kling account (repeatable); default one account")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    p.add_argument("--faults", type=_fault_rates, default="", metavar="KIND=RATE,...",
                   help="e.g. 429=0.1,500=0.05,moderation=0.02,reset=0.02,slow=0.05,expire=0.05")
    p.add_argument("--speed", type=FACTOR, default=1.0,
                   help="time scale: 2 makes tasks finish twice as fast")
    p.add_argument("--task-seconds", type=SECONDS, default=2.0, metavar="SECONDS",
                   help="how long a task takes at speed 1 (default 2)")
    p.add_argument("--task-spread", type=SPREAD, default=0.0, metavar="SIGMA",
                   help="spread task durations log-normally around --task-seconds, as real "
                        "ones are (0.45 is about Kling's; default 0: all alike)")
    p.add_argument("--slow-seconds", type=SECONDS_OR_ZERO, default=3.0, metavar="SECONDS",
                   help="delay of a 'slow' fault at speed 1 (default 3)")
    p.add_argument("--cheap-render", action="store_true",
                   help="serve one shared low-rate clip per duration (for benchmarks)")
    p.add_argument("--state", metavar="DIR",
                   help="keep the service's state (accounts, uploads, tasks) in DIR, so it "
                        "survives a restart; processes may share DIR")
    p.set_defaults(func=_cmd_sim_serve)


def main(argv: Sequence[str] | None = None) -> int:
    from klingflow.interrupts import sigterm_as_ctrl_c

    args: argparse.Namespace | None = None
    try:
        args = _build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        with sigterm_as_ctrl_c():
            return func(args)
    except SystemExit:
        raise  # argparse's usage errors (exit 2), --help and --version
    except BrokenPipeError:  # `klingflow plan --json | head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_OK
    except BaseException as exc:  # Ctrl-C too: every ending is one clear line
        return _failure(exc, show_traceback=bool(args is not None and args.traceback))


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so Python's own flush at exit meets no closed pipe."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _failure(exc: BaseException, *, show_traceback: bool) -> int:
    """Say how a command ended that did not return: Ctrl-C (130), a KlingflowError (its
    message and exit code, even from inside a task group), or a bug (3)."""
    error = _primary(exc)
    if isinstance(error, KeyboardInterrupt):
        print("klingflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, PipelineError):
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(_count(len(error.problems), "problem"), "found", file=sys.stderr)
        return error.exit_code
    if isinstance(error, KlingflowError):
        print(f"klingflow: {error}", file=sys.stderr)
        return error.exit_code
    if show_traceback:
        raise exc
    print(f"klingflow: unexpected error (a bug): {_one_line(error)}\n"
          "Run again with --traceback to see where.", file=sys.stderr)
    return EXIT_BUG


def _primary(exc: BaseException) -> BaseException:
    """The error to report from `exc`, exception groups unwrapped: Ctrl-C first, then a
    bug, then a KlingflowError (a bug is not hidden behind the errors it caused)."""
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    bugs = [leaf for leaf in leaves if not isinstance(leaf, KlingflowError)]
    return (bugs or leaves)[0]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _one_line(error: BaseException) -> str:
    """`Type: message`, the message's first line only."""
    import traceback

    lines = traceback.format_exception_only(type(error), error)[0].strip().splitlines()
    return lines[0] if lines else type(error).__name__
