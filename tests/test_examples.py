"""Every example pipeline validates and plans through the CLI, at exactly its expected cost.

The expected cost of each example is summed here from `klingflow.models.PRICES` and the
example's own `prices:`, step by step, independently of the planner.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from klingflow.cli import main
from klingflow.models import PRICES, PriceKey
from tests.conftest import EXAMPLE_FILES, PIPELINES, ROOT
from tests.effecthelpers import keep_sim_catalogues

if not hasattr(pytest.importorskip("klingflow.spec"), "load_pipeline"):
    pytest.skip("klingflow.spec.load_pipeline has not landed yet", allow_module_level=True)

SCHEMA = json.loads((ROOT / "schemas" / "plan.schema.json").read_text("utf-8"))
MODELINE = "# yaml-language-server: $schema=../schemas/pipeline.schema.json\n"


@dataclass(frozen=True)
class Expected:
    """One example's steps in execution order: id -> (price key, account)."""

    steps: dict[str, tuple[PriceKey, str | None]]
    own_prices: dict[PriceKey, int]
    credits: int  # the exact known total, written out
    unknown: tuple[str, ...]

    def price(self, key: PriceKey) -> int | None:
        return self.own_prices.get(key, PRICES.get(key))

    def known_total(self, account: object = ...) -> int:
        return sum(self.price(k) or 0 for k, a in self.steps.values()
                   if account is ... or a == account)


def _k(model: str, mode: str, duration: int = 5, audio: bool = False) -> PriceKey:
    return PriceKey(model, mode, duration, audio)


EXAMPLES: dict[str, Expected] = {
    "rocket-to-city": Expected(
        steps={"launch": (_k("effect:rocket", "std"), "main"),
               "climb": (_k("kling-v2-1", "pro"), "main"),   # image_tail forces pro
               "orbit": (_k("kling-v2-1", "std"), "main")},
        own_prices={_k("effect:rocket", "std"): 20}, credits=75, unknown=()),
    "effect-looks": Expected(
        steps={"looks@0": (_k("effect:cartoon", "std"), "main"),
               "looks@1": (_k("effect:cartoon", "std"), "main"),
               "looks@2": (_k("effect:cyberpunk", "std"), "main"),
               "looks@3": (_k("effect:cyberpunk", "std"), "main"),
               "drift": (_k("kling-v2-6", "std"), "main")},
        own_prices={_k("effect:cartoon", "std"): 15}, credits=45,
        unknown=("looks@2", "looks@3")),
    "two-accounts": Expected(
        steps={"dawn": (_k("kling-v2-6", "std"), "main"),
               "dusk": (_k("kling-v1-6", "std"), "backup"),
               "night": (_k("kling-v2-5", "pro"), "main"),      # pro only
               "bridge": (_k("kling-v2-6", "pro"), "backup")},  # image_tail forces pro
        own_prices={}, credits=85, unknown=()),
    "mixed-inputs": Expected(
        steps={"rise": (_k("kling-v2-1", "std"), None),
               "harbor": (_k("kling-v2-6", "pro"), None),
               "glow": (_k("effect:expansion", "std"), None)},
        own_prices={}, credits=45, unknown=("glow",)),
    "end-frame": Expected(
        steps={"arrive": (_k("kling-v1-6", "pro"), "main"),
               "escape": (_k("kling-v2-1", "pro"), "main"),
               "settle": (_k("kling-v2-1", "std"), "main")},
        own_prices={}, credits=90, unknown=()),
}


@pytest.fixture(autouse=True)
def sim_catalogue_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Examples are judged by the simulator's catalogue, kept in a cache of their own."""
    home = tmp_path / "kept"
    keep_sim_catalogues(home)
    monkeypatch.setenv("KLINGFLOW_HOME", str(home))


def plan_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["plan", "--sim", "--json", str(path)]) == 0
    data: dict = json.loads(capsys.readouterr().out)
    return data


def test_every_example_is_listed() -> None:
    found = [p.stem for p in EXAMPLE_FILES]
    assert sorted(found) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_has_the_schema_modeline(name: str) -> None:
    assert (PIPELINES / f"{name}.yaml").read_text("utf-8").startswith(MODELINE)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_validates(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--sim", str(PIPELINES / f"{name}.yaml")]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_plan_json(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    expected = EXAMPLES[name]
    data = plan_json(PIPELINES / f"{name}.yaml", capsys)
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    steps = data["steps"]
    assert [s["id"] for s in steps] == list(expected.steps)
    for s in steps:
        key, account = expected.steps[s["id"]]
        assert (s["model"], s["mode"], s["duration"], s["audio"], s["account"]) == (
            key.model, key.mode, key.duration, key.audio, account)
        assert s["credits"] == expected.price(key)
    assert data["totals"]["credits"] == expected.known_total() == expected.credits
    assert data["totals"]["unknown"] == list(expected.unknown)
    assert data["totals"]["complete"] is not expected.unknown
    for total in data["totals"]["accounts"]:
        assert total["credits"] == expected.known_total(total["account"])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_plan_text(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--sim", str(PIPELINES / f"{name}.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"plan of {name} (")
    known = f"{len(EXAMPLES[name].steps)} steps, {EXAMPLES[name].credits} credits"
    assert f"  overall: {known}" in out


def test_rocket_to_city_bodies(capsys: pytest.CaptureFixture[str]) -> None:
    steps = plan_json(PIPELINES / "rocket-to-city.yaml", capsys)["steps"]
    assert [s["body"] for s in steps] == [
        {"email": "studio@example.com", "effect": "rocket", "image": "<url of inputs.hero>",
         "mode": "std", "replyRef": "<unique per submit>"},
        {"email": "studio@example.com", "image": "<last_frame of launch>",
         "image_tail": "https://example.com/skyline.jpg",
         "prompt": "The rocket climbs over a futuristic city, cinematic, golden hour",
         "duration": "5", "model_name": "kling-v2-1", "mode": "pro",
         "replyRef": "<unique per submit>"},
        {"email": "studio@example.com", "image": "<last_frame of climb>",
         "prompt": "The rocket banks around the tallest tower, cinematic, golden hour",
         "duration": "5", "model_name": "kling-v2-1", "mode": "std",
         "replyRef": "<unique per submit>"},
    ]
    assert [s["price_source"] for s in steps] == ["pipeline", "table", "table"]


def test_matrix_expands_in_value_order(capsys: pytest.CaptureFixture[str]) -> None:
    steps = plan_json(PIPELINES / "effect-looks.yaml", capsys)["steps"]
    assert [(s["body"]["effect"], s["body"]["image"]) for s in steps[:4]] == [
        ("cartoon", "<url of inputs.hero>"), ("cartoon", "<url of inputs.forest>"),
        ("cyberpunk", "<url of inputs.hero>"), ("cyberpunk", "<url of inputs.forest>")]
    assert steps[4]["waits_for"] == ["looks@3"]
    assert steps[4]["body"]["image"] == "<last_frame of looks@3>"


def test_two_accounts_bodies_and_order(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(PIPELINES / "two-accounts.yaml", capsys)
    by_id = {s["id"]: s for s in data["steps"]}
    assert by_id["dusk"]["body"]["email"] == "backup@example.com"
    assert by_id["dusk"]["body"]["cfg_scale"] == 0.6
    assert "mode" not in by_id["night"]["body"]  # kling-v2-5 is pro only
    assert by_id["bridge"]["body"]["image_tail"] == "<first_frame of dusk>"
    assert sorted(by_id["bridge"]["waits_for"]) == ["dawn", "dusk", "night"]
    assert data["totals"]["accounts"] == [
        {"account": "main", "email": "studio@example.com", "steps": 2, "credits": 40,
         "unknown": []},
        {"account": "backup", "email": "backup@example.com", "steps": 2, "credits": 45,
         "unknown": []}]


def test_url_inputs_and_no_accounts(capsys: pytest.CaptureFixture[str]) -> None:
    steps = plan_json(PIPELINES / "mixed-inputs.yaml", capsys)["steps"]
    assert [s["body"]["image"] for s in steps] == [
        "<url of inputs.moon>", "https://example.com/harbor.jpg", "<last_frame of rise>"]
    assert all("email" not in s["body"] and s["email"] is None for s in steps)


def test_unknown_price_is_named_in_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--sim", str(PIPELINES / "effect-looks.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("unknown (no published price for effect:cyberpunk std 5 s; "
                     "add it under prices:)") == 2
    assert "  overall: 5 steps, 45 credits known + unknown for looks@2, looks@3" in out


def _copy_with_budget(tmp_path: Path, budget: int) -> Path:
    shutil.copytree(PIPELINES / "images", tmp_path / "images")
    text = (PIPELINES / "rocket-to-city.yaml").read_text("utf-8")
    assert "  budget: 100\n" in text
    target = tmp_path / "rocket.yaml"
    target.write_text(text.replace("  budget: 100\n", f"  budget: {budget}\n"), "utf-8")
    return target


def _budget_position(path: Path) -> tuple[int, int]:
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if line.startswith("  budget:"):
            return number, line.index(":") + 3
    raise AssertionError("no budget line")


@pytest.mark.parametrize("command", [["plan", "--sim"], ["plan", "--sim", "--json"],
                                     ["validate", "--sim"]])
def test_budget_exceeded(tmp_path: Path, command: list[str],
                         capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy_with_budget(tmp_path, 74)
    line, col = _budget_position(path)
    assert main([*command, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{path}:{line}:{col}: limits.budget: the known cost of 75 credits exceeds the "
        "budget of 74; raise limits.budget or remove steps\n1 problem found\n")


def test_budget_equal_to_the_known_cost_passes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--sim", str(_copy_with_budget(tmp_path, 75))]) == 0
    assert "budget: 75 credits, 0 left after the known cost" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_on_the_simulator_at_its_planned_cost(name: str, tmp_path: Path) -> None:
    """The README's `klingflow run pipelines/NAME.yaml --sim`, as a user runs it."""
    shutil.copytree(PIPELINES, tmp_path / "pipelines",
                    ignore=shutil.ignore_patterns("*.lock.yaml", "*.py", ".klingflow"))
    env = {**os.environ, "KLINGFLOW_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "klingflow", "run", f"pipelines/{name}.yaml", "--sim",
         "--sim-speed", "20", "--json", "--out", "runs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "succeeded"
    assert [s["id"] for s in report["steps"]] == list(EXAMPLES[name].steps)
    assert {o["status"] for o in report["outputs"].values()} == {"ready"}
    assert report["totals"]["credits"] == EXAMPLES[name].credits
