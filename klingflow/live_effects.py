"""The live effects catalogue: fetched for the accounts concerned, kept, then judged by.

`klingflow effects` fetches and keeps the catalogue of each account of a pipeline
(or of the service's accounts). `run` calls `judged_by_live_effects` once the
service's accounts are known: it fetches the catalogue of every account an effect
step may run on (GET only) and loads the pipeline again against it, so a bad effect
stops the run before anything is uploaded or submitted.

A step that names no account may run on any account of the run, so it is judged by
what all of their catalogues allow (kept as the default account's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from klingflow.catalogue import (
    Catalogue,
    FetchedCatalogues,
    common_catalogue,
    fetch_catalogue,
    keep_catalogue,
)
from klingflow.client import KlingClient
from klingflow.plan import Plan, build_plan
from klingflow.spec import load_pipeline
from klingflow.spec.pipeline import Account


@dataclass(frozen=True, slots=True)
class KeptCatalogue:
    """A catalogue just fetched, and where it is kept."""

    catalogue: Catalogue
    path: Path


async def fetch_and_keep(client: KlingClient, *, backend: str, emails: Sequence[str],
                         root: Path) -> list[KeptCatalogue]:
    """GET /videos/effects for each account, each kept under `root` as the newest; what
    they all allow is kept too, as the default account's (for steps that name none)."""
    catalogues = [await fetch_catalogue(client, backend=backend, account=email)
                  for email in emails]
    kept = [KeptCatalogue(c, keep_catalogue(root, c)) for c in catalogues]
    if catalogues:
        keep_catalogue(root, common_catalogue(catalogues))
    return kept


async def judged_by_live_effects(plan: Plan, client: KlingClient, *, backend: str,
                                 accounts: Mapping[str, Account], root: Path) -> Plan:
    """The plan of the pipeline judged against the live catalogues of its accounts
    (fetched now and kept); PipelineError with every problem if it does not hold. A
    pipeline without effect steps is returned as it is, with no request made."""
    pipeline = plan.pipeline
    if not any(step.kind == "effect" for step in pipeline.steps):
        return plan
    kept = await fetch_and_keep(client, backend=backend,
                                emails=[a.email for a in accounts.values()], root=root)
    catalogues = [k.catalogue for k in kept]
    judged = load_pipeline(pipeline.path, effects=FetchedCatalogues(
        [*catalogues, common_catalogue(catalogues)]))
    return build_plan(judged)
