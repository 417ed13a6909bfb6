"""Kling's model and effect rules, with the exact messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_spec_helpers import HEAD, loaded, problems

URL = "https://x.test/a.png"


def _frames(fields: str) -> str:
    return HEAD + f"steps:\n  - id: s\n    kind: frames\n{fields}"


@pytest.mark.parametrize(("fields", "expected"), [
    (f"    image: {URL}\n    duration: 7\n",
     "p.yaml:7:15: steps[0] (id: s).duration: 7 is not one of 5, 10 for kling-v2-1"),
    (f"    image: {URL}\n    model_name: kling-v3-0\n    duration: '16'\n",
     "p.yaml:8:15: steps[0] (id: s).duration: 16 is not one of 3..15 for kling-v3-0"),
    (f"    image: {URL}\n    mode: 4k\n",
     "p.yaml:7:11: steps[0] (id: s).mode: '4k' is not one of std, pro for kling-v2-1"),
    (f"    image: {URL}\n    model_name: kling-v2-5\n    mode: std\n",
     "p.yaml:8:11: steps[0] (id: s).mode: kling-v2-5 runs in pro mode only and ignores "
     "mode: std; remove mode"),
    (f"    image: {URL}\n    model_name: kling-v2-1-master\n    image_tail: {URL}\n",
     "p.yaml:8:17: steps[0] (id: s).image_tail: kling-v2-1-master does not support image_tail "
     "and would ignore it; remove it or use a model that does: kling-v1-5, kling-v1-6, "
     "kling-v2-1, kling-v2-6, kling-v3-0"),
    (f"    image: {URL}\n    model_name: kling-v2-5\n    negative_prompt: blur\n",
     "p.yaml:8:22: steps[0] (id: s).negative_prompt: kling-v2-5 does not support "
     "negative_prompt and would ignore it; remove it or use a model that does: kling-v1-5, "
     "kling-v1-6, kling-v2-1, kling-v2-1-master, kling-v2-6, kling-v3-0, kling-v3-0-turbo"),
    (f"    image: {URL}\n    cfg_scale: 0.7\n",
     "p.yaml:7:16: steps[0] (id: s).cfg_scale: kling-v2-1 does not support cfg_scale and "
     "would ignore it; remove it or use a model that does: kling-v1-5, kling-v1-6"),
    (f"    image: {URL}\n    model_name: kling-v2-6\n    enable_audio: true\n",
     "p.yaml:8:19: steps[0] (id: s).enable_audio: native audio on kling-v2-6 needs mode: pro "
     "(this step runs std); set mode: pro or remove enable_audio"),
    (f"    image: {URL}\n    model_name: kling-v3-0-turbo\n    enable_audio: false\n",
     "p.yaml:8:19: steps[0] (id: s).enable_audio: kling-v3-0-turbo always generates audio "
     "and does not accept enable_audio; remove it"),
    (f"    image_tail: {URL}\n",
     "p.yaml:4:5: steps[0] (id: s): kling-v2-1 needs a start frame; add image (only "
     "kling-v1-5 and kling-v1-6 can start from image_tail alone)"),
    ("    prompt: hi\n",
     "p.yaml:4:5: steps[0] (id: s): a frames step needs image or image_tail (a start or an "
     "end frame)"),
    (f"    image: {URL}\n    prompt: ${{vars.long}}${{vars.long}}\n",
     "p.yaml:7:13: steps[0] (id: s).prompt: prompt is 2600 characters long (after "
     "${vars.*} substitution); at most 2500"),
])
def test_model_rules(tmp_path: Path, fields: str, expected: str) -> None:
    text = _frames(fields)
    if "vars.long" in fields:
        text = text.replace("steps:", f"vars: {{long: {'x' * 1300}}}\nsteps:")
        expected = expected.replace("p.yaml:7:", "p.yaml:8:")
    assert problems(tmp_path, text) == [expected]


def test_allowed_combinations_pass(tmp_path: Path) -> None:
    text = _frames(f"    image_tail: {URL}\n    model_name: kling-v1-6\n    cfg_scale: 0.2\n"
                   "    mode: std\n    enable_audio: true\n    negative_prompt: blur\n")
    text += f"  - {{id: t, kind: frames, image: {URL}, model_name: kling-v2-5, mode: pro}}\n"
    text += f"  - {{id: u, kind: frames, image: {URL}, model_name: kling-v3-0, " \
            "negative_prompt: x, duration: 12, mode: 4k}\n"
    assert [s.id for s in loaded(tmp_path, text).steps] == ["s", "t", "u"]


def test_a_default_mode_does_not_apply_to_a_pro_only_model(tmp_path: Path) -> None:
    text = HEAD + f"defaults: {{mode: std}}\nsteps:\n" \
                  f"  - {{id: a, kind: frames, image: {URL}, model_name: kling-v2-5}}\n"
    assert "mode" not in loaded(tmp_path, text).steps[0].params


def test_a_default_the_model_ignores_is_located_at_the_default(tmp_path: Path) -> None:
    text = HEAD + f"defaults: {{cfg_scale: 0.5}}\nsteps:\n" \
                  f"  - {{id: a, kind: frames, image: {URL}}}\n" \
                  f"  - {{id: b, kind: frames, image: {URL}}}\n"
    assert problems(tmp_path, text) == [
        "p.yaml:3:23: steps[0] (id: a).cfg_scale: kling-v2-1 does not support cfg_scale and "
        "would ignore it; remove it or use a model that does: kling-v1-5, kling-v1-6"]


@pytest.mark.parametrize(("step", "expected"), [
    ("{id: e, kind: effect, image: IMG}",
     "p.yaml:4:5: steps[0] (id: e): an effect step needs effect (a name from the effects "
     "catalogue)"),
    ("{id: e, kind: effect, effect: rocket}",
     "p.yaml:4:5: steps[0] (id: e): an effect step needs image"),
])
def test_effect_rules_without_a_catalogue(tmp_path: Path, step: str, expected: str) -> None:
    text = HEAD + "steps:\n  - " + step.replace("IMG", URL) + "\n"
    assert problems(tmp_path, text) == [expected]


def test_without_a_catalogue_no_effect_name_mode_or_prompt_is_refused(tmp_path: Path) -> None:
    text = HEAD + "steps:\n" + "".join(
        f"  - {{id: e{n}, kind: effect, effect: {name}, image: {URL}{extra}}}\n"
        for n, (name, extra) in enumerate([
            ("bloombloom", ""), ("jelly_press", ", mode: pro"), ("rocket", ", prompt: go"),
            ("spinoff", ""), ("hug", ", mode: std")]))
    steps = loaded(tmp_path, text).steps
    assert [s.params["effect"] for s in steps] == [
        "bloombloom", "jelly_press", "rocket", "spinoff", "hug"]
    assert "mode" not in steps[3].params  # no catalogue: nothing decides it
