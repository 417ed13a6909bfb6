"""The step-kind registry is the one source of what kinds exist and what they send."""

from __future__ import annotations

import pytest

from klingflow.kinds import KINDS, UnknownKind, kind_of
from klingflow.schema_files import load_schema
from klingflow.sim import API, create_app


def test_the_schemas_kinds_are_the_registrys() -> None:
    schema = load_schema("pipeline")
    assert schema["$defs"]["step"]["properties"]["kind"]["enum"] == list(KINDS)
    for kind in KINDS.values():
        definition = schema["$defs"][kind.schema]
        assert definition["properties"]["kind"]["const"] == kind.name
        assert set(kind.fields) <= set(definition["properties"]), kind.name


def test_the_simulator_serves_every_kinds_endpoint() -> None:
    paths = {route.path for route in create_app().routes}  # type: ignore[attr-defined]
    assert {f"{API}/{kind.endpoint}" for kind in KINDS.values()} <= paths


def test_an_unknown_kind_is_an_error_not_an_effect() -> None:
    with pytest.raises(UnknownKind, match="no step kind 'video'; known: frames, effect"):
        kind_of("video")
