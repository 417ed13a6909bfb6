"""The catalogue as fetched: parsed from the service's answer, kept per backend and account."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klingflow.catalogue import (
    Catalogue,
    CatalogueError,
    EffectEntry,
    KeptCatalogues,
    catalogue_path,
    keep_catalogue,
    load_catalogue,
    parse_catalogue,
)

AT = "2026-01-02T10:00:00Z"


def test_only_what_the_service_states_is_used() -> None:
    answer = [
        {"name": "rocket", "caption": "Rocket", "supportedModelMode": ["std", "pro"],
         "effectSupported": True, "promptSupported": True, "hot": True},
        {"name": "quiet", "supportedModelMode": ["pro"], "effectSupported": True},
        {"name": "old", "supportedModelMode": [], "effectSupported": True},
        {"name": "later", "effectSupported": False, "supportedModelMode": ["std"]},
        {"caption": "no name"}, "not an entry", {"name": ""},
    ]
    catalogue = parse_catalogue(answer, backend="sim", account=None, fetched_at=AT)
    assert catalogue.effects == (
        EffectEntry("rocket", "Rocket", ("std", "pro"), prompt=True, supported=True),
        EffectEntry("quiet", "", ("pro",), prompt=False, supported=True),
        EffectEntry("old", "", (), prompt=False, supported=True),
        EffectEntry("later", "", ("std",), prompt=False, supported=False))
    assert catalogue.available == ["rocket", "quiet"]
    assert catalogue.get("old") == catalogue.effects[2] and catalogue.get("nope") is None


def test_an_answer_that_is_not_a_list_is_an_error() -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue({"error": "x"}, backend="api:http://127.0.0.1:9/v1/kling",
                        account=None, fetched_at=AT)
    assert str(caught.value) == ("GET videos/effects on http://127.0.0.1:9/v1/kling answered "
                                 "dict, not a list of effects")


def test_kept_per_backend_and_account_and_read_back(tmp_path: Path) -> None:
    entries = (EffectEntry("rocket", "Rocket", ("std",), True, True),)
    mine = Catalogue("sim", "a@example.com", AT, entries)
    default = Catalogue("useapi", None, AT, ())
    assert keep_catalogue(tmp_path, mine) == tmp_path / "effects/sim/a@example.com.json"
    assert keep_catalogue(tmp_path, default) == tmp_path / "effects/useapi/_default.json"
    assert load_catalogue(tmp_path, "sim", "a@example.com") == mine
    assert load_catalogue(tmp_path, "useapi", None) == default
    assert load_catalogue(tmp_path, "sim", None) is None
    assert load_catalogue(tmp_path, "useapi", "a@example.com") is None
    kept = json.loads((tmp_path / "effects/sim/a@example.com.json").read_text())
    assert kept["fetched_at"] == AT and kept["effects"][0]["available"] is True


def test_a_newer_fetch_replaces_the_kept_one(tmp_path: Path) -> None:
    keep_catalogue(tmp_path, Catalogue("sim", None, AT, ()))
    newer = Catalogue("sim", None, "2026-02-01T00:00:00Z",
                      (EffectEntry("x", "", ("std",), False, True),))
    keep_catalogue(tmp_path, newer)
    assert load_catalogue(tmp_path, "sim", None) == newer
    assert [p.name for p in (tmp_path / "effects/sim").iterdir()] == ["_default.json"]


def test_names_that_cannot_be_file_names_are_made_safe_and_distinct(tmp_path: Path) -> None:
    one = catalogue_path(tmp_path, "api:http://127.0.0.1:8765/v1/kling", "a/b@example.com")
    two = catalogue_path(tmp_path, "api:http://127.0.0.1:8766/v1/kling", "a_b@example.com")
    assert one.parent.name.startswith("api_http_127.0.0.1_8765_v1_kling-")
    assert one.name.startswith("a_b@example.com-") and two.name == "a_b@example.com.json"
    assert one.parent != two.parent and one.parent.parent == tmp_path / "effects"


def test_an_unreadable_kept_catalogue_counts_as_none(tmp_path: Path) -> None:
    path = catalogue_path(tmp_path, "sim", None)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    kept = KeptCatalogues(tmp_path, "sim")
    assert kept.get(None) is None and kept.missing == {None}
