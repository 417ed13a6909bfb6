"""The HTTP client a run talks to the service with.

httpcore's connection pool looks at every connection it holds twice for each request
(is it idle; has it expired: a poll() and a getpeername() each), and counts the idle
ones again for each of them. At the 16 connections a run keeps open, that was a third
of klingflow's CPU per request. `Lanes` keeps one single-connection pool per lane and
lends a free lane to each request until its response is closed, so a pool only ever
looks at its one connection.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable

import anyio
import httpx

ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)


def _one_connection(tls: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(limits=ONE_CONNECTION, verify=tls)


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def http_client(connections: int, *, base_url: str) -> httpx.AsyncClient:
    """An AsyncClient for the service at `base_url`, with at most `connections`
    requests (and connections) at once.

    Behind a proxy (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY) it is httpx's own pool, which
    routes through the proxy as the environment says; but a service on this machine
    (the simulator) is always reached directly: a proxy's 127.0.0.1 is not ours."""
    proxied = {"http", "https", "all"} & set(urllib.request.getproxies())
    if proxied and httpx.URL(base_url).host not in LOOPBACK:
        return httpx.AsyncClient(limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections))
    tls = httpx.create_ssl_context()  # one for all lanes: each takes 30 ms to make
    return httpx.AsyncClient(transport=Lanes(connections, make=lambda: _one_connection(tls)))


class Lanes(httpx.AsyncBaseTransport):
    """`count` transports of one connection each; a request waits for a free one and
    keeps it until its response is closed (read whole, or its stream closed)."""

    def __init__(self, count: int, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._all = [make() for _ in range(count)]
        self._free = deque(self._all)
        self._slots = anyio.Semaphore(count)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()
        lane = self._free.popleft()
        release = _Release(lambda: self._give_back(lane))
        try:
            response = await lane.handle_async_request(request)
        except BaseException:
            release()
            raise
        response.stream = _ReleasingStream(response.stream, release)
        return response

    def _give_back(self, lane: httpx.AsyncBaseTransport) -> None:
        self._free.append(lane)
        self._slots.release()

    async def aclose(self) -> None:
        for lane in self._all:
            await lane.aclose()


class _Release:
    """Calls `give_back` once, however often it is called."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back

    def __call__(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its lane back when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream,
                 release: _Release) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner = inner
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._release()
