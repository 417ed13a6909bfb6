"""Serving the simulator over real HTTP with uvicorn: in a thread, or blocking (CLI)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from klingflow.errors import UsageError
from klingflow.sim.app import API, create_app
from klingflow.sim.config import SimConfig, config_from_cli
from klingflow.sim.transport import hide_reset_tracebacks

STARTUP_TIMEOUT = 10.0
BACKLOG = 4096


def _server(config: SimConfig, *, log_level: str = "warning") -> uvicorn.Server:
    hide_reset_tracebacks()
    settings = uvicorn.Config(create_app(config), log_level=log_level, lifespan="on",
                              backlog=BACKLOG, timeout_keep_alive=30, access_log=False)
    return uvicorn.Server(settings)


def _listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A socket bound to host:port (0: a free port)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"cannot listen on {host}:{port}: a port is from 0 to 65535")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Answers go out as headers then body: without TCP_NODELAY (inherited by the
    # accepted sockets) Nagle holds the body for the peer's delayed ACK, ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


@contextmanager
def running_simulator(config: SimConfig | None = None) -> Iterator[str]:
    """uvicorn on a free 127.0.0.1 port in a background thread; yields the API base URL."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    server = _server(config or SimConfig())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"klingflow-sim-{port}", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        yield f"http://127.0.0.1:{port}{API}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.01)


def serve(*, host: str, port: int, token: str, accounts: list[str], seed: int, faults: str,
          speed: float, state_dir: Path | None = None, task_seconds: float = 2.0,
          slow_seconds: float = 3.0, cheap_render: bool = False,
          task_spread: float = 0.0) -> None:
    """Serve until interrupted (`klingflow sim serve`); prints the base URL first.

    With `state_dir` the service is durable: serve again on it (even after a
    SIGKILL) and its accounts, uploads and tasks are still there."""
    config = config_from_cli(token=token, accounts=accounts, seed=seed, faults=faults,
                             speed=speed, state_dir=state_dir, task_seconds=task_seconds,
                             slow_seconds=slow_seconds, cheap_render=cheap_render,
                             task_spread=task_spread)
    sock = _listening_socket(host, port)
    port = sock.getsockname()[1]  # the one chosen, for port 0
    server = _server(config)
    state = f", state in {state_dir}" if state_dir is not None else ""
    print(f"klingflow simulator: http://{host}:{port}{API}  (token {token!r}, accounts "
          f"{', '.join(f'{e}:{j}' for e, j in config.accounts)}{state})", flush=True)
    server.run(sockets=[sock])
