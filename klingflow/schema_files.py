"""The JSON Schemas shipped inside the package (`klingflow/schemas/*.schema.json`)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_NAMES = ("pipeline", "plan", "report")


def schema_text(name: str) -> str:
    """The text of `NAME.schema.json`, read the way an installed package reads it."""
    return resources.files("klingflow").joinpath(f"schemas/{name}.schema.json").read_text("utf-8")


@cache
def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text(name))
    return schema
