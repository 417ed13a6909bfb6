"""`klingflow plan` on small YAML files: through the real loader and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from klingflow.cli import main
from tests.conftest import ROOT

SCHEMA = json.loads((ROOT / "schemas" / "plan.schema.json").read_text("utf-8"))

HEAD = """\
version: 1
name: t
accounts:
  main: {email: studio@example.com, max_jobs: 2}
defaults:
  account: main
inputs:
  sky: https://example.com/sky.jpg
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + body, "utf-8")
    return path


def plan_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["plan", "--json", str(path)]) == 0, capsys.readouterr().err
    data: dict = json.loads(capsys.readouterr().out)
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    return data


def test_order_follows_needs_then_file_order(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
steps:
  - {id: late, kind: frames, image: "${steps.mid.last_frame}"}
  - {id: first, kind: frames, image: "${inputs.sky}"}
  - {id: mid, kind: frames, image: "${steps.first.first_frame}", needs: [other]}
  - {id: other, kind: frames, image: "${inputs.sky}"}
  - {id: free, kind: frames, image: "${inputs.sky}"}
""")
    steps = plan_json(path, capsys)["steps"]
    assert [s["id"] for s in steps] == ["first", "other", "mid", "late", "free"]
    assert steps[2]["body"]["image"] == "<first_frame of first>"
    assert sorted(steps[2]["waits_for"]) == ["first", "other"]


def test_matrix_member_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
steps:
  - id: take
    kind: frames
    matrix: {prompt: [calm, stormy]}
    image: ${inputs.sky}
    prompt: A ${matrix.prompt} sky
  - {id: next, kind: frames, image: "${steps.take@1.last_frame}"}
""")
    steps = plan_json(path, capsys)["steps"]
    assert [(s["id"], s["body"].get("prompt")) for s in steps] == [
        ("take@0", "A calm sky"), ("take@1", "A stormy sky"), ("next", None)]
    assert steps[2]["body"]["image"] == "<last_frame of take@1>"
    assert steps[2]["waits_for"] == ["take@1"]


def test_pipeline_prices_fill_a_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
prices:
  - {model: "effect:squish", mode: std, duration: 5, credits: 12}
  - {model: kling-v2-1, mode: pro, duration: 10, credits: 60}
steps:
  - {id: a, kind: effect, effect: squish, image: "${inputs.sky}"}
  - {id: b, kind: frames, image: "${inputs.sky}", mode: pro, duration: 10}
  - {id: c, kind: effect, effect: cartoon, image: "${inputs.sky}"}
""")
    data = plan_json(path, capsys)
    assert [(s["credits"], s["price_source"]) for s in data["steps"]] == [
        (12, "pipeline"), (60, "pipeline"), (None, "unknown")]
    assert data["totals"]["credits"] == 72
    assert data["totals"]["unknown"] == ["c"]
    assert data["steps"][2]["price_note"] == (
        "no published price for effect:cartoon std 5 s; add it under prices:")


def test_unknown_price_never_shows_as_zero(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
steps:
  - {id: fx, kind: effect, effect: rocket, image: "${inputs.sky}"}
""")
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unknown (no published price for effect:rocket std 5 s; add it under prices:)" in out
    assert "  overall: 1 step, 0 credits known + unknown for fx" in out


def test_duration_string_and_mode_rules(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """\
steps:
  - {id: a, kind: frames, image: "${inputs.sky}", duration: "10"}
  - {id: b, kind: frames, image: "${inputs.sky}", model_name: kling-v2-1-master}
  - {id: c, kind: frames, image: "${inputs.sky}", image_tail: "${inputs.sky}"}
""")
    bodies = [s["body"] for s in plan_json(path, capsys)["steps"]]
    assert [(b["duration"], b["model_name"], b.get("mode")) for b in bodies] == [
        ("10", "kling-v2-1", "std"), ("5", "kling-v2-1-master", None),
        ("5", "kling-v2-1", "pro")]


def test_budget_exceeded_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLINGFLOW_HOME", raising=False)
    monkeypatch.delenv("KLINGFLOW_API_BASE", raising=False)
    path = write(tmp_path, """\
limits:
  budget: 30
steps:
  - {id: a, kind: frames, image: "${inputs.sky}"}
  - {id: b, kind: frames, image: "${inputs.sky}"}
  - {id: fx, kind: effect, effect: rocket, image: "${inputs.sky}"}
""")
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (  # no catalogue kept: said once, and not a problem
        f"{path}: note: effect names, modes and prompts are unchecked: no catalogue of "
        "useapi.net is kept for studio@example.com; fetch it with: klingflow effects "
        f"{path}\n"
        f"{path}:10:11: limits.budget: the known cost of 40 credits exceeds the budget of 30; "
        "raise limits.budget or remove steps\n1 problem found\n")


def test_schema_command_prints_the_plan_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "plan"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == SCHEMA
    jsonschema.Draft202012Validator.check_schema(printed)
