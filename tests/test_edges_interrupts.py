"""Ctrl-C at any moment of any command: exit 130, one line, no temporary file left, and
no run directory from a run that recorded nothing (issue 9, polish).

Each test runs klingflow in a child process (a real SIGINT), through a small driver
that says when `main()` has started: the interpreter's own start-up, and its
exit after `main()` has returned (where Python restores the default handler, so the
process ends by the signal, which a shell shows as 130), are beyond any program.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runhelpers import ROOT, finish_process, frames_step, write_pipeline

FAST = ["--sim-speed", "10", "--poll-interval", "0.05"]
DRIVER = """
import os, signal, sys
from klingflow import cli
{patch}
build_parser = cli._build_parser
def ready_then_build_parser():  # the first thing main() does, inside its handling
    print("ready", flush=True)
    return build_parser()
cli._build_parser = ready_then_build_parser
sys.exit(cli.main(sys.argv[1:]))
"""
SIGINT_DURING_LOCK_WRITE = """
real_fsync = os.fsync
def fsync(fd):
    real_fsync(fd)
    name = os.readlink(f"/proc/self/fd/{fd}")
    if ".lock.yaml." in name and name.endswith(".tmp"):
        os.kill(os.getpid(), signal.SIGINT)
os.fsync = fsync
"""
SIGINT_AT_FIRST_UPLOAD = """
import anyio
from klingflow.client import KlingClient
async def upload_asset(self, data, content_type, *, email):
    os.kill(os.getpid(), signal.SIGINT)
    await anyio.sleep(30)
KlingClient.upload_asset = upload_asset
"""


def _start(isolated: Path, argv: list[str], patch: str = "",
           extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The child gets no token of the shell's, only one `extra_env` gives it."""
    env = {**os.environ, "KLINGFLOW_HOME": str(isolated / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("USEAPI_TOKEN", None)
    env.update(extra_env or {})
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(patch=patch), *argv], cwd=isolated, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def _leftovers(root: Path) -> list[Path]:
    """Temporary files (write_atomically's `.NAME.<hex>.tmp`) anywhere under `root`."""
    return [p for p in root.rglob("*.tmp")]


def _klingflow_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("klingflow:")]


def _pipeline(folder: Path) -> Path:
    return write_pipeline(folder, "ctrl-c", [
        frames_step("one", "a quiet lake"),
        frames_step("two", "the lake at noon", image="${steps.one.last_frame}")])


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3, 0.6, 1.0, 1.5])
def test_ctrl_c_at_any_moment_of_a_run_ends_cleanly(isolated: Path, delay: float) -> None:
    path = _pipeline(isolated / "p")
    runs = isolated / "runs"
    process = _start(isolated, ["run", str(path), "--sim", "--out", str(runs), *FAST])
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    code, out, err = finish_process(process)
    assert "Traceback" not in err
    if code in (0, -signal.SIGINT):  # over before the signal came, or main() had returned
        # the summary's last line is the review page (`review: RUN_DIR/report.html`)
        assert out.endswith("/report.html\n") and _klingflow_lines(err) == [], (code, out, err)
    else:
        assert code == 130, err
        assert len(_klingflow_lines(err)) == 1, err
        assert _klingflow_lines(err)[0].startswith("klingflow: interrupted"), err
    assert _leftovers(isolated) == []
    for run_dir in (runs / "ctrl-c").glob("*") if (runs / "ctrl-c").exists() else []:
        journal = run_dir / "journal.jsonl"
        assert journal.exists() and journal.read_text(encoding="utf-8").strip(), run_dir


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_ctrl_c_during_other_commands_ends_cleanly(isolated: Path, delay: float) -> None:
    path = _pipeline(isolated / "p")
    for argv in (["validate", str(path)], ["plan", str(path)], ["lock", str(path)],
                 ["sim", "serve", "--port", "0"]):
        process = _start(isolated, argv)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        code, out, err = finish_process(process)
        assert "Traceback" not in err, argv
        if code in (0, -signal.SIGINT):  # over before the signal came, or main() had returned
            assert out and _klingflow_lines(err) == [], (argv, out, err)
        else:
            assert code == 130, (argv, err)
            assert _klingflow_lines(err) == ["klingflow: interrupted"], (argv, err)
    assert _leftovers(isolated) == []


def test_sim_serve_on_port_0_says_the_port_it_took_and_stops_on_ctrl_c(
        isolated: Path) -> None:
    process = _start(isolated, ["sim", "serve", "--port", "0"])
    assert process.stdout is not None
    banner = process.stdout.readline()
    assert banner.startswith("klingflow simulator: http://127.0.0.1:")
    port = int(banner.split("http://127.0.0.1:")[1].split("/")[0])
    assert 0 < port < 65536
    process.send_signal(signal.SIGINT)
    code, _, err = finish_process(process)
    assert (code, _klingflow_lines(err)) == (130, ["klingflow: interrupted"]), err


def test_ctrl_c_during_the_lock_write_of_klingflow_lock(isolated: Path) -> None:
    """`klingflow lock` writes without an event loop: the interrupt lands inside the write."""
    path = _pipeline(isolated / "p")
    process = _start(isolated, ["run", str(path), "--sim", "--out", str(isolated / "runs"),
                                *FAST])
    assert finish_process(process)[0] == 0
    lock = path.parent / "ctrl-c.lock.yaml"
    before = lock.read_bytes()
    process = _start(isolated, ["lock", str(path), "--sim"], SIGINT_DURING_LOCK_WRITE)
    code, out, err = finish_process(process)
    assert (code, out, _klingflow_lines(err)) == (130, "", ["klingflow: interrupted"]), err
    assert "Traceback" not in err
    assert _leftovers(isolated) == []
    assert lock.read_bytes() == before  # the old lock, whole


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_the_final_lock_write_of_a_run(isolated: Path, stop: str) -> None:
    """After the run's tasks, SIGTERM too: the run received it as an event until then,
    and asyncio left it at its default when it stopped listening (exit 143, no word)."""
    path = _pipeline(isolated / "p")
    process = _start(isolated, ["run", str(path), "--sim", "--out", str(isolated / "runs"),
                                *FAST], SIGINT_DURING_LOCK_WRITE.replace("SIGINT", stop))
    code, _, err = finish_process(process)
    assert code == 130, err
    assert _klingflow_lines(err) == ["klingflow: interrupted"], err
    assert "Traceback" not in err
    assert _leftovers(isolated) == []


def test_ctrl_c_before_the_run_recorded_anything_leaves_no_run_directory(
        isolated: Path) -> None:
    path = _pipeline(isolated / "p")
    process = _start(isolated, ["run", str(path), "--sim", "--out", str(isolated / "runs"),
                                *FAST], SIGINT_AT_FIRST_UPLOAD)
    code, out, err = finish_process(process)
    assert (code, out) == (130, ""), err
    assert _klingflow_lines(err) == ["klingflow: interrupted before the run recorded "
                                     "anything: nothing to resume"], err
    assert not (isolated / "runs" / "ctrl-c").exists()
    assert not (path.parent / "ctrl-c.lock.yaml").exists()


def test_sigterm_while_waiting_for_the_service_ends_as_ctrl_c_does(isolated: Path) -> None:
    """Before a run's tasks start (here: the service cannot be reached, and klingflow
    waits up to --connect-timeout for it), SIGTERM (a CI job cancelled) is Ctrl-C."""
    path = _pipeline(isolated / "p")
    process = _start(isolated, ["run", str(path), "--out", str(isolated / "runs")],
                     extra_env={"USEAPI_TOKEN": "user:1-sigterm",
                                "KLINGFLOW_API_BASE": "http://127.0.0.1:9/v1/kling"})
    assert process.stderr is not None
    first = process.stderr.readline()
    assert "waiting: cannot reach http://127.0.0.1:9/v1/kling" in first, first
    process.send_signal(signal.SIGTERM)
    code, out, err = finish_process(process)
    assert (code, out, _klingflow_lines(err)) == (130, "", ["klingflow: interrupted"]), err
    assert "Traceback" not in err
    assert not (isolated / "runs" / "ctrl-c").exists()
