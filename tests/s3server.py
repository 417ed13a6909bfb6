"""A real S3-compatible server on 127.0.0.1 for tests: moto's server app, served by
werkzeug in a thread, with a log of every request it answered, and writes made
atomic as S3's are.

tests/conftest.py registers it as a plugin: a test asks for the `s3` fixture: it gives a fresh bucket per test and sets the standard AWS_*
variables (fake credentials, a region, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true) for
that test only, removing any other AWS_* variable the machine has, so nothing can
reach a real account. obstore's client is Rust and does not go through Python's
sockets (so tests/conftest.py's guard cannot see it): the endpoint is what keeps it
on 127.0.0.1.

moto keeps its state per process, whatever the port, so the server is started once
per session and each test works in a bucket of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from obstore.store import S3Store
from werkzeug.serving import BaseWSGIServer, make_server

REGION = "us-east-1"
FAKE_KEY_ID = "klingflow-test-key-id"
FAKE_SECRET = "klingflow-test-secret-not-real"


@dataclass(frozen=True, slots=True)
class S3Request:
    method: str
    path: str  # /BUCKET/KEY, without the query
    query: str
    status: int
    if_match: str | None
    if_none_match: str | None


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def _recording(app: Callable[..., Iterable[bytes]],
               log: list[S3Request]) -> Callable[..., Iterable[bytes]]:
    """`app`, logging each answer, with writes one at a time: moto checks a precondition
    and then writes, with no lock between, so two racing creates could both win there.
    S3 makes each write atomic; serialising them makes moto do the same."""
    writing = threading.Lock()

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            log.append(S3Request(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                                 environ.get("QUERY_STRING", ""), int(status.split()[0]),
                                 environ.get("HTTP_IF_MATCH"), environ.get("HTTP_IF_NONE_MATCH")))
            return start_response(status, headers, exc_info)
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            return app(environ, start)
        with writing:
            return list(app(environ, start))
    return wsgi


class S3Server:
    """moto's S3 on 127.0.0.1:PORT; `requests` lists what it answered, in order."""

    def __init__(self) -> None:
        self.requests: list[S3Request] = []
        app = _recording(DomainDispatcherApplication(create_backend_app), self.requests)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True,
                                                   request_handler=_QuietHandler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join()

    def environment(self) -> dict[str, str]:
        """The variables a client (obstore, or a subprocess) needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
                "AWS_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ALLOW_HTTP": "true"}

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"kf-{uuid.uuid4().hex[:20]}"
        httpx.put(f"{self.endpoint}/{name}").raise_for_status()
        return name


    def object_names(self, bucket: str) -> list[str]:
        answer = httpx.get(f"{self.endpoint}/{bucket}", params={"list-type": "2"})
        answer.raise_for_status()
        names = ElementTree.fromstring(answer.content).findall(".//{*}Key")
        return sorted(name.text or "" for name in names)

    def requests_to(self, bucket: str, since: int = 0) -> list[S3Request]:
        prefix = f"/{bucket}"
        return [r for r in self.requests[since:]
                if r.path == prefix or r.path.startswith(prefix + "/")]


@dataclass(frozen=True, slots=True)
class S3Bucket:
    """A fresh bucket on the session's server, for one test."""

    server: S3Server
    name: str

    def url(self, prefix: str = "klingflow") -> str:
        return f"s3://{self.name}/{prefix}"

    @property
    def requests(self) -> list[S3Request]:
        return self.server.requests_to(self.name)

    def object_names(self) -> list[str]:
        return self.server.object_names(self.name)

    def put(self, key: str, data: bytes) -> None:
        """Write an object behind klingflow's back (to corrupt one, say); signed, as
        moto refuses anonymous overwrites."""
        self._store().put(key, data)

    def get(self, key: str) -> bytes:
        """An object's bytes (b"" when it is gone), read behind klingflow's back."""
        try:
            return bytes(self._store().get(key).bytes())
        except FileNotFoundError:
            return b""

    def _store(self) -> S3Store:
        return S3Store(self.name, config={"endpoint": self.server.endpoint, "region": REGION,
                                          "access_key_id": FAKE_KEY_ID,
                                          "secret_access_key": FAKE_SECRET},
                       client_options={"allow_http": True})


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.close()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    return S3Bucket(s3_server, s3_server.create_bucket())
