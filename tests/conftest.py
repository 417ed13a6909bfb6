"""Shared test set-up: a guard that fails any connection leaving this machine."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

# Fixtures every test file can use: `s3` (a real S3 server on 127.0.0.1) and
# `isolated` (a clean home, no token, the working directory in tmp).
pytest_plugins = ("tests.s3server", "tests.runhelpers")

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
EXAMPLE_FILES = sorted(p for p in PIPELINES.glob("*.yaml") if not p.name.endswith(".lock.yaml"))
"""The example pipelines (a run writes NAME.lock.yaml beside each: not an example)."""

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


class NetworkGuardError(AssertionError):
    pass


def _is_local(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in ("localhost", "testserver"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: object) -> None:
    if sock.family == socket.AF_UNIX:
        return
    host = address[0] if isinstance(address, tuple) else address
    if not _is_local(host):
        raise NetworkGuardError(f"tests may only connect to 127.0.0.1, not {address!r}")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check(self, address)
    return _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


def _guarded_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if host is not None and not _is_local(host if isinstance(host, str) else host.decode()):
        raise NetworkGuardError(f"tests may not resolve {host!r}: only 127.0.0.1 is reachable")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo
    # klingflow in a child process is beyond this guard: it must not inherit the shell's
    # token, service address, remote or home. A test that wants them sets its own.
    for name in [n for n in os.environ if n.startswith("KLINGFLOW_")] + ["USEAPI_TOKEN"]:
        os.environ.pop(name, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
