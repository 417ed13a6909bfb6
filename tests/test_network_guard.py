import os
import socket
import subprocess
import sys

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


def test_a_child_process_inherits_no_token_address_or_remote_from_the_shell() -> None:
    """Children (the CLI in a subprocess) are not under the socket guard: without the
    shell's USEAPI_TOKEN they cannot spend real credits, whatever they run."""
    names = ("USEAPI_TOKEN", "KLINGFLOW_API_BASE", "KLINGFLOW_REMOTE", "KLINGFLOW_HOME")
    seen = subprocess.run([sys.executable, "-c", f"import os; print([n for n in {names!r} "
                           "if n in os.environ])"], env=dict(os.environ), capture_output=True,
                          text=True, check=True).stdout
    assert seen == "[]\n"
