"""Pipeline files: loading, checking, and the frozen records everything else uses."""

from __future__ import annotations

from klingflow.spec.load import load_pipeline, read_pipeline_accounts
from klingflow.spec.pipeline import (
    STEP_ATTRIBUTES,
    Account,
    Input,
    Output,
    Pipeline,
    Position,
    PriceEntry,
    Ref,
    Step,
    Template,
    Value,
)

__all__ = [
    "STEP_ATTRIBUTES",
    "Account",
    "Input",
    "Output",
    "Pipeline",
    "Position",
    "PriceEntry",
    "Ref",
    "Step",
    "Template",
    "Value",
    "load_pipeline",
    "read_pipeline_accounts",
]
