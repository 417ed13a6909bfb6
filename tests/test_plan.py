"""The planner on Pipeline records built by hand (no YAML): order, bodies, prices, budget."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from klingflow.errors import PipelineError
from klingflow.kinds import KINDS
from klingflow.models import PRICES, PriceKey
from klingflow.plan import (
    Plan,
    budget_problems,
    build_plan,
    endpoint_of,
    execution_order,
    request_body,
)
from klingflow.report import format_plan
from klingflow.spec.pipeline import (
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

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schemas" /
                     "plan.schema.json").read_text("utf-8"))
FILE = "pipelines/t.yaml"


def ref(text: str) -> Template:
    """`inputs.hero` or `steps.launch.last_frame` as a one-part Template."""
    scope, name, *attr = text.split(".")
    return Template((Ref(scope, name, attr[0] if attr else None),))  # type: ignore[arg-type]


def step(id: str, kind: str = "frames", *, account: str | None = "main",
         needs: tuple[str, ...] = (), line: int = 1, **params: Value) -> Step:
    return Step(id=id, kind=kind, params=params, account=account,  # type: ignore[arg-type]
                needs=needs, retries=3, timeout=1800.0, position=Position(FILE, line, 5),
                base_id=id.split("@")[0], positions={})


def pipeline(*steps: Step, budget: int | None = None, prices: tuple[PriceEntry, ...] = (),
             accounts: dict[str, Account] | None = None,
             outputs: dict[str, Output] | None = None) -> Pipeline:
    return Pipeline(
        path=Path(FILE), name="t", description="", inputs={
            "hero": Input("hero", path=Path("/abs/images/hero.png")),
            "sky": Input("sky", url="https://example.com/sky.jpg")},
        accounts={"main": Account("main", "studio@example.com", 3)} if accounts is None
        else accounts,
        vars={}, max_jobs=None, budget=budget,
        budget_position=Position(FILE, 12, 11) if budget is not None else None,
        prices=prices, steps=steps, outputs=outputs or {})


def placeholders(s: Step, p: Pipeline, email: str | None = "studio@example.com") -> dict:
    return request_body(s, p, lambda r: r.placeholder, email=email)


# ---- request bodies -------------------------------------------------------------------


def test_frames_body_names_model_duration_string_and_mode() -> None:
    s = step("a", image=ref("inputs.hero"), prompt="a calm sea", duration=10)
    assert placeholders(s, pipeline(s)) == {
        "email": "studio@example.com", "image": "<url of inputs.hero>",
        "prompt": "a calm sea", "duration": "10", "model_name": "kling-v2-1", "mode": "std"}


def test_frames_default_duration_is_sent_as_string() -> None:
    s = step("a", image=ref("inputs.hero"))
    assert placeholders(s, pipeline(s))["duration"] == "5"


def test_end_frame_sends_pro() -> None:
    s = step("a", image=ref("steps.launch.last_frame"), image_tail=ref("inputs.sky"),
             mode="std")
    body = placeholders(s, pipeline(s))
    assert body["mode"] == "pro"
    assert body["image"] == "<last_frame of launch>"
    assert body["image_tail"] == "<url of inputs.sky>"


def test_pro_only_model_omits_mode() -> None:
    s = step("a", image=ref("inputs.hero"), model_name="kling-v2-5", mode="pro")
    body = placeholders(s, pipeline(s))
    assert "mode" not in body
    assert body["model_name"] == "kling-v2-5"


def test_always_on_audio_model_omits_enable_audio() -> None:
    s = step("a", image=ref("inputs.hero"), model_name="kling-v3-0-turbo",
             enable_audio=True, duration=3)
    assert "enable_audio" not in placeholders(s, pipeline(s))


def test_body_field_order_follows_the_docs() -> None:
    s = step("a", enable_audio=True, mode="pro", model_name="kling-v1-6", duration=5,
             cfg_scale=0.3, negative_prompt="blur", prompt="p", image_tail=ref("inputs.sky"),
             image=ref("inputs.hero"))
    assert list(placeholders(s, pipeline(s))) == [
        "email", "image", "image_tail", "prompt", "negative_prompt", "cfg_scale", "duration",
        "model_name", "mode", "enable_audio"]


def test_no_account_means_no_email() -> None:
    s = step("a", account=None, image=ref("inputs.hero"))
    assert "email" not in placeholders(s, pipeline(s, accounts={}), email=None)


def test_templates_render_through_resolve() -> None:
    prompt = Template(("from ", Ref("steps", "launch", "video"), " on"))
    s = step("a", image=ref("inputs.hero"), prompt=prompt)
    body = request_body(s, pipeline(s), lambda r: f"https://cdn/{r.name}", email=None)
    assert body["image"] == "https://cdn/hero"
    assert body["prompt"] == "from https://cdn/launch on"


def test_effect_body() -> None:
    s = step("fx", "effect", effect="rocket", image=ref("inputs.hero"), duration=10,
             model_name="kling-v1-6")
    assert placeholders(s, pipeline(s)) == {
        "email": "studio@example.com", "effect": "rocket", "image": "<url of inputs.hero>",
        "mode": "std"}


def test_an_effect_is_sent_with_its_mode_else_the_services_default() -> None:
    """The planner knows no effects: the loader fills in the mode of a one-mode effect."""
    given = step("fx", "effect", effect="spinoff", image=ref("inputs.hero"), mode="pro")
    unset = step("fx", "effect", effect="spinoff", image=ref("inputs.hero"))
    assert placeholders(given, pipeline(given))["mode"] == "pro"
    assert placeholders(unset, pipeline(unset))["mode"] == "std"


def test_endpoints_are_data() -> None:
    assert {k.name: k.endpoint for k in KINDS.values()} == {
        "frames": "videos/image2video-frames", "effect": "videos/image2video-effects"}
    assert endpoint_of(step("fx", "effect", effect="rocket")) == "videos/image2video-effects"


# ---- the plan -------------------------------------------------------------------------


def test_plan_shows_url_inputs_as_is_and_the_rest_as_placeholders() -> None:
    a = step("launch", "effect", effect="rocket", image=ref("inputs.hero"))
    b = step("climb", image=ref("steps.launch.last_frame"), image_tail=ref("inputs.sky"),
             needs=("launch",))
    plan = build_plan(pipeline(a, b))
    assert plan.steps[1].body == {
        "email": "studio@example.com", "image": "<last_frame of launch>",
        "image_tail": "https://example.com/sky.jpg", "duration": "5",
        "model_name": "kling-v2-1", "mode": "pro", "replyRef": "<unique per submit>"}
    assert plan.steps[0].body["image"] == "<url of inputs.hero>"


def test_execution_order_respects_needs_with_file_order_ties() -> None:
    steps = (step("c", needs=("b",)), step("a"), step("b", needs=("a",)), step("d"),
             step("e", needs=("d", "a")))
    assert [s.id for s in execution_order(steps)] == ["a", "b", "c", "d", "e"]


def test_execution_order_keeps_file_order_without_needs() -> None:
    steps = tuple(step(f"s{i}") for i in range(12))
    assert execution_order(steps) == steps


def test_cycle_is_a_bug_past_the_loader() -> None:
    with pytest.raises(ValueError, match="cycle: a, b"):
        execution_order((step("a", needs=("b",)), step("b", needs=("a",))))


def test_effective_settings_and_table_prices() -> None:
    steps = (
        step("std5", image=ref("inputs.hero")),
        step("tail10", image=ref("inputs.hero"), image_tail=ref("inputs.sky"), duration=10),
        step("master", image=ref("inputs.hero"), model_name="kling-v2-1-master"),
        step("v26audio", image=ref("inputs.hero"), model_name="kling-v2-6", mode="pro",
             enable_audio=True),
        step("v3", image=ref("inputs.hero"), model_name="kling-v3-0", mode="pro", duration=6),
    )
    plan = build_plan(pipeline(*steps))
    got = {s.id: (s.model, s.mode, s.duration, s.audio, s.credits, s.price_source)
           for s in plan.steps}
    assert got == {
        "std5": ("kling-v2-1", "std", 5, False, 20, "table"),
        "tail10": ("kling-v2-1", "pro", 10, False, 70, "table"),
        "master": ("kling-v2-1-master", "pro", 5, False, 100, "table"),
        "v26audio": ("kling-v2-6", "pro", 5, True, 35, "table"),
        "v3": ("kling-v3-0", "pro", 6, True, 72, "table"),
    }
    assert plan.credits == 20 + 70 + 100 + 35 + 72
    assert plan.complete


def test_unknown_price_is_named_not_zero() -> None:
    s = step("launch", "effect", effect="rocket", image=ref("inputs.hero"))
    t = step("climb", image=ref("inputs.hero"))
    plan = build_plan(pipeline(s, t))
    launch = plan.steps[0]
    assert (launch.model, launch.mode, launch.duration) == ("effect:rocket", "std", 5)
    assert launch.credits is None
    assert launch.price_source == "unknown"
    assert launch.price_note == ("no published price for effect:rocket std 5 s; "
                                 "add it under prices:")
    assert plan.credits == 20
    assert plan.unknown == ("launch",)
    assert not plan.complete
    text = format_plan(plan)
    assert "unknown (no published price for effect:rocket std 5 s; add it under prices:)" in text
    assert "20 credits known + unknown for launch" in text


def test_audio_without_a_published_price_is_unknown() -> None:
    s = step("a", image=ref("inputs.hero"), enable_audio=True)
    planned = build_plan(pipeline(s)).steps[0]
    assert planned.credits is None
    assert planned.price_note == ("no published price for kling-v2-1 std 5 s with audio; "
                                  "add it under prices:")


def test_pipeline_prices_fill_gaps_and_override() -> None:
    fx = step("launch", "effect", effect="rocket", image=ref("inputs.hero"))
    fr = step("climb", image=ref("inputs.hero"))
    prices = (PriceEntry("effect:rocket", "std", 5, 30), PriceEntry("kling-v2-1", "std", 5, 18))
    plan = build_plan(pipeline(fx, fr, prices=prices))
    assert [(s.credits, s.price_source) for s in plan.steps] == [(30, "pipeline"),
                                                                  (18, "pipeline")]
    assert plan.credits == 48
    assert plan.complete
    assert PRICES[PriceKey("kling-v2-1", "std", 5)] == 20  # the table itself is untouched


def test_pipeline_price_for_another_mode_does_not_apply() -> None:
    fx = step("launch", "effect", effect="rocket", image=ref("inputs.hero"))
    plan = build_plan(pipeline(fx, prices=(PriceEntry("effect:rocket", "pro", 5, 60),)))
    assert plan.steps[0].credits is None


def test_totals_per_account() -> None:
    accounts = {"a": Account("a", "a@example.com", 2), "b": Account("b", "b@example.com", 1)}
    steps = (
        step("one", account="b", image=ref("inputs.hero")),
        step("two", account="a", image=ref("inputs.hero"), duration=10),
        step("three", "effect", account="b", effect="rocket", image=ref("inputs.hero")),
        step("four", account=None, image=ref("inputs.hero")),
    )
    plan = build_plan(pipeline(*steps, accounts=accounts))
    assert [(t.account, t.email, t.steps, t.credits, t.unknown) for t in plan.accounts] == [
        ("a", "a@example.com", 1, 40, ()),
        ("b", "b@example.com", 2, 20, ("three",)),
        (None, None, 1, 20, ()),
    ]
    assert plan.steps[3].email is None
    assert "email" not in plan.steps[3].body


def test_budget_exceeded_by_known_cost() -> None:
    steps = tuple(step(f"s{i}", image=ref("inputs.hero"), duration=10) for i in range(3))
    with pytest.raises(PipelineError) as info:
        build_plan(pipeline(*steps, budget=100))
    assert [str(p) for p in info.value.problems] == [
        "pipelines/t.yaml:12:11: limits.budget: the known cost of 120 credits exceeds the "
        "budget of 100; raise limits.budget or remove steps"]


def test_budget_problems_for_the_loader() -> None:
    steps = (step("a", image=ref("inputs.hero"), duration=10),
             step("fx", "effect", effect="rocket", image=ref("inputs.hero")))
    assert budget_problems(pipeline(*steps, budget=40)) == []
    assert budget_problems(pipeline(*steps)) == []
    assert [str(p) for p in budget_problems(pipeline(*steps, budget=39))] == [
        "pipelines/t.yaml:12:11: limits.budget: the known cost of 40 credits exceeds the "
        "budget of 39; raise limits.budget or remove steps"]


def test_budget_equal_to_cost_and_unknown_prices_pass() -> None:
    steps = (step("a", image=ref("inputs.hero"), duration=10),
             step("fx", "effect", effect="rocket", image=ref("inputs.hero")))
    plan = build_plan(pipeline(*steps, budget=40))
    assert plan.credits == 40
    assert format_plan(plan).endswith(
        "  budget: 40 credits, 0 left after the known cost\n"
        "  warning: under a budget the run refuses a step of unknown price (fx); "
        "add its price under prices:")


def test_json_matches_schema_and_content() -> None:
    steps = (step("launch", "effect", effect="rocket", image=ref("inputs.hero")),
             step("climb", image=ref("steps.launch.last_frame"), image_tail=ref("inputs.sky"),
                  needs=("launch",)))
    plan = build_plan(pipeline(*steps, budget=400, outputs={
        "film": Output("film", ("launch", "climb"))}))
    data: dict = plan.to_json()
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert data["totals"] == {
        "credits": 35, "unknown": ["launch"], "complete": False, "cached": [], "restored": [],
        "reattached": [],
        "accounts": [{"account": "main", "email": "studio@example.com", "steps": 2,
                      "credits": 35, "unknown": ["launch"]}]}
    assert data["outputs"] == {"film": {"concat": ["launch", "climb"]}}
    assert data["steps"][1]["waits_for"] == ["launch"]
    json.dumps(data)  # plain JSON data


def test_schema_rejects_a_zero_for_an_unknown_price() -> None:
    data: dict = build_plan(pipeline(step("fx", "effect", effect="rocket",
                                          image=ref("inputs.hero")))).to_json()
    data["steps"][0]["credits"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_format_plan_text() -> None:
    steps = (step("launch", "effect", effect="rocket", image=ref("inputs.hero")),
             step("climb", image=ref("steps.launch.last_frame"), image_tail=ref("inputs.sky"),
                  needs=("launch",)))
    prices = (PriceEntry("effect:rocket", "std", 5, 25),)
    text = format_plan(build_plan(pipeline(*steps, prices=prices, budget=100)))
    assert text == "\n".join([
        "plan of t (pipelines/t.yaml): 2 steps",
        "",
        "step    kind    model          mode  duration  audio  account                    "
        "waits for  credits",
        "launch  effect  effect:rocket  std   5 s       no     main <studio@example.com>  "
        "-          25 (pipeline price)",
        '    POST videos/image2video-effects {"email": "studio@example.com", "effect": '
        '"rocket", "image": "<url of inputs.hero>", "mode": "std", "replyRef": '
        '"<unique per submit>"}',
        "climb   frames  kling-v2-1     pro   5 s       no     main <studio@example.com>  "
        "launch     35",
        '    POST videos/image2video-frames {"email": "studio@example.com", "image": '
        '"<last_frame of launch>", "image_tail": "https://example.com/sky.jpg", "duration": '
        '"5", "model_name": "kling-v2-1", "mode": "pro", "replyRef": "<unique per submit>"}',
        "",
        "totals:",
        "  main <studio@example.com>: 2 steps, 60 credits",
        "  overall: 2 steps, 60 credits",
        "  budget: 100 credits, 40 left after the known cost",
    ])


def test_plan_is_frozen() -> None:
    plan = build_plan(pipeline(step("a", image=ref("inputs.hero"))))
    assert isinstance(plan, Plan)
    with pytest.raises(AttributeError):
        plan.credits = 0  # type: ignore[misc]
