"""The simulator as an ASGI app: thin routes over `SimService`.

The API lives under /v1/kling (as on api.useapi.net); uploads, result clips and the
inspection endpoints (ledger, stats) under /_sim.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from klingflow import media
from klingflow.kinds import KINDS
from klingflow.sim import replies
from klingflow.sim.config import SimConfig
from klingflow.sim.faults import Visit
from klingflow.sim.forms import INVALID, read_fields
from klingflow.sim.images import pattern_image
from klingflow.sim.render import jpeg
from klingflow.sim.service import Outcome, SimService
from klingflow.sim.state import body_hash
from klingflow.sim.transport import ResetResponse

API = "/v1/kling"
Handler = Callable[[Request, SimService, Visit], Awaitable[Response]]
Identity = Callable[[Request], Awaitable[str]]


# ---- plumbing: auth, identity, faults common to every API route --------------------------


def _service(request: Request) -> SimService:
    service: SimService = request.app.state.sim
    return service


def _json(body: Any, status: int = 200, *, reset: bool = False) -> Response:
    cls = ResetResponse if reset else Response
    return cls(json.dumps(body, separators=(",", ":")), status, media_type="application/json")


def _error(err: replies.SimError) -> Response:
    response = _json(err.body, err.status)
    response.headers.update(err.headers)
    return response


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


async def _path_identity(request: Request) -> str:
    return f"{request.method} {request.url.path}?{request.url.query}"


async def _task_identity(request: Request) -> str:
    return f"task:{request.path_params['task_id']}"


async def _body_identity(request: Request) -> str:
    return f"{request.url.path} {body_hash(await _body(request))}"


async def _body(request: Request) -> dict[str, Any]:
    """The request's fields, from JSON or a form; cached on the request."""
    fields: dict[str, Any] | None = getattr(request.state, "fields", None)
    if fields is None:
        fields = request.state.fields = read_fields(
            request.headers.get("content-type", ""), await request.body())
    return fields


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def api_route(path: str, handler: Handler, *, method: str = "GET",
              identity: Identity = _path_identity, generic_faults: bool = True) -> Route:
    label = f"{method} {path.replace(':int', '')}"

    async def endpoint(request: Request) -> Response:
        service = _service(request)
        service.state.requests[label] += 1
        if not _authorized(request, service.config.token):
            return _json(replies.UNAUTHORIZED, 401)
        service.origin = _origin(request)
        visit = service.visit(await identity(request))
        await _maybe_slow(service, visit)
        if generic_faults and service.state.plan.hits("500", visit):
            return _json(replies.SERVER_ERROR, 500)
        try:
            response = await handler(request, service, visit)
        except replies.SimError as err:
            return _error(err)
        if generic_faults and service.state.plan.hits("reset", visit):
            return ResetResponse(response.body, response.status_code, dict(response.headers))
        return response

    return Route(API + path, endpoint, methods=[method])


async def _maybe_slow(service: SimService, visit: Visit) -> None:
    if service.state.plan.hits("slow", visit):
        await anyio.sleep(service.config.slow_seconds / service.config.speed)


# ---- API handlers ------------------------------------------------------------------------


def _generation(endpoint: str) -> Handler:
    async def handler(request: Request, service: SimService, visit: Visit) -> Response:
        body = await _body(request)
        if INVALID in body:
            raise replies.bad_request("The request body is not a JSON object")
        outcome: Outcome = service.generate(endpoint, body, visit, _origin(request))
        return _json(outcome.body, outcome.status, reset=outcome.reset)

    return handler


async def _poll(request: Request, service: SimService, visit: Visit) -> Response:
    expire = service.state.plan.hits("expire", visit)
    reply = service.poll(request.path_params["task_id"], request.query_params.get("email") or None,
                         expire=expire, origin=_origin(request))
    return _json(reply)


async def _history(request: Request, service: SimService, visit: Visit) -> Response:
    return _json(service.history(dict(request.query_params), _origin(request)))


async def _upload(request: Request, service: SimService, visit: Visit) -> Response:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    reply = service.upload(request.query_params.get("email") or None, kind,
                           await request.body(), _origin(request))
    return _json(reply)


async def _effects(request: Request, service: SimService, visit: Visit) -> Response:
    return _json(service.effects(request.query_params.get("email") or None, _origin(request)))


async def _accounts(request: Request, service: SimService, visit: Visit) -> Response:
    return _json(service.accounts())


async def _account(request: Request, service: SimService, visit: Visit) -> Response:
    return _json(service.account(request.path_params["email"]))


async def _scheduler(request: Request, service: SimService, visit: Visit) -> Response:
    return _json(service.scheduler())


async def _available(request: Request, service: SimService, visit: Visit) -> Response:
    return _json(service.available())


def _api_routes() -> list[Route]:
    body = {"method": "POST", "identity": _body_identity, "generic_faults": False}
    return [
        *(api_route(f"/{kind.endpoint}", _generation(kind.endpoint_name), **body)  # type: ignore[arg-type]
          for kind in KINDS.values()),
        api_route("/videos/effects", _effects),
        api_route("/tasks/{task_id:int}", _poll, identity=_task_identity),
        api_route("/tasks", _history),
        api_route("/tasks/", _history),
        api_route("/assets", _upload, method="POST"),
        api_route("/assets/", _upload, method="POST"),
        api_route("/accounts", _accounts),
        api_route("/accounts/{email}", _account),
        api_route("/scheduler", _scheduler),
        api_route("/scheduler/available", _available),
    ]


# ---- /_sim: files and inspection -------------------------------------------------------------


async def _media(request: Request) -> Response:
    service = _service(request)
    service.state.requests["GET /_sim/media"] += 1
    task = service.finished_task(request.path_params["task_id"])
    if task is None:
        return _json(replies.NOT_FOUND, 404)
    name: str = request.path_params["name"]
    if name.endswith(".jpg"):
        return Response(await service.renderer.cover(task), media_type="image/jpeg")
    if request.query_params.get("sig") not in task.signatures:
        return _json(replies.EXPIRED, 403)
    return FileResponse(await service.renderer.clip(task), media_type="video/mp4")


async def _asset(request: Request) -> Response:
    asset = _service(request).asset(request.path_params["name"])
    if asset is None:
        return _json(replies.NOT_FOUND, 404)
    return Response(asset.content(), media_type=asset.content_type)


async def _effect_cover(request: Request) -> Response:
    return Response(jpeg(pattern_image(f"effect:{request.path_params['name']}")),
                    media_type="image/jpeg")


async def _effect_video(request: Request) -> Response:
    effect = _service(request).effect(request.path_params["name"])
    if effect is None or effect.motion not in media.MOTIONS:
        return _json(replies.NOT_FOUND, 404)
    picture = pattern_image(f"effect:{effect.name}")
    clip = await _service(request).renderer.preview(effect.name, effect.motion, picture)
    return FileResponse(clip, media_type="video/mp4")


async def _ledger(request: Request) -> Response:
    return _json(_service(request).ledger())


async def _stats(request: Request) -> Response:
    return _json(_service(request).stats())


def _sim_routes() -> list[Route]:
    return [
        Route("/_sim/media/{task_id:int}/{name}", _media),
        Route("/_sim/assets/{name}", _asset),
        Route("/_sim/effects/{name}.jpg", _effect_cover),
        Route("/_sim/effects/{name}.mp4", _effect_video),
        Route("/_sim/ledger", _ledger),
        Route("/_sim/stats", _stats),
    ]


def create_app(config: SimConfig | None = None) -> Starlette:
    """The simulator's ASGI app; `app.state.sim` is its `SimService`."""
    service = SimService(config or SimConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(service.notifier.run, group)
                try:
                    yield
                finally:
                    group.cancel_scope.cancel()
        finally:  # once no delivery can run any more
            service.close()

    app = Starlette(routes=_api_routes() + _sim_routes(), lifespan=lifespan)
    app.state.sim = service
    return app
