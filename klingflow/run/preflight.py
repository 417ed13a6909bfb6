"""Before anything is uploaded or paid: reach the service and know its accounts.

Every request klingflow sends names its account (`email`), so that each task is
polled with the account that created it. A pipeline without `accounts:` runs on the
accounts the service has (GET /accounts, their maxJobs as limits); a pipeline with
them must name accounts the service has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from klingflow.client import KlingClient
from klingflow.errors import ApiError, TransportError, UsageError
from klingflow.policy import Retrier, RetriesExhausted, RetryPolicy
from klingflow.run.results import Event
from klingflow.spec.pipeline import Account

SERVICE = "(service)"  # the progress line's name for what is not a step
_T = TypeVar("_T")


def reaching(within: float) -> RetryPolicy:
    """Waiting for a service that cannot be reached: visible, and bounded."""
    return RetryPolicy(attempts=None, within=within, base=1.0, cap=10.0, floor=0.5,
                       retryable=lambda error: isinstance(error, ApiError) and error.retryable)


async def service_accounts(client: KlingClient, declared: Mapping[str, Account], *,
                           base_url: str, within: float, retrier: Retrier,
                           on_event: Callable[[Event], None]) -> dict[str, Account]:
    """The accounts a run submits with, by alias: the `declared` ones (a pipeline's
    accounts:), else the service's; UsageError (exit 2) when the service cannot be
    reached within `within` seconds, refuses the token, or lacks a declared account."""
    listed = await _listed(client, base_url=base_url, within=within, retrier=retrier,
                           on_event=on_event)
    if declared:
        _check_declared(declared, listed, base_url)
        return dict(declared)
    if not listed:
        raise UsageError(f"the service at {base_url} has no Kling account: add one at "
                         "useapi.net (POST /accounts), or declare accounts: in the pipeline")
    return {email: Account(email, email, _max_jobs(entry)) for email, entry in listed.items()}


async def _listed(client: KlingClient, *, base_url: str, within: float, retrier: Retrier,
                  on_event: Callable[[Event], None]) -> Mapping[str, Any]:
    listed = await before_sending(lambda: client.accounts(once=True), base_url=base_url,
                                  within=within, retrier=retrier, on_event=on_event)
    return listed if isinstance(listed, Mapping) else {}


async def before_sending(call: Callable[[], Awaitable[_T]], *, base_url: str, within: float,
                         retrier: Retrier, on_event: Callable[[Event], None]) -> _T:
    """`call()`, a request made before anything is uploaded or paid: a service that
    cannot be reached or answers 5xx is waited for visibly, within `within` seconds;
    then, or on any other API error, UsageError (exit 2)."""
    backoff = retrier.backoff(reaching(within))
    while True:
        try:
            return await call()
        except ApiError as exc:
            await _wait_or_stop(exc, backoff, base_url, on_event)


async def _wait_or_stop(exc: ApiError, backoff: Any, base_url: str,
                        on_event: Callable[[Event], None]) -> None:
    try:
        delay = backoff.next_delay(exc)
    except RetriesExhausted:
        raise UsageError(f"cannot reach the service at {base_url} after "
                         f"{backoff.waited:.0f} s: {_cause(exc)}; nothing was sent") from exc
    except ApiError:
        raise UsageError(f"{exc}; nothing was sent") from exc
    on_event(Event(SERVICE, "waiting", f"cannot reach {base_url} ({_cause(exc)}); "
                                       f"trying again in {delay:.1f} s"))
    await backoff.wait_for(delay)


def _cause(exc: ApiError) -> str:
    return exc.message if isinstance(exc, TransportError) else str(exc)


def _check_declared(declared: Mapping[str, Account], listed: Mapping[str, Any],
                    base_url: str) -> None:
    missing = [a for a in declared.values() if a.email not in listed]
    if missing:
        names = ", ".join(f"{a.alias} <{a.email}>" for a in missing)
        has = ", ".join(sorted(listed)) or "none"
        raise UsageError(f"the service at {base_url} has no account {names} (it has: "
                         f"{has}); nothing was sent")


def _max_jobs(entry: Any) -> int:
    jobs = entry.get("maxJobs") if isinstance(entry, Mapping) else None
    return jobs if isinstance(jobs, int) and 1 <= jobs <= 50 else 1
