"""Effect steps judged against the simulator's own catalogue, fetched as the service's is."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from klingflow.catalogue import FetchedCatalogues
from klingflow.errors import PipelineError
from klingflow.plan import build_plan
from klingflow.sim.catalogue import SimEffect
from klingflow.spec import load_pipeline
from tests.effecthelpers import sim_catalogues
from tests.test_spec_helpers import HEAD, write

URL = "https://x.test/a.png"
SOURCE = "the simulator's catalogue of the default account (fetched 2026-01-02 10:00 UTC)"


@cache
def sim() -> FetchedCatalogues:
    """The simulator's own catalogue, of the default account."""
    return FetchedCatalogues(sim_catalogues(None))


def problems(tmp_path: Path, text: str, effects: FetchedCatalogues | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path, effects=effects or sim())
    return [str(p).replace(str(path), "p.yaml") for p in caught.value.problems]


def effect_step(fields: str) -> str:
    return HEAD + f"steps:\n  - {{id: e, kind: effect, image: {URL}, {fields}}}\n"


@pytest.mark.parametrize(("fields", "expected"), [
    ("effect: bloom",
     f"p.yaml:4:64: steps[0] (id: e).effect: unknown effect 'bloom': not in {SOURCE}; "
     "did you mean 'bloombloom'?"),
    ("effect: rainbow_burst",
     f"p.yaml:4:64: steps[0] (id: e).effect: unknown effect 'rainbow_burst': not in {SOURCE}; "
     "`klingflow effects --sim` lists the available ones"),
    ("effect: balloon_parade",
     f"p.yaml:4:64: steps[0] (id: e).effect: effect 'balloon_parade' is not available: "
     f"{SOURCE} lists it with no modes (retired); choose another effect"),
    ("effect: hug",
     f"p.yaml:4:64: steps[0] (id: e).effect: effect 'hug' is not available: {SOURCE} marks "
     "it effectSupported: false; choose another effect"),
    ("effect: fuzzyfuzzy, prompt: fluffier",
     "p.yaml:4:84: steps[0] (id: e).prompt: effect 'fuzzyfuzzy' does not take a prompt "
     "(promptSupported is false) and the service would ignore it; remove prompt"),
    ("effect: spinoff, mode: std",
     "p.yaml:4:79: steps[0] (id: e).mode: 'std' is not one of pro for effect 'spinoff'"),
    ("effect: heart_gesture, mode: pro",
     "p.yaml:4:85: steps[0] (id: e).mode: 'pro' is not one of std for effect "
     "'heart_gesture'"),
])
def test_each_catalogue_rule_with_its_message(tmp_path: Path, fields: str,
                                              expected: str) -> None:
    assert problems(tmp_path, effect_step(fields)) == [expected]


@pytest.mark.parametrize("fields", [
    "effect: fuzzyfuzzy", "effect: heart_gesture", "effect: bloombloom",
    "effect: rocket, prompt: A detailed description for the effect, mode: std",  # the seed's
    "effect: expansion, prompt: A detailed description for the effect",  # its sample answer
    "effect: bullet_time, mode: pro, prompt: slower"])
def test_real_effects_the_service_lists_validate(tmp_path: Path, fields: str) -> None:
    assert load_pipeline(write(tmp_path, effect_step(fields)), effects=sim()).steps


def test_a_one_mode_effect_without_mode_runs_in_that_mode_and_is_priced_so(
        tmp_path: Path) -> None:
    text = HEAD + f"""\
prices:
  - {{model: "effect:spinoff", mode: pro, duration: 5, credits: 30}}
steps:
  - {{id: spin, kind: effect, effect: spinoff, image: {URL}}}
  - {{id: heart, kind: effect, effect: heart_gesture, image: {URL}}}
  - {{id: rocket, kind: effect, effect: rocket, image: {URL}}}
"""
    pipeline = load_pipeline(write(tmp_path, text), effects=sim())
    plan = build_plan(pipeline)
    assert [(s.id, s.mode, s.body.get("mode"), s.credits) for s in plan.steps] == [
        ("spin", "pro", "pro", 30), ("heart", "std", "std", None), ("rocket", "std", "std", None)]
    spin = pipeline.step("spin")
    assert spin.positions["mode"] == spin.positions["effect"]  # decided by the effect


def test_an_effect_with_several_modes_but_no_std_needs_a_mode(tmp_path: Path) -> None:
    own = (SimEffect("glam", "Glam", ("pro", "4k"), False),)
    effects = FetchedCatalogues(sim_catalogues(None, effects=own))
    assert problems(tmp_path, effect_step("effect: glam"), effects) == [
        "p.yaml:4:64: steps[0] (id: e).effect: effect 'glam' runs in pro, 4k mode only; "
        "add mode: pro"]


ACCOUNTS = """\
accounts:
  a: {email: a@example.com}
  b: {email: b@example.com}
"""
OWN = (SimEffect("rocket", "Rocket Launch", ("pro",), False),
       SimEffect("glitter", "Glitter", ("std",), True))


def test_each_step_is_judged_by_its_accounts_catalogue(tmp_path: Path) -> None:
    effects = FetchedCatalogues(sim_catalogues(
        "a@example.com", "b@example.com", accounts=[("a@example.com", 1), ("b@example.com", 1)],
        account_effects={"b@example.com": OWN}))
    text = HEAD + ACCOUNTS + f"""\
steps:
  - {{id: on-a, kind: effect, account: a, effect: glitter, image: {URL}}}
  - {{id: on-b, kind: effect, account: b, effect: glitter, image: {URL}, prompt: shine}}
  - {{id: rocket-b, kind: effect, account: b, effect: rocket, image: {URL}}}
  - {{id: either, kind: effect, effect: fuzzyfuzzy, image: {URL}}}
"""
    assert problems(tmp_path, text, effects) == [
        "p.yaml:7:50: steps[0] (id: on-a).effect: unknown effect 'glitter': not in the "
        "simulator's catalogue for a@example.com (fetched 2026-01-02 10:00 UTC); "
        "`klingflow effects --sim` lists the available ones",
        # a step with no account may run on either: both catalogues must allow it
        "p.yaml:10:40: steps[3] (id: either).effect: unknown effect 'fuzzyfuzzy': not in the "
        "simulator's catalogue for b@example.com (fetched 2026-01-02 10:00 UTC); "
        "`klingflow effects --sim` lists the available ones"]
    good = text.replace(f"  - {{id: on-a, kind: effect, account: a, effect: glitter, "
                        f"image: {URL}}}\n", "").replace("fuzzyfuzzy", "rocket, mode: pro")
    pipeline = load_pipeline(write(tmp_path, good), effects=effects)
    assert pipeline.step("rocket-b").params["mode"] == "pro"  # b lists rocket in pro only


def test_a_catalogue_problem_in_a_matrix_is_reported_once_at_its_value(tmp_path: Path) -> None:
    text = HEAD + f"""\
steps:
  - id: looks
    kind: effect
    matrix: {{effect: [cartoon, hug], image: [{URL}, https://x.test/b.png]}}
    effect: ${{matrix.effect}}
    image: ${{matrix.image}}
"""
    assert problems(tmp_path, text) == [
        f"p.yaml:6:32: steps[0] (id: looks@2).effect: effect 'hug' is not available: {SOURCE} "
        "marks it effectSupported: false; choose another effect"]
