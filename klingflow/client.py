"""KlingClient: one method per useapi.net Kling endpoint klingflow uses.

The client speaks HTTP through an injected `httpx.AsyncClient`, turns answers
into typed results, and every failure into one `ApiError` subclass per row of
the API's error table. The token lives only in the Authorization header.

GETs are retried on transient errors (bounded, backoff with jitter); generation
POSTs never are: their outcome may be unknown, and recovering it is the
executor's job (the API has no idempotency key).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from klingflow.errors import (
    ApiError,
    BadRequestError,
    ForbiddenError,
    ModerationError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    RequestNotSentError,
    ServerError,
    TransportError,
    UnauthorizedError,
    is_moderation,
)
from klingflow.kinds import EFFECT, FRAMES
from klingflow.policy import Retrier, RetryPolicy, Sleep

DEFAULT_API_BASE = "https://api.useapi.net/v1/kling"
API_CALLS_AT_ONCE = 12
DOWNLOADS_AT_ONCE = 4
CONNECTIONS = API_CALLS_AT_ONCE + DOWNLOADS_AT_ONCE
"""For the httpx.AsyncClient a KlingClient is given (`lanes.http_client`).
KlingClient keeps its own calls within it, so requests never queue inside httpx."""
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DOWNLOAD_TIMEOUT = httpx.Timeout(120.0, connect=10.0)

READS = RetryPolicy(attempts=4, base=0.5, cap=30.0)
"""GETs and uploads: up to 4 calls on transient errors, honouring Retry-After."""


@dataclass(frozen=True, slots=True)
class Video:
    url: str
    work_id: int | None
    width: int | None
    height: int | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class Task:
    """A task as GET /tasks/{id} (or a generation POST) describes it."""

    id: int
    status_name: str
    status_final: bool
    message: str
    error: str
    video: Video | None
    create_time: int | None  # ms since the epoch
    input_urls: tuple[str, ...]
    arguments: Mapping[str, str]
    eta_ms: int | None = None  # etaTime: a hint of the time left (unit undocumented)

    @property
    def succeeded(self) -> bool:
        return self.status_final and self.status_name == "succeed"

    @property
    def failed(self) -> bool:
        return self.status_final and self.status_name != "succeed"


@dataclass(frozen=True, slots=True)
class SchedulerEntry:
    """A task useapi.net is tracking right now (GET /scheduler)."""

    task_id: int
    email: str
    reply_ref: str | None


@dataclass(frozen=True, slots=True)
class Asset:
    url: str
    file_name: str


def parse_task(data: Mapping[str, Any]) -> Task:
    """A task from either the documented envelope `{task: {...}, ...}` or an old flat `{id}`."""
    envelope = data.get("task")
    inner: Mapping[str, Any] = envelope if isinstance(envelope, Mapping) else data
    info = inner.get("taskInfo") or {}
    status = _status_source(data, inner)
    return Task(
        id=int(inner["id"]),
        status_name=str(status.get("status_name") or ""),
        status_final=bool(status.get("status_final")),
        message=str(data.get("message") or ""),
        error=str(data.get("error") or ""),
        video=_parse_video(data.get("works") or []),
        create_time=inner.get("createTime"),
        input_urls=tuple(str(i.get("url")) for i in info.get("inputs") or [] if i.get("url")),
        arguments={str(a.get("name")): str(a.get("value")) for a in info.get("arguments") or []},
        eta_ms=_eta(data.get("etaTime")),
    )


def _eta(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _status_source(data: Mapping[str, Any], inner: Mapping[str, Any]) -> Mapping[str, Any]:
    return data if "status_name" in data else inner


def _parse_video(works: list[Mapping[str, Any]]) -> Video | None:
    for work in works:
        resource = work.get("resource") or {}
        if work.get("contentType") == "video" and resource.get("resource"):
            return Video(url=str(resource["resource"]), work_id=work.get("workId"),
                         width=resource.get("width"), height=resource.get("height"),
                         duration_ms=resource.get("duration"))
    return None


def classify(response: httpx.Response) -> ApiError:
    """The typed error for a non-2xx answer, per the API's error table. The service's
    text is shown and kept in reports: any echo of the token in it is masked."""
    error_text, message = (_without_token(text, response.request)
                           for text in _error_texts(response))
    kind, text = _kind_of(response.status_code, error_text, message)
    error = kind(text, status=response.status_code, method=response.request.method,
                 url=_redact(response.request.url))
    if isinstance(error, RateLimitedError):
        error.retry_after = _retry_after(response)
    return error


def _kind_of(status: int, error_text: str, message: str) -> tuple[type[ApiError], str]:
    if status == 400:
        return BadRequestError, error_text
    if status == 401:
        return UnauthorizedError, f"{error_text}: check USEAPI_TOKEN"
    if status == 402:
        return PaymentRequiredError, f"{error_text}: the useapi.net subscription is missing"
    if status == 403:
        return ForbiddenError, error_text
    if status == 404:
        return NotFoundError, error_text
    if status == 429:
        return RateLimitedError, error_text
    if status == 500 and is_moderation(error_text):
        return ModerationError, error_text
    return ServerError, f"{error_text} ({message})" if message else error_text


def _without_token(text: str, request: httpx.Request) -> str:
    """`text` with the request's token (from its Authorization header) masked."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return text.replace(token, "***") if len(token) >= 4 else text


def _error_texts(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip()[:300] or response.reason_phrase), ""
    if not isinstance(body, Mapping):
        return str(body)[:300], ""
    return str(body.get("error") or response.reason_phrase), str(body.get("message") or "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _redact(url: httpx.URL | str) -> str:
    """The URL without user name, password, query or fragment: signed media URLs carry
    credentials in their query, and no message may show a password."""
    try:
        return str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(an address that is not a valid URL)"


class KlingClient:
    """The useapi.net Kling API over an injected `httpx.AsyncClient`."""

    def __init__(self, http: httpx.AsyncClient, *, token: str, base_url: str = DEFAULT_API_BASE,
                 reads: RetryPolicy = READS, sleep: Sleep = anyio.sleep,
                 rng: random.Random | None = None) -> None:
        self._http = http
        self._headers = {"Authorization": f"Bearer {token}"}
        self._base = base_url.rstrip("/") + "/"
        self._reads = reads
        self._retrier = Retrier(sleep=sleep, rng=rng)
        self._calls = anyio.CapacityLimiter(API_CALLS_AT_ONCE)
        self._downloads = anyio.CapacityLimiter(DOWNLOADS_AT_ONCE)

    # ---- generation (never retried here) ----------------------------------

    async def submit(self, endpoint: str, body: Mapping[str, Any]) -> Task:
        """POST a generation request; the task as created (status submitted)."""
        response = await self._send("POST", endpoint, json=dict(body))
        return parse_task(response.json())

    async def submit_frames(self, body: Mapping[str, Any]) -> Task:
        return await self.submit(FRAMES.endpoint, body)

    async def submit_effect(self, body: Mapping[str, Any]) -> Task:
        return await self.submit(EFFECT.endpoint, body)

    # ---- reads (retried on transient errors) ------------------------------

    async def get_task(self, task_id: int, *, email: str | None) -> Task:
        try:
            data = await self._get_json(f"tasks/{task_id}", _email(email))
        except ApiError as exc:
            exc.task_id = task_id
            raise
        return parse_task(data)

    async def list_tasks(self, *, email: str | None, created_after_ms: int | None = None,
                         page_size: int = 50) -> list[Task]:
        params: dict[str, Any] = {**_email(email), "contentType": "video", "pageSize": page_size}
        if created_after_ms is not None:
            params["createdAfter"] = created_after_ms
        data = await self._get_json("tasks", params)
        entries = data.get("history", []) if isinstance(data, Mapping) else data
        return [parse_task(entry) for entry in entries]

    async def scheduler(self) -> list[SchedulerEntry]:
        data = await self._get_json("scheduler", {})
        return [SchedulerEntry(task_id=int(e["id"]), email=str(e.get("email") or ""),
                               reply_ref=e.get("replyRef")) for e in data]

    async def scheduler_available(self) -> Any:
        return await self._get_json("scheduler/available", {})

    async def effects(self, *, email: str | None = None) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = await self._get_json("videos/effects", _email(email))
        return data

    async def accounts(self, *, once: bool = False) -> dict[str, Any]:
        """GET accounts; `once`: no retries here (the caller waits in its own way)."""
        if once:
            response = await self._send("GET", "accounts", params={})
            data: dict[str, Any] = response.json()
            return data
        data = await self._get_json("accounts", {})
        return data

    async def account(self, email: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._get_json(f"accounts/{email}", {})
        return data

    # ---- files -----------------------------------------------------------------

    async def upload_asset(self, data: bytes, content_type: str, *, email: str | None) -> Asset:
        """POST assets/: the raw file as the body. Uploads create nothing billable: a
        transient failure is retried like a GET."""
        response = await self._with_retries(
            lambda: self._send("POST", "assets/", params=_email(email), content=data,
                               headers={"Content-Type": content_type}))
        body = response.json()
        return Asset(url=str(body["url"]), file_name=str(body.get("fileName") or ""))

    async def download(self, url: str, dest: Path) -> str:
        """Stream a result file to `dest` (written whole or not at all); its SHA-256,
        hashed as it arrives.

        A signed URL that expired answers 403: `ForbiddenError` - fetch the task again.
        """
        part = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        try:
            async with self._downloads, \
                    self._http.stream("GET", url, timeout=DOWNLOAD_TIMEOUT) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise classify(response)
                with part.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
                        digest.update(chunk)
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeEncodeError) as exc:
            raise _not_answered(exc, "GET", url) from _shown_cause(exc)
        part.replace(dest)
        return digest.hexdigest()

    # ---- plumbing ----------------------------------------------------------

    async def _get_json(self, path: str, params: Mapping[str, Any]) -> Any:
        response = await self._with_retries(lambda: self._send("GET", path, params=params))
        return response.json()

    async def _with_retries(self, call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        return await self._retrier.call(self._reads, call)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self._base + path
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            async with self._calls:
                response = await self._http.request(method, url, headers=headers,
                                                    timeout=DEFAULT_TIMEOUT, **kwargs)
        except (httpx.HTTPError, UnicodeEncodeError) as exc:
            raise _not_answered(exc, method, url) from _shown_cause(exc)
        if response.is_success:
            return response
        raise classify(response)


def _email(email: str | None) -> dict[str, str]:
    return {"email": email} if email else {}


HEADER_REFUSED = ("a request header holds a character that HTTP does not allow (the header "
                  "is not shown); check USEAPI_TOKEN")


def _not_answered(exc: Exception, method: str, url: str) -> ApiError:
    """The error of a request that got no response. One that could not even be sent
    because of a header is said so without the header: h11 quotes the value (the
    token) in its message, httpx the character it cannot encode."""
    if _quotes_a_header(exc):
        return RequestNotSentError(HEADER_REFUSED, method=method, url=_redact(url))
    return TransportError(_describe(exc), method=method, url=_redact(url))


def _quotes_a_header(exc: Exception) -> bool:
    return isinstance(exc, UnicodeEncodeError) or (
        isinstance(exc, httpx.LocalProtocolError) and "header" in str(exc).lower())


def _shown_cause(exc: Exception) -> Exception | None:
    """What a traceback may show as the cause: never an error that quotes a header."""
    return None if _quotes_a_header(exc) else exc


def _describe(exc: Exception) -> str:
    kind = type(exc).__name__
    text = str(exc)
    return f"{kind}: {text}" if text else kind
