"""KlingClient turns every row of the API's error table into its own type.

These use httpx.MockTransport to produce answers the simulator has no reason
to give (402, Retry-After, non-JSON bodies); the client's behaviour against
the simulator itself is in tests/test_client.py.
"""

from __future__ import annotations

import httpx
import pytest

from klingflow.client import KlingClient
from klingflow.errors import (
    ApiError,
    BadRequestError,
    ModerationError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedError,
)

TOKEN = "user:1-fake-secret"
BASE = "http://127.0.0.1:9/v1/kling"
MODERATION = {"error": "The content you uploaded appears to violate the community guidelines. "
                       "(CM_EXT.POther)", "message": "Service busy (CM_EXT.POther)"}


def _client(status: int, body: object, headers: dict[str, str] | None = None,
            calls: list[httpx.Request] | None = None) -> KlingClient:
    def answer(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request)
        return httpx.Response(status, json=body, headers=headers)

    async def no_sleep(_: float) -> None:
        return None

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return KlingClient(http, token=TOKEN, base_url=BASE, sleep=no_sleep)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "body", "kind", "text"), [
    (400, {"error": "image or image_tail is required"}, BadRequestError,
     "POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: HTTP 400: "
     "image or image_tail is required"),
    (401, {"error": "Unauthorized", "code": 401}, UnauthorizedError,
     "POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: HTTP 401: "
     "Unauthorized: check USEAPI_TOKEN"),
    (402, {"error": "Payment Required"}, PaymentRequiredError,
     "POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: HTTP 402: "
     "Payment Required: the useapi.net subscription is missing"),
    (404, {"error": "Sorry, the requested resource was not found (VALID.ResourceNotFound)",
           "message": "Not Found"}, NotFoundError,
     "POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: HTTP 404: "
     "Sorry, the requested resource was not found (VALID.ResourceNotFound)"),
    (500, MODERATION, ModerationError,
     "POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: HTTP 500: "
     "The content you uploaded appears to violate the community guidelines. (CM_EXT.POther)"),
    (500, {"error": "Internal Server Error", "message": "Service busy"}, ServerError,
     "POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: HTTP 500: "
     "Internal Server Error (Service busy)"),
    (503, {"error": "Service Unavailable"}, ServerError,
     "POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: HTTP 503: Service Unavailable"),
])
async def test_each_error_row_has_its_type_and_message(status: int, body: object,
                                                       kind: type[ApiError], text: str) -> None:
    calls: list[httpx.Request] = []
    client = _client(status, body, calls=calls)
    with pytest.raises(kind) as caught:
        await client.submit_frames({"image": "x"})
    assert str(caught.value) == text
    assert TOKEN not in str(caught.value)
    assert len(calls) == 1  # a generation POST is never retried by the client


@pytest.mark.anyio
async def test_moderation_is_told_by_the_error_text_not_the_message() -> None:
    client = _client(500, {"error": "Internal Server Error",
                           "message": "Service busy (CM_EXT.POther)"})
    with pytest.raises(ServerError):
        await client.submit_effect({"effect": "rocket", "image": "x"})


@pytest.mark.anyio
async def test_429_carries_retry_after() -> None:
    client = _client(429, {"error": "busy"}, headers={"Retry-After": "7"})
    with pytest.raises(RateLimitedError) as caught:
        await client.submit_frames({"image": "x"})
    assert caught.value.retry_after == 7.0
    assert caught.value.category == "rate_limited"


@pytest.mark.anyio
async def test_gets_are_retried_on_transient_errors_then_give_up() -> None:
    calls: list[httpx.Request] = []
    client = _client(502, {"error": "Bad Gateway"}, calls=calls)
    with pytest.raises(ServerError) as caught:
        await client.get_task(42, email="a@example.com")
    assert len(calls) == 4
    assert caught.value.task_id == 42
    assert str(caught.value).endswith("HTTP 502: Bad Gateway (task 42)")


@pytest.mark.anyio
async def test_token_only_in_the_authorization_header() -> None:
    calls: list[httpx.Request] = []
    client = _client(200, {"task": {"id": 1, "status": 5, "status_name": "submitted",
                                    "status_final": False}}, calls=calls)
    await client.submit_frames({"image": "x"})
    request = calls[0]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(request.url) and TOKEN.encode() not in request.content


@pytest.mark.anyio
async def test_an_old_flat_task_answer_is_accepted() -> None:
    client = _client(200, {"id": 99, "status": 5, "status_name": "submitted",
                           "status_final": False})
    task = await client.submit_frames({"image": "x"})
    assert task.id == 99 and not task.status_final


@pytest.mark.anyio
async def test_a_timeout_is_a_transport_error_with_no_status() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    client = KlingClient(http, token=TOKEN, base_url=BASE)
    with pytest.raises(TransportError) as caught:
        await client.submit_frames({"image": "x"})
    assert str(caught.value) == ("POST http://127.0.0.1:9/v1/kling/videos/image2video-frames: "
                                 "no response: ReadTimeout: timed out")
