"""Bad option values and unusable paths are usage errors (exit 2), never a bug or a
hang (issue 9, item 12): every numeric option of every subcommand, --sim-faults, an
--out, cache, --resume or KLINGFLOW_HOME that cannot be used. Nothing is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from klingflow.cli import main
from tests.runhelpers import frames_step, run_cli, write_pipeline

RUN_USAGE_ERROR = "klingflow run: error: argument {option}: {message}\n"
SERVE_USAGE_ERROR = "klingflow sim serve: error: argument {option}: {message}\n"


def _pipeline(folder: Path) -> Path:
    return write_pipeline(folder, "options", [frames_step("one", "a quiet lake")])


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err.splitlines(keepends=True)[-1]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--max-jobs", "-1", "expected a whole number of 1 or more, got '-1'"),
    ("--max-jobs", "0", "expected a whole number of 1 or more, got '0'"),
    ("--max-jobs", "two", "expected a whole number of 1 or more, got 'two'"),
    ("--poll-interval", "-1", "expected a number of seconds above 0, got '-1'"),
    ("--poll-interval", "0", "expected a number of seconds above 0, got '0'"),
    ("--poll-interval", "nan", "expected a number of seconds above 0, got 'nan'"),
    ("--poll-interval", "inf", "expected a number of seconds above 0, got 'inf'"),
    ("--budget", "-5", "expected a whole number of 0 or more, got '-5'"),
    ("--budget", "1e3", "expected a whole number of 0 or more, got '1e3'"),
    ("--sim-speed", "0", "expected a number above 0, got '0'"),
    ("--sim-speed", "-1", "expected a number above 0, got '-1'"),
    ("--sim-speed", "inf", "expected a number above 0, got 'inf'"),
    ("--sim-speed", "nan", "expected a number above 0, got 'nan'"),
    ("--sim-faults", "429=abc", "fault '429=abc': the rate must be a number from 0 to 1"),
    ("--sim-faults", "429=2", "fault '429=2': the rate must be a number from 0 to 1"),
    ("--sim-faults", "429=nan", "fault '429=nan': the rate must be a number from 0 to 1"),
    ("--sim-faults", "foo=0.1", "fault 'foo=0.1': expected KIND=RATE with KIND one of 429, "
                                "500, moderation, reset, slow, expire"),
])
def test_a_bad_run_option_is_a_usage_error_before_anything_runs(
        isolated: Path, capsys: pytest.CaptureFixture[str], option: str, value: str,
        message: str) -> None:
    path = _pipeline(isolated / "p")
    last = _usage_error(["run", str(path), "--sim", "--out", str(isolated / "runs"),
                         f"{option}={value}"], capsys)
    assert last == RUN_USAGE_ERROR.format(option=option, message=message)
    assert not (isolated / "runs").exists()
    assert not (isolated / "home").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--port", "99999", "expected a whole number from 0 to 65535 (0: any free port), "
                        "got '99999'"),
    ("--port", "-1", "expected a whole number from 0 to 65535 (0: any free port), got '-1'"),
    ("--speed", "0", "expected a number above 0, got '0'"),
    ("--speed", "nan", "expected a number above 0, got 'nan'"),
    ("--task-seconds", "0", "expected a number of seconds above 0, got '0'"),
    ("--task-seconds", "inf", "expected a number of seconds above 0, got 'inf'"),
    ("--slow-seconds", "-1", "expected a number of seconds of 0 or more, got '-1'"),
    ("--slow-seconds", "nan", "expected a number of seconds of 0 or more, got 'nan'"),
    ("--faults", "500=x", "fault '500=x': the rate must be a number from 0 to 1"),
    ("--task-spread", "1.5", "expected a number from 0 to 1, got '1.5'"),
    ("--task-spread", "nan", "expected a number from 0 to 1, got 'nan'"),
])
def test_a_bad_sim_serve_option_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                 option: str, value: str,
                                                 message: str) -> None:
    last = _usage_error(["sim", "serve", f"{option}={value}"], capsys)
    assert last == SERVE_USAGE_ERROR.format(option=option, message=message)


def test_sim_config_refuses_what_is_not_a_finite_number() -> None:
    """The same checks for a program that builds the simulator's options itself."""
    from klingflow.errors import UsageError
    from klingflow.sim.config import config_from_cli

    for name, options in (("--speed", {"speed": float("nan")}),
                          ("--task-seconds", {"task_seconds": float("inf")})):
        with pytest.raises(UsageError) as caught:
            config_from_cli(token="t", accounts=[], seed=0, faults="",
                            **{"speed": 1.0, **options})  # type: ignore[arg-type]
        assert str(caught.value).startswith(f"{name} must be above 0, got ")
    with pytest.raises(UsageError) as caught:
        config_from_cli(token="t", accounts=[], seed=0, faults="", speed=1.0,
                        task_spread=-0.1)
    assert str(caught.value) == "--task-spread must be from 0 to 1, got -0.1"


def test_an_out_that_cannot_hold_directories_is_a_usage_error(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(isolated / "p")
    (isolated / "a-file").write_text("not a folder")
    code, out, err = run_cli(["run", str(path), "--sim", "--out", str(isolated / "a-file")],
                             capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"klingflow: --out {isolated / 'a-file'}: cannot make the run "
                          f"directory {isolated / 'a-file' / 'options'}/")
    assert err.endswith(": Not a directory\n")


def test_a_klingflow_home_that_is_a_file_is_a_usage_error(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = isolated / "home-file"
    home.write_text("not a folder")
    monkeypatch.setenv("KLINGFLOW_HOME", str(home))
    path = _pipeline(isolated / "p")
    for argv in (["run", str(path), "--sim"], ["plan", str(path)], ["lock", str(path)]):
        code, out, err = run_cli(argv, capsys)
        assert (code, out) == (2, ""), argv
        assert err == (f"klingflow: KLINGFLOW_HOME: {home} is a file, not a directory; point "
                       "KLINGFLOW_HOME at a directory (it is created when missing)\n")
    assert not (isolated / "runs").exists()


@pytest.mark.parametrize("variable", ["KLINGFLOW_HOME", "KLINGFLOW_SIM_HOME"])
@pytest.mark.parametrize("value", [" ", "home ", " home"])
def test_a_home_with_a_stray_space_is_a_usage_error(
        isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        variable: str, value: str) -> None:
    """Taken as written, KLINGFLOW_HOME=' ' made a folder named ' ' wherever it ran."""
    monkeypatch.setenv(variable, value)
    path = _pipeline(isolated / "p")
    code, out, err = run_cli(["run", str(path), "--sim"], capsys)
    assert (code, out) == (2, "")
    assert err == (f"klingflow: {variable} is {value!r}: it starts or ends with a space; set "
                   "it to the directory's path, or unset it\n")
    assert not [p.name for p in isolated.iterdir() if p.name != p.name.strip()]
    assert not (isolated / "runs").exists()


def test_a_cache_that_cannot_be_made_is_a_usage_error(
        isolated: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "a-file").write_text("not a folder")
    home = isolated / "a-file" / "cache"
    monkeypatch.setenv("KLINGFLOW_HOME", str(home))
    monkeypatch.setenv("USEAPI_TOKEN", "user:1-fake-token")
    monkeypatch.setenv("KLINGFLOW_API_BASE", "http://127.0.0.1:9/v1/kling")
    path = _pipeline(isolated / "p")
    for argv in (["run", str(path)], ["plan", str(path)]):
        code, out, err = run_cli(argv, capsys)
        assert (code, out) == (2, ""), argv
        assert err == (f"klingflow: cache {home}: cannot use it: Not a directory; set "
                       "KLINGFLOW_HOME to a directory you can write to\n")
    assert not (isolated / "runs").exists()


def test_resume_of_a_file_is_a_usage_error(isolated: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(isolated / "p")
    code, out, err = run_cli(["run", str(path), "--sim", "--resume", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err == (f"klingflow: --resume {path}: a file, not a run directory (expected "
                   "RUN_DIR, the folder that holds journal.jsonl)\n")


def test_a_pipeline_path_that_is_a_directory_is_a_located_error(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = isolated / "p"
    _pipeline(folder)
    for command in ("validate", "plan", "run"):
        code, out, err = run_cli([command, str(folder)], capsys)
        assert (code, out) == (2, ""), command
        assert err == f"{folder}:1:1: <document>: cannot read the file: Is a directory\n" \
                      "1 problem found\n"


def test_a_pipeline_path_that_is_a_device_is_refused_before_it_is_read(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/dev/zero says it is 0 bytes long and never ends: read whole, it took all memory."""
    for command in ("validate", "plan", "run"):
        code, out, err = run_cli([command, "/dev/zero"], capsys)
        assert (code, out) == (2, ""), command
        assert err == ("/dev/zero:1:1: <document>: cannot read the file: it is a device, not "
                       "a regular file\n1 problem found\n")


@pytest.mark.timeout(20)
def test_a_pipeline_path_that_is_a_named_pipe_is_refused_without_waiting_for_a_writer(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = isolated / "p.yaml"
    os.mkfifo(fifo)
    code, out, err = run_cli(["validate", str(fifo)], capsys)
    assert (code, out) == (2, "")
    assert err == (f"{fifo}:1:1: <document>: cannot read the file: it is a named pipe, not a "
                   "regular file\n1 problem found\n")


@pytest.mark.timeout(20)
def test_a_lock_that_is_a_named_pipe_is_refused_without_waiting_for_a_writer(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _pipeline(isolated / "p")
    lock = path.with_name(path.stem + ".lock.yaml")
    os.mkfifo(lock)
    code, out, err = run_cli(["plan", str(path), "--sim"], capsys)
    assert (code, out) == (2, "")
    assert err == (f"klingflow: {lock}: cannot read this lock file (it is a named pipe, not a "
                   "regular file); it was left as it is. Fix it (a merge conflict?) or delete "
                   "it, then run again\n")


def test_a_lock_that_is_a_directory_says_so_without_a_file_descriptor(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said 'cannot read this lock file ([Errno 21] Is a directory: 3)'."""
    path = _pipeline(isolated / "p")
    lock = path.with_name(path.stem + ".lock.yaml")
    lock.mkdir()
    code, out, err = run_cli(["plan", str(path), "--sim"], capsys)
    assert (code, out) == (2, "")
    assert err == (f"klingflow: {lock}: cannot read this lock file (Is a directory); it was "
                   "left as it is. Fix it (a merge conflict?) or delete it, then run again\n")


@pytest.mark.parametrize("account", ["bad", "bad:3", "a@b.c:0", "a@b.c:51", "a b@c.d:2", ":2"])
def test_a_sim_account_that_is_no_email_with_a_job_limit_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], account: str) -> None:
    """Not served with an account no pipeline can name (their emails are name@host)."""
    assert main(["sim", "serve", "--port", "0", "--account", account]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"klingflow: account {account!r}: expected EMAIL:MAX_JOBS with MAX_JOBS "
                   "from 1 to 50, e.g. a@example.com:3\n")


def test_a_run_without_sim_does_not_load_the_simulator(isolated: Path) -> None:
    """argparse passes --sim-faults' default through its checker; that must not import
    the simulator (Starlette and all: ~14% of a run's start-up) for a real-API run."""
    path = _pipeline(isolated / "p")
    probe = ("import sys\nfrom klingflow.cli import main\n"
             f"code = main(['run', {str(path)!r}])\n"
             "print(code, 'klingflow.sim' in sys.modules, 'starlette' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "USEAPI_TOKEN"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, cwd=isolated, timeout=60)
    assert done.stdout == "2 False False\n"  # no token: stopped before anything is sent
    assert "no API token" in done.stderr
