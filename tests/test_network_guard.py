import socket

import httpx
import pytest

from klingflow.client import DEFAULT_API_BASE
from tests.conftest import NetworkGuardError


def test_outside_connections_fail() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(NetworkGuardError, match=r"only connect to 127\.0\.0\.1"):
        sock.connect(("93.184.216.34", 443))
    sock.close()


def test_outside_names_are_not_resolved() -> None:
    with pytest.raises((NetworkGuardError, httpx.ConnectError)):
        # the real service: a test that reaches it fails in the guard, before DNS or TCP
        httpx.get(f"{DEFAULT_API_BASE}/accounts", timeout=2)


def test_loopback_is_allowed() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket()
    client.connect(server.getsockname())
    client.close()
    server.close()
