"""Semantic checks: references, matrix, defaults, accounts, cycles, inputs, outputs."""

from __future__ import annotations

from pathlib import Path

from klingflow.spec import Ref, Template
from tests.test_spec_helpers import HEAD, loaded, png, problems

URL = "https://x.test/a.png"


def test_references_to_unknown_names(tmp_path: Path) -> None:
    text = HEAD + f"""\
inputs: {{hero: {URL}}}
vars: {{look: golden}}
steps:
  - id: a
    kind: frames
    image: ${{inputs.hro}}
    prompt: ${{vars.lok}} light
  - id: b
    kind: frames
    image: ${{steps.aa.last_frame}}
    image_tail: ${{steps.a.lastframe}}
    prompt: ${{input.hero}} and ${{vars.look
"""
    assert problems(tmp_path, text) == [
        "p.yaml:8:12: steps[0] (id: a).image: unknown input 'hro' in ${inputs.hro}; "
        "did you mean 'hero'?",
        "p.yaml:9:13: steps[0] (id: a).prompt: unknown var 'lok' in ${vars.lok}; "
        "did you mean 'look'?",
        "p.yaml:12:12: steps[1] (id: b).image: unknown step 'aa' in ${steps.aa.last_frame}; "
        "did you mean 'a'?",
        "p.yaml:13:17: steps[1] (id: b).image_tail: unknown attribute 'lastframe' in "
        "${steps.a.lastframe}: a step produces video, first_frame, last_frame; "
        "did you mean 'last_frame'?",
        # every bad reference of one text, as they are written
        "p.yaml:14:13: steps[1] (id: b).prompt: unknown reference ${input.hero}: 'input' is "
        "not one of inputs, vars, steps, matrix; did you mean 'inputs'?",
        "p.yaml:14:13: steps[1] (id: b).prompt: unclosed '${' in ' and ${vars.look'; "
        "write ${scope.name} with a closing '}'",
    ]


def test_every_bad_reference_of_a_text_is_reported_in_the_order_written(
        tmp_path: Path) -> None:
    """One pass finds them all: it used to stop at a text's first bad reference. One
    written twice is one problem."""
    text = HEAD + f"""inputs: {{hero: {URL}}}
steps:
  - id: a
    kind: frames
    image: ${{inputs.hero}}
    prompt: ${{vars.x}} ${{inputs.y}} ${{steps.nope.video}} ${{vars.x}}
"""
    assert problems(tmp_path, text) == [
        "p.yaml:8:13: steps[0] (id: a).prompt: unknown var 'x' in ${vars.x}; no vars are "
        "declared",
        "p.yaml:8:13: steps[0] (id: a).prompt: unknown input 'y' in ${inputs.y}; declared: "
        "hero",
        "p.yaml:8:13: steps[0] (id: a).prompt: unknown step 'nope' in ${steps.nope.video}; "
        "steps are: a",
    ]


def test_unknown_scope(tmp_path: Path) -> None:
    text = HEAD + f"inputs: {{hero: {URL}}}\nsteps:\n  - id: a\n    kind: frames\n" \
                  "    image: ${input.hero}\n"
    assert problems(tmp_path, text) == [
        "p.yaml:7:12: steps[0] (id: a).image: unknown reference ${input.hero}: 'input' is not "
        "one of inputs, vars, steps, matrix; did you mean 'inputs'?"]


def test_cycles_are_named(tmp_path: Path) -> None:
    text = HEAD + """\
steps:
  - id: a
    kind: frames
    image: ${steps.b.last_frame}
  - id: b
    kind: frames
    image: ${steps.a.last_frame}
  - id: c
    kind: frames
    image: https://x.test/c.png
    needs: [c]
"""
    assert problems(tmp_path, text) == [
        "p.yaml:6:12: steps[0] (id: a).image: a cycle: a -> b -> a; a step cannot wait for "
        "itself: remove one of these references",
        "p.yaml:13:13: steps[2] (id: c).needs[0]: a cycle: c -> c; a step cannot wait for "
        "itself: remove one of these references"]


def test_matrix_outside_and_base_id_references(tmp_path: Path) -> None:
    text = HEAD + f"""\
steps:
  - id: looks
    kind: effect
    matrix: {{effect: [cartoon, cyberpunk]}}
    effect: ${{matrix.effect}}
    image: {URL}
    prompt: ${{matrix.efect}}
  - id: d
    kind: frames
    image: ${{steps.looks.last_frame}}
    image_tail: ${{matrix.x}}
  - id: e
    kind: frames
    image: ${{steps.d@1.last_frame}}
    prompt: ${{steps.looks@5.video}}
"""
    assert problems(tmp_path, text) == [
        "p.yaml:9:13: steps[0] (id: looks@0).prompt: unknown matrix key 'efect' in "
        "${matrix.efect}; did you mean 'effect'?",
        "p.yaml:12:12: steps[1] (id: d).image: ${steps.looks.last_frame}: 'looks' is a matrix "
        "step; name one of its 2 expansions: looks@0, looks@1",
        "p.yaml:13:17: steps[1] (id: d).image_tail: ${matrix.x} is used outside a matrix; add a "
        "matrix to this step or write the value itself",
        "p.yaml:16:12: steps[2] (id: e).image: ${steps.d@1.last_frame}: 'd' is not a matrix "
        "step; write 'd' without '@'",
        "p.yaml:17:13: steps[2] (id: e).prompt: ${steps.looks@5.video}: 'looks' has 2 "
        "expansions: looks@0, looks@1",
    ]


def test_accounts_must_be_declared(tmp_path: Path) -> None:
    step = f"steps:\n  - {{id: a, kind: frames, image: {URL}, account: mian}}\n"
    assert problems(tmp_path, HEAD + step) == [
        "p.yaml:4:65: steps[0] (id: a).account: account 'mian' is not declared: the file has "
        "no accounts; add accounts: {mian: {email: ...}}"]
    text = HEAD + "accounts: {main: {email: a@b.c}}\n" + step
    assert problems(tmp_path, text) == [
        "p.yaml:5:65: steps[0] (id: a).account: unknown account 'mian'; did you mean 'main'?"]


def test_duplicate_ids_and_unknown_outputs(tmp_path: Path) -> None:
    text = HEAD + f"""\
steps:
  - {{id: a, kind: frames, image: {URL}}}
  - {{id: a, kind: frames, image: {URL}}}
outputs:
  film: {{concat: [a, b]}}
"""
    assert problems(tmp_path, text) == [
        "p.yaml:5:10: steps[1] (id: a).id: duplicate step id 'a' (first at line 4); ids must "
        "be unique",
        "p.yaml:7:22: outputs.film.concat[1]: unknown step 'b' in concat: b; steps are: a"]


def test_images_must_be_references_or_urls(tmp_path: Path) -> None:
    text = HEAD + f"""\
steps:
  - {{id: a, kind: frames, image: hero.png}}
  - {{id: b, kind: frames, image: "${{steps.a.video}}"}}
  - {{id: c, kind: frames, image: {URL}}}
"""
    assert problems(tmp_path, text) == [
        "p.yaml:4:34: steps[0] (id: a).image: 'hero.png' is not an image: write "
        "${inputs.NAME}, ${steps.ID.last_frame} or an http(s) URL",
        "p.yaml:5:34: steps[1] (id: b).image: ${steps.a.video} is a clip, not an image; use "
        "${steps.a.first_frame} or ${steps.a.last_frame}"]


def test_local_inputs_are_checked(tmp_path: Path) -> None:
    png(tmp_path / "ok.png", 300, 320)
    png(tmp_path / "small.png", 200, 400)
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "big.png").write_bytes(b"\0" * (10 * 1024 * 1024 + 1))
    from PIL import Image
    Image.new("RGB", (400, 400)).save(tmp_path / "pic.gif")
    text = HEAD + """\
inputs:
  ok: ok.png
  gone: missing.png
  small: small.png
  text: text.png
  big: big.png
  gif: pic.gif
  ftp: ftp://x.test/a.png
steps:
  - {id: a, kind: frames, image: "${inputs.ok}"}
"""
    lines = problems(tmp_path, text)
    assert lines == [
        f"p.yaml:5:9: inputs.gone: 'missing.png' does not exist (looked for "
        f"{tmp_path / 'missing.png'}); fix the path, relative to the pipeline file",
        "p.yaml:6:10: inputs.small: 'small.png' is 200x400 px; an input image is at least "
        "300 px on each side",
        "p.yaml:7:9: inputs.text: 'text.png' is not a PNG or JPEG image (its content is not "
        "an image)",
        "p.yaml:8:8: inputs.big: 'big.png' is 10.0 MB; an input image is at most 10 MB",
        "p.yaml:9:8: inputs.gif: 'pic.gif' is a GIF image; convert it to PNG or JPEG",
        "p.yaml:10:8: inputs.ftp: 'ftp://x.test/a.png' is neither an http(s) URL nor a local "
        "path"]


def test_a_url_scheme_in_capitals_is_a_url(tmp_path: Path) -> None:
    """Schemes are case-insensitive (RFC 3986): HTTPS://... was taken for a local path."""
    text = HEAD + """\
inputs: {shot: "HTTPS://X.TEST/a.png"}
steps:
  - id: a
    kind: frames
    image: ${inputs.shot}
    image_tail: Http://x.test/b.png
"""
    pipeline = loaded(tmp_path, text)
    assert pipeline.inputs["shot"].url == "HTTPS://X.TEST/a.png"
    assert pipeline.steps[0].params["image_tail"] == "Http://x.test/b.png"


def test_a_valid_pipeline_becomes_records(tmp_path: Path) -> None:
    png(tmp_path / "hero.png", 320, 320)
    pipeline = loaded(tmp_path, """\
version: 1
name: demo
accounts: {main: {email: a@b.c, max_jobs: 3}}
defaults: {account: main, model_name: kling-v2-1, mode: std, duration: 5}
inputs: {hero: hero.png, sky: "https://x.test/s.jpg"}
vars: {look: golden, len: 10}
limits: {max_jobs: 4, budget: 400}
prices: [{model: "effect:rocket", mode: std, duration: 5, credits: 10}]
steps:
  - {id: launch, kind: effect, effect: rocket, image: "${inputs.hero}"}
  - id: climb
    kind: frames
    image: ${steps.launch.last_frame}
    image_tail: ${inputs.sky}
    prompt: climbs, ${vars.look}
    duration: ${vars.len}
  - id: looks
    kind: effect
    needs: [climb]
    matrix: {effect: [cartoon, cyberpunk], image: ["${inputs.hero}", "${inputs.sky}"]}
    effect: ${matrix.effect}
    image: ${matrix.image}
outputs:
  film: {concat: [launch, climb, looks]}
""")
    ids = [s.id for s in pipeline.steps]
    assert ids == ["launch", "climb", "looks@0", "looks@1", "looks@2", "looks@3"]
    climb = pipeline.step("climb")
    assert climb.params["duration"] == 10
    assert climb.params["prompt"] == "climbs, golden"
    assert climb.params["image"] == Template((Ref("steps", "launch", "last_frame"),))
    assert climb.needs == ("launch",)
    assert climb.account == "main" and climb.retries == 3 and climb.timeout == 1800.0
    assert climb.positions["duration"].line == 16
    assert climb.positions["model_name"].line == 4  # from defaults
    looks = pipeline.step("looks@1")
    assert looks.params == {"effect": "cartoon", "image": Template((Ref("inputs", "sky"),)),
                            "mode": "std"}
    assert looks.needs == ("climb",) and looks.base_id == "looks"
    assert looks.positions["effect"].line == 20  # the matrix value
    assert pipeline.outputs["film"].concat == (
        "launch", "climb", "looks@0", "looks@1", "looks@2", "looks@3")
    assert pipeline.inputs["hero"].path == (tmp_path / "hero.png").resolve()
    assert pipeline.inputs["sky"].url == "https://x.test/s.jpg"
    assert pipeline.budget == 400 and pipeline.budget_position is not None
    assert pipeline.budget_position.line == 7
    assert pipeline.accounts["main"].max_jobs == 3
    assert pipeline.prices[0].credits == 10
