"""The JSON Schema: shipped, valid, in step with the tables, and its verdicts located."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from klingflow.models import MODELS, MODES
from klingflow.spec.fastschema import compile_check
from tests.test_spec_helpers import HEAD, problems


def _schema() -> dict[str, Any]:
    text = resources.files("klingflow").joinpath("schemas/pipeline.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def test_schema_is_valid_2020_12() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_schema_enums_follow_the_tables() -> None:
    defs = _schema()["$defs"]
    assert defs["model_name"]["enum"] == list(MODELS)
    assert defs["mode"]["enum"] == list(MODES)
    models, effects = defs["price"]["properties"]["model"]["anyOf"]
    assert models["enum"] == list(MODELS)
    assert effects["pattern"] == "^effect:[^\\s]+$"


def test_effect_names_are_the_catalogues_not_the_schemas() -> None:
    """No effect list in the schema: any name validates until a catalogue is kept."""
    defs = _schema()["$defs"]
    assert defs["effect"] == {**defs["effect"], "type": "string", "minLength": 1}
    assert "enum" not in defs["effect"]


def _objects(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found += _objects(value)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value)
    return found


def test_every_property_is_described_and_objects_are_closed() -> None:
    schema = _schema()
    for obj in _objects(schema):
        assert "additionalProperties" in obj or "if" in obj, obj.get("description")
        for name, prop in obj.get("properties", {}).items():
            target = prop
            if "$ref" in prop and "description" not in prop:
                target = schema["$defs"][prop["$ref"].split("/")[-1]]
            assert target.get("description"), name


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from klingflow.cli import main

    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == _schema()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 20) | st.floats(-2, 2, allow_nan=False)
    | st.sampled_from(["frames", "effect", "a", "A b", "kling-v2-1", "std", "pro", "5",
                       "${vars.x}", "x@y.z", "rocket", "", "looks@1"]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "kind", "image", "duration", "mode", "effect", "x", "email",
                         "concat", "prompt", "enable_audio", "matrix", "needs"]), kids,
        max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["step", "defaults", "accountEntry", "output", "matrix", "price",
                        "durationOrRef", "enable_audioOrRef"]), _JSON)
def test_fast_check_agrees_with_jsonschema(definition: str, value: Any) -> None:
    schema = _schema()
    validator = Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"})
    assert compile_check(schema["$defs"][definition], schema)(value) == validator.is_valid(value)


@pytest.mark.parametrize(("schema", "value"), [
    ({"const": [1]}, [True]), ({"const": [1]}, [1.0]), ({"const": [True]}, [1]),
    ({"enum": [{"a": 1}]}, {"a": True}), ({"enum": [{"a": 1}]}, {"a": 1.0}),
    ({"enum": [[1, [2]]]}, [1, [2.0]]), ({"const": {"a": [False]}}, {"a": [0]}),
    ({"const": [1, 2]}, [1]),
])
def test_fast_check_compares_lists_and_objects_as_json_does(schema: dict[str, Any],
                                                            value: Any) -> None:
    """true is not 1 inside a list or an object either (the schema's own const and enum
    values are scalars today; a later one need not be)."""
    assert compile_check(schema, schema)(value) == Draft202012Validator(schema).is_valid(value)


def test_schema_verdicts_are_located_at_the_value(tmp_path: Path) -> None:
    text = """\
version: 2
name: Big Name
accounts:
  main: {email: bob, max_jobs: 99}
  My Acc: {email: a@b.c}
limits: {max_jobs: 0, budget: -1}
steps:
  - id: a
    kind: frames
    promt: hi
    duration: five
    model_name: kling-v2-l
    effect: rocket
  - id: b
    kind: effect
    duration: 5
  - kind: clip
    id: c
outputs:
  film: {concat: [], x: 1}
"""
    assert problems(tmp_path, text) == [
        "p.yaml:1:10: version: 2 is not 1",
        "p.yaml:2:7: name: 'Big Name' is not a slug; use lowercase letters, digits, '-' and "
        "'_', starting with a letter or a digit",
        "p.yaml:4:17: accounts.main.email: 'bob' is not an email address",
        "p.yaml:4:32: accounts.main.max_jobs: 99 is greater than the maximum of 50",
        "p.yaml:5:3: accounts.My Acc: 'My Acc' is not a valid name; use letters, digits, '-' "
        "and '_', starting with a letter or a digit",
        "p.yaml:6:20: limits.max_jobs: 0 is less than the minimum of 1",
        "p.yaml:6:31: limits.budget: -1 is less than the minimum of 0",
        # every independent problem of a step is reported, whatever else is wrong with it
        "p.yaml:8:5: steps[0] (id: a): a frames step needs image or image_tail (a start or "
        "an end frame)",
        "p.yaml:10:5: steps[0] (id: a).promt: unknown key 'promt'; did you mean 'prompt'?",
        "p.yaml:11:15: steps[0] (id: a).duration: 'five' is not a whole number of seconds; "
        "write e.g. 5 or 10",
        "p.yaml:12:17: steps[0] (id: a).model_name: 'kling-v2-l' is not one of kling-v1-5, "
        "kling-v1-6, kling-v2-1, kling-v2-1-master, kling-v2-5, kling-v2-6, kling-v3-0, "
        "kling-v3-0-turbo; did you mean 'kling-v2-6'?",
        "p.yaml:13:5: steps[0] (id: a).effect: unknown key 'effect': it is not a field of "
        "frames steps; remove it or change kind",
        "p.yaml:14:5: steps[1] (id: b): an effect step needs effect (a name from the effects "
        "catalogue)",
        "p.yaml:14:5: steps[1] (id: b): an effect step needs image",
        "p.yaml:16:5: steps[1] (id: b).duration: unknown key 'duration': it is not a field of "
        "effect steps; remove it or change kind",
        "p.yaml:17:11: steps[2] (id: c).kind: 'clip' is not one of frames, effect",
        "p.yaml:20:18: outputs.film.concat: an empty list; give at least one item",
        "p.yaml:20:22: outputs.film.x: unknown key 'x'; expected one of: concat",
    ]


def test_missing_keys_and_empty_steps(tmp_path: Path) -> None:
    assert problems(tmp_path, "version: 1\nsteps: []\n") == [
        "p.yaml:1:1: <document>: missing required key 'name'",
        "p.yaml:2:8: steps: an empty list; give at least one item"]


def test_a_matrix_value_is_checked_with_its_own_type(tmp_path: Path) -> None:
    text = HEAD + """\
steps:
  - id: a
    kind: frames
    image: https://x.test/a.png
    matrix: {d: [5, "x", 7]}
    duration: ${matrix.d}
"""
    assert problems(tmp_path, text) == [
        "p.yaml:7:21: steps[0] (id: a@1).duration: 'x' is not a whole number of seconds; "
        "write e.g. 5 or 10",
        "p.yaml:7:26: steps[0] (id: a@2).duration: 7 is not one of 5, 10 for kling-v2-1"]
