"""The live effects catalogue: fetched for the accounts concerned, kept, then judged by.

`klingflow effects` fetches and keeps the catalogue of each account of a pipeline
(or of the default account). `run` calls `judged_by_live_effects` right after its
backend is up: it fetches the catalogue of every account an effect step may run on
(GET only) and loads the pipeline again against it, so a bad effect stops the run
before anything is uploaded or submitted.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx

from klingflow.cache import CACHE_DIR_NAME, default_cache_root
from klingflow.catalogue import Catalogue, FetchedCatalogues, fetch_catalogue, keep_catalogue
from klingflow.client import KlingClient
from klingflow.errors import UsageError
from klingflow.spec import load_pipeline, read_pipeline_accounts
from klingflow.spec.pipeline import Pipeline

if TYPE_CHECKING:
    from klingflow.runner import Backend


@dataclass(frozen=True, slots=True)
class KeptCatalogue:
    """A catalogue just fetched, and where it is kept."""

    catalogue: Catalogue
    path: Path


def catalogue_root(pipeline_path: Path | None) -> Path:
    """Where catalogues are kept: the pipeline's cache root (KLINGFLOW_HOME, else
    `.klingflow/` beside it); with no pipeline, KLINGFLOW_HOME, else `.klingflow/`
    in the current directory."""
    if pipeline_path is not None:
        return default_cache_root(pipeline_path)
    home = os.environ.get("KLINGFLOW_HOME")
    return Path(home) if home else Path(CACHE_DIR_NAME)


def effect_accounts(pipeline: Pipeline) -> list[str | None]:
    """The accounts (emails; None: the default account) whose catalogue judges the
    pipeline's effect steps: a step's own account, else every declared one."""
    emails = {a.alias: a.email for a in pipeline.accounts.values()}
    found: dict[str | None, None] = {}
    for step in pipeline.steps:
        if step.kind != "effect":
            continue
        if step.account is not None:
            found[emails[step.account]] = None
        else:
            found.update(dict.fromkeys(emails.values() or [None]))
    return list(found)


def fetch_and_keep(backend: Backend, accounts: Sequence[str | None],
                   root: Path) -> list[KeptCatalogue]:
    """GET /videos/effects for each account, each kept under `root` as the newest."""
    catalogues = anyio.run(_fetch_all, backend, list(accounts))
    return [KeptCatalogue(c, keep_catalogue(root, c)) for c in catalogues]


async def _fetch_all(backend: Backend, accounts: list[str | None]) -> list[Catalogue]:
    async with httpx.AsyncClient() as http:
        client = KlingClient(http, token=backend.token, base_url=backend.base_url)
        return [await fetch_catalogue(client, backend=backend.name, account=account)
                for account in accounts]


def judged_by_live_effects(pipeline: Pipeline, backend: Backend) -> Pipeline:
    """The pipeline judged against the live catalogues of its effect steps' accounts
    (fetched now and kept); PipelineError with every problem if it does not hold.
    A pipeline without effect steps is returned as it is, with no request made."""
    accounts = effect_accounts(pipeline)
    if not accounts:
        return pipeline
    kept = fetch_and_keep(backend, accounts, default_cache_root(pipeline.path))
    return load_pipeline(pipeline.path, effects=FetchedCatalogues(k.catalogue for k in kept))


def effects_command(args: argparse.Namespace) -> list[KeptCatalogue]:
    """`klingflow effects [PIPELINE] [--sim]`: the catalogue of each account of the
    pipeline (or of the default account), from the backend `run` would use, kept."""
    from klingflow.runner import NO_TOKEN, open_backend

    path = Path(args.pipeline) if args.pipeline else None
    accounts = read_pipeline_accounts(path) if path else {}
    if not args.sim and not os.environ.get("USEAPI_TOKEN"):
        raise UsageError(NO_TOKEN)
    root = catalogue_root(path)
    emails: list[str | None] = [a.email for a in accounts.values()] or [None]
    with open_backend(args, accounts=[(a.email, a.max_jobs) for a in accounts.values()],
                      accept_urls=set(), cache_root=root) as backend:
        return fetch_and_keep(backend, emails, root)
