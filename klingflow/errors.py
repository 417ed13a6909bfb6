"""The exception tree and the exit codes.

Every error that a user can cause is a `KlingflowError`; anything else that
escapes to the CLI is a bug (exit 3). Messages are product: they say where,
what was found, what was expected and how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_INVALID = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


class KlingflowError(Exception):
    """Base of every error klingflow raises on purpose."""

    exit_code = EXIT_INVALID


class UsageError(KlingflowError):
    """Bad command-line use or environment (no token, unknown run directory...)."""


class JournalError(KlingflowError):
    """A run journal that cannot be read back; names the file and the line."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        if line is None:
            super().__init__(f"{path}: {problem}")
        else:
            super().__init__(f"{path}:{line}: {problem}; the run journal is damaged: repair "
                             f"or delete line {line}, then resume again")


class Interrupted(KlingflowError):
    """Ctrl-C (or SIGTERM) before anything was recorded: there is nothing to resume."""

    exit_code = EXIT_INTERRUPTED


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One located problem in a pipeline file: `FILE:LINE:COL: PATH: MESSAGE`.

    `line` and `col` are 1-based; `path` is the document path such as
    `steps[2] (id: b-roll).duration`, or `<document>` for the file as a whole.
    """

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"


class PipelineError(KlingflowError):
    """A pipeline file that cannot be used; carries every problem found, once each, by
    position (those at one position in the order they were found: a text's references
    as they are written)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(dict.fromkeys(problems), key=lambda p: (p.file, p.line, p.col))
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} found")


# ---- errors of the useapi.net API, one per row of its error table ---------------

# Kling answers moderation with HTTP 500 (and fails tasks with it); only the error text
# tells it apart from a fault.
_MODERATION = re.compile(r"community guidelines|CM_EXT\.|moderation|sensitive|violat", re.I)


def is_moderation(error_text: str) -> bool:
    """Whether an error text (a 500's `error`, a failed task's) is a moderation refusal."""
    return bool(_MODERATION.search(error_text))


@dataclass(eq=False)
class ApiError(KlingflowError):
    """An HTTP exchange with the API that did not give what was asked.

    Carries the context a user needs; never the token.
    """

    message: str
    status: int | None = None
    method: str = ""
    url: str = ""
    task_id: int | None = None
    retryable: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        Exception.__init__(self, str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.url}".strip()
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        task = f" (task {self.task_id})" if self.task_id is not None else ""
        return f"{where}: {status}: {self.message}{task}" if where else f"{status}: {self.message}{task}"

    @property
    def category(self) -> str:
        """A short stable name for reports: `bad_request`, `moderation`, ..."""
        return _CATEGORIES.get(type(self), "api_error")


class BadRequestError(ApiError):
    """400: a field or value the service rejects. Fail the step."""


class UnauthorizedError(ApiError):
    """401: a wrong API token. Stops the whole run."""

    exit_code = EXIT_INVALID


class PaymentRequiredError(ApiError):
    """402: no useapi.net subscription. Stops the whole run."""


class NotFoundError(ApiError):
    """404: an asset Kling cannot find (POST) or a task that is gone (poll)."""


class ForbiddenError(ApiError):
    """403 from a signed result URL that expired: fetch the task again for a fresh one.
    It never means that the task is gone."""


class RateLimitedError(ApiError):
    """429: every eligible account is busy. Wait (Retry-After if given) and try again."""

    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.retryable = True


class ModerationError(ApiError):
    """500 whose error text is a content-moderation refusal. Fails the step for good."""


class ServerError(ApiError):
    """500 that is not moderation, 502/503/504: a GET may retry; a POST's outcome is unknown."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.retryable = True


class TransportError(ApiError):
    """No usable response (timeout, connection reset). A POST's outcome is unknown."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.retryable = True


class RequestNotSentError(ApiError):
    """A request that could not be sent as built (a header HTTP does not allow): nothing
    reached the service, and sending it again cannot help."""


_CATEGORIES: dict[type, str] = {
    BadRequestError: "bad_request",
    UnauthorizedError: "unauthorized",
    PaymentRequiredError: "payment_required",
    NotFoundError: "not_found",
    ForbiddenError: "forbidden",
    RateLimitedError: "rate_limited",
    ModerationError: "moderation",
    ServerError: "server_error",
    TransportError: "transport",
    RequestNotSentError: "request_not_sent",
}


# ---- the remote cache (object storage shared by machines) -----------------------


class RemoteCacheError(KlingflowError):
    """The remote cache cannot be used as configured, or a request to it failed.

    `where` is the store's URL as the user gave it, minus anything secret (a URL
    holding a credential is refused before it is ever used).
    """

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"remote cache {where}: {message}" if where else message)


class ConditionalWriteUnsupportedError(RemoteCacheError):
    """The store refuses (or cannot do) a create-only or compare-and-swap write."""


class ClaimLostError(RemoteCacheError):
    """Another machine took over this machine's claim: it must not submit the request."""
