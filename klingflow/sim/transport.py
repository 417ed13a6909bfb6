"""Connection resets, over real sockets and in-process.

A reset answer sends its headers (with the full Content-Length) and half of its
body, then raises `SimulatedReset`: uvicorn drops the connection, so an httpx
client sees `RemoteProtocolError`; in-process, `sim_transport` turns it into
`httpx.ReadError`, as a socket reset would.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class SimulatedReset(Exception):
    """Raised by the app to drop the connection mid-response."""


class ResetResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2],
                    "more_body": True})
        raise SimulatedReset("connection reset by the simulator (fault: reset)")


class SimTransport(httpx.AsyncBaseTransport):
    """httpx.ASGITransport that runs the app's lifespan and turns resets into ReadError."""

    def __init__(self, app: Starlette) -> None:
        self._app = app
        self._inner = httpx.ASGITransport(app=app)
        self._lifespan: Any = None

    async def __aenter__(self) -> SimTransport:
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None,
                        exc: BaseException | None = None,
                        tb: TracebackType | None = None) -> None:
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.__aexit__(None, None, None)  # the client's error is not the app's

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except SimulatedReset as exc:
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request) from exc


def sim_transport(app: Starlette) -> httpx.AsyncBaseTransport:
    """An in-process transport to the simulator; use it as `AsyncClient(transport=...)`."""
    return SimTransport(app)


class _HideResets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedReset)


def hide_reset_tracebacks() -> None:
    """Keep uvicorn from logging each injected reset as an application error."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideResets) for f in logger.filters):
        logger.addFilter(_HideResets())
