"""The simulator's effects catalogue, fetched as the service's is and kept (no tests here)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from klingflow.catalogue import Catalogue, fetch_catalogue, keep_catalogue
from klingflow.client import KlingClient
from klingflow.sim import SimConfig, create_app, sim_transport

FETCHED = dt.datetime(2026, 1, 2, 10, 0, tzinfo=dt.UTC)
EXAMPLE_ACCOUNTS: tuple[str | None, ...] = (None, "studio@example.com", "backup@example.com")
"""Every account the example pipelines use (None: the default account)."""


def sim_catalogues(*accounts: str | None, **config: Any) -> list[Catalogue]:
    """The catalogues the simulator lists for `accounts`, fetched through KlingClient."""

    named = [(a, 1) for a in accounts if a is not None]
    config.setdefault("accounts", named or [("sim@example.com", 1)])

    async def fetch() -> list[Catalogue]:
        app = create_app(SimConfig(**config))
        async with httpx.AsyncClient(transport=sim_transport(app)) as http:
            client = KlingClient(http, token="test-token", base_url="http://testserver/v1/kling")
            return [await fetch_catalogue(client, backend="sim", account=a, now=FETCHED)
                    for a in accounts]

    return anyio.run(fetch)


def keep_sim_catalogues(root: Path, accounts: Sequence[str | None] = EXAMPLE_ACCOUNTS) -> None:
    """Keep the simulator's catalogue of `accounts` under the cache root `root`."""
    for catalogue in sim_catalogues(*accounts):
        keep_catalogue(root, catalogue)
