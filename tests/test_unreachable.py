"""A service that cannot be reached is said at once, waited for visibly, and given up on
after --connect-timeout, before anything is uploaded or paid (issue 9, item 13)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.runhelpers import ROOT, frames_step, write_pipeline


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once it is closed


def test_an_unreachable_service_is_said_at_once_and_given_up_on_in_time(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "away", [frames_step("one", "a shot")])
    base = f"http://127.0.0.1:{closed_port()}/v1/kling"
    env = {**os.environ, "USEAPI_TOKEN": "user:1-fake-away-token", "KLINGFLOW_API_BASE": base,
           "KLINGFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "klingflow", "run", str(path), "--out",
                           str(tmp_path / "runs"), "--connect-timeout", "3"], env=env,
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(rf"[0-9:]{{8}} \(service\) waiting: cannot reach {re.escape(base)} "
                        r"\(ConnectError: All connection attempts failed\); trying again in "
                        r"[0-9.]+ s", lines[0]), lines[0]
    assert lines[-1].startswith(f"klingflow: cannot reach the service at {base} after ")
    assert lines[-1].endswith(" s: ConnectError: All connection attempts failed; nothing was "
                              "sent")
    assert took < 15  # 3 s of waiting, plus starting Python
    assert not (tmp_path / "runs").exists()


def test_a_reader_that_closes_the_pipe_early_is_not_a_bug(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", "long", [frames_step(f"s{i}", f"shot {i}")
                                                   for i in range(40)])
    env = {**os.environ, "KLINGFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(f"{sys.executable} -m klingflow plan {path} --json | head -c 10",
                          shell=True, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout == '{\n  "forma'
    assert done.stderr == ""
