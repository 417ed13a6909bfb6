"""Every problem of a file at once: k independent problems planted in a valid pipeline give
exactly k located messages, whatever else is wrong in the same step."""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klingflow.cli import main
from tests.conftest import PIPELINES
from tests.effecthelpers import keep_sim_catalogues
from tests.test_spec_helpers import HEAD, write

URL = "https://x.test/a.png"


# ---- the examples the issue gives --------------------------------------------------------------


def _validate(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["validate", "--sim", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    return [line.replace(str(path), "p.yaml") for line in out.err.splitlines()
            if ": note: " not in line]


def test_a_duplicate_key_does_not_hide_a_bad_duration(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, HEAD + f"""\
steps:
  - id: a
    kind: frames
    image: {URL}
    prompt: one
    prompt: two
    duration: 7
""")
    assert _validate(path, capsys) == [
        "p.yaml:8:5: steps[0] (id: a).prompt: duplicate key 'prompt' (first at line 7); "
        "remove one of them",
        "p.yaml:9:15: steps[0] (id: a).duration: 7 is not one of 5, 10 for kling-v2-1",
        "2 problems found"]


def test_a_misspelt_key_does_not_hide_a_reference_to_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, HEAD + f"""\
steps:
  - {{id: a, kind: frames, image: {URL}}}
  - id: b
    kind: frames
    promt: hi
    image: ${{steps.nope.last_frame}}
""")
    assert _validate(path, capsys) == [
        "p.yaml:7:5: steps[1] (id: b).promt: unknown key 'promt'; did you mean 'prompt'?",
        "p.yaml:8:12: steps[1] (id: b).image: unknown step 'nope' in ${steps.nope.last_frame}; "
        "steps are: a, b",
        "2 problems found"]


def test_follow_on_errors_are_not_reported(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A value already reported is not judged again, nor what depends on it."""
    path = write(tmp_path, HEAD + f"""\
vars: {{look: [a, list]}}
defaults: {{model_name: kling-v9}}
steps:
  - id: a
    kind: frames
    image: {URL}
    prompt: in ${{vars.look}} light
    duration: 7
  - id: b
    kind: frames
    matrix: {{p: x}}
    image: {URL}
    prompt: ${{matrix.p}}
    model_name: kling-v2-1
    duration: 7
  - {{id: c, kind: frames, image: "${{steps.b@1.last_frame}}", model_name: kling-v2-1}}
""")
    assert _validate(path, capsys) == [
        "p.yaml:3:14: vars.look: a list is not of type 'string' or 'number'; write it as text "
        "(in quotes if it looks like a number)",
        "p.yaml:4:24: defaults.model_name: 'kling-v9' is not one of kling-v1-5, kling-v1-6, "
        "kling-v2-1, kling-v2-1-master, kling-v2-5, kling-v2-6, kling-v3-0, kling-v3-0-turbo; "
        "did you mean 'kling-v3-0'?",
        "p.yaml:13:17: steps[1] (id: b).matrix.p: 'x' is not of type 'array'; write a list: "
        "[a, b] or one '- item' per line",
        "p.yaml:17:15: steps[1] (id: b).duration: 7 is not one of 5, 10 for kling-v2-1",
        "4 problems found"]


# ---- k planted problems -------------------------------------------------------------------------


@dataclass
class Doc:
    """A pipeline as data; steps as (key, value) pairs, so a key may be written twice."""

    head: dict[str, Any]
    steps: list[list[tuple[str, Any]]]
    extra_steps: list[list[tuple[str, Any]]] = field(default_factory=list)

    def text(self) -> str:
        head = {k: v for k, v in self.head.items() if k != "outputs"}
        lines = [yaml.safe_dump(head, sort_keys=False).rstrip(), "steps:"]
        for step in self.steps + self.extra_steps:
            pairs = [f"{key}: {json.dumps(value)}" for key, value in step]
            lines.append("  - " + "\n    ".join(pairs))
        lines.append(yaml.safe_dump({"outputs": self.head["outputs"]}, sort_keys=False))
        return "\n".join(lines)


BASE = Doc(
    head={
        "version": 1, "name": "planted",
        "accounts": {"main": {"email": "studio@example.com", "max_jobs": 2},
                     "backup": {"email": "backup@example.com"}},
        "defaults": {"account": "main"},
        "inputs": {"hero": "images/hero.png", "sky": URL},
        "vars": {"look": "golden"},
        "limits": {"max_jobs": 3},
        "prices": [{"model": "effect:rocket", "mode": "std", "duration": 5, "credits": 20}],
        "outputs": {"film": {"concat": ["f0", "f1", "e0"]}},
    },
    steps=[
        [("id", "f0"), ("kind", "frames"), ("image", "${inputs.hero}"), ("prompt", "dawn")],
        [("id", "f1"), ("kind", "frames"), ("image", "${steps.f0.last_frame}"),
         ("prompt", "noon, ${vars.look}"), ("duration", 10)],
        [("id", "f2"), ("kind", "frames"), ("image", "${inputs.sky}"),
         ("model_name", "kling-v1-6"), ("account", "backup")],
        [("id", "f3"), ("kind", "frames"), ("image", "${steps.e1.last_frame}"),
         ("needs", ["f2"])],
        [("id", "e0"), ("kind", "effect"), ("effect", "rocket"), ("image", "${inputs.hero}")],
        [("id", "e1"), ("kind", "effect"), ("effect", "cartoon"), ("image", "${inputs.sky}"),
         ("prompt", "bright")],
        [("id", "e2"), ("kind", "effect"), ("effect", "spinoff"), ("image", "${inputs.sky}"),
         ("mode", "pro"), ("account", "backup")],
        [("id", "grid"), ("kind", "frames"), ("matrix", {"p": ["calm", "stormy"]}),
         ("image", "${inputs.sky}"), ("prompt", "a ${matrix.p} sea")],
    ])
STEPS = {s[0][1]: n for n, s in enumerate(BASE.steps)}
FRAMES = ("f0", "f1", "f2", "f3")
EFFECTS = ("e0", "e1", "e2")


def _set(step: list[tuple[str, Any]], key: str, value: Any) -> None:
    for n, (k, _) in enumerate(step):
        if k == key:
            step[n] = (key, value)
            return
    step.append((key, value))


def _drop(step: list[tuple[str, Any]], key: str) -> None:
    step[:] = [(k, v) for k, v in step if k != key]


Slot = tuple[str, ...]


@dataclass(frozen=True)
class Plant:
    """One independent problem: where it goes (its slots: no two plants share one), how,
    and what its message says."""

    slots: tuple[Slot, ...]
    apply: Callable[[Doc], None]
    says: str


ACCOUNT_OF = {"e0": "main", "e1": "main", "e2": "backup"}


def _step_plant(step_id: str, key: str, says: str,
                change: Callable[[list[tuple[str, Any]]], None]) -> Plant:
    def apply(doc: Doc) -> None:
        change(doc.steps[STEPS[step_id]])
    slots: tuple[Slot, ...] = (("steps", step_id, key),)
    if key == "effect":  # judged by the catalogue of the step's account: it must be known;
        # and the catalogue judges the prompt (which these plants set or drop) and mode
        slots += (("steps", step_id, "account"), ("accounts", ACCOUNT_OF[step_id]),
                  ("steps", step_id, "prompt"))
    return Plant(slots, apply, says)


def _plants_for(step_id: str) -> list[Plant]:
    plants = [
        _step_plant(step_id, "account", "unknown account 'mian'",
                    lambda s: _set(s, "account", "mian")),
        _step_plant(step_id, "needs", "unknown step 'nope' in needs: nope",
                    lambda s: _set(s, "needs", ["nope"])),
        _step_plant(step_id, "retries", "99 is greater than the maximum of 20",
                    lambda s: _set(s, "retries", 99)),
        _step_plant(step_id, "image", "unknown input 'hro' in ${inputs.hro}",
                    lambda s: _set(s, "image", "${inputs.hro}")),
        _step_plant(step_id, "prompt", "duplicate key 'prompt'",
                    lambda s: (_set(s, "prompt", "one"), s.append(("prompt", "two")))),
        _step_plant(step_id, "timeout", "unknown key 'timout'; did you mean 'timeout'?",
                    lambda s: s.append(("timout", 5))),
        _step_plant(step_id, "id-dup", "duplicate key 'kind'",
                    lambda s: s.append(("kind", s[1][1]))),
    ]
    if step_id in FRAMES:
        plants += [
            _step_plant(step_id, "duration", "7 is not one of 5, 10 for kling-",
                        lambda s: _set(s, "duration", 7)),
            _step_plant(step_id, "cfg_scale", "'high' is not of type 'number'",
                        lambda s: _set(s, "cfg_scale", "high")),
            _step_plant(step_id, "enable_audio", "'yes' is not of type 'boolean'",
                        lambda s: _set(s, "enable_audio", "yes")),
            _step_plant(step_id, "negative_prompt", "unknown key 'negative_promt'",
                        lambda s: s.append(("negative_promt", "blur"))),
        ]
    else:
        plants += [
            _step_plant(step_id, "effect", "unknown effect 'rainbow_burst'",
                        lambda s: _set(s, "effect", "rainbow_burst")),
            _step_plant(step_id, "effect", "effect 'hug' is not available",
                        lambda s: _set(s, "effect", "hug")),
            _step_plant(step_id, "effect", "effect 'fuzzyfuzzy' does not take a prompt",
                        lambda s: (_set(s, "effect", "fuzzyfuzzy"), _set(s, "prompt", "x"))),
            _step_plant(step_id, "effect", "'std' is not one of pro for effect 'spinoff'",
                        lambda s: (_set(s, "effect", "spinoff"), _set(s, "mode", "std"),
                                   _drop(s, "prompt"))),
            _step_plant(step_id, "duration", "unknown key 'duration': it is not a field of "
                        "effect steps", lambda s: s.append(("duration", 5))),
        ]
    return plants


def _section_plants(n: int) -> list[Plant]:
    def new_input(doc: Doc) -> None:
        doc.head["inputs"][f"gone{n}"] = f"images/gone{n}.png"

    def new_output(doc: Doc) -> None:
        doc.head["outputs"][f"reel{n}"] = {"concat": ["f0", f"nope{n}"]}

    def new_var(doc: Doc) -> None:
        doc.head["vars"][f"list{n}"] = [1, 2]

    def new_matrix(doc: Doc) -> None:
        values = list(range(101))
        doc.extra_steps.append([("id", f"big{n}"), ("kind", "frames"),
                                ("matrix", {"a": values, "b": values}),
                                ("image", URL), ("prompt", "${matrix.a}")])

    def new_price(doc: Doc) -> None:
        doc.head["prices"].append(dict(doc.head["prices"][0], credits=30 + n))

    return [
        Plant((("inputs", str(n)),), new_input, f"'images/gone{n}.png' does not exist"),
        Plant((("outputs", str(n)),), new_output, f"unknown step 'nope{n}' in concat"),
        Plant((("vars", str(n)),), new_var, "a list is not of type 'string' or 'number'"),
        Plant((("matrix", str(n)),), new_matrix, "the matrix expands to 10,201 steps"),
        Plant((("prices", str(n)),), new_price, "a second price for effect:rocket std 5 s"),
    ]


def _account_plant(alias: str) -> Plant:
    def apply(doc: Doc) -> None:
        doc.head["accounts"][alias]["email"] = "bob"
    return Plant((("accounts", alias),), apply, "'bob' is not an email address")


ALL_PLANTS = [p for step_id in FRAMES + EFFECTS for p in _plants_for(step_id)] + [
    p for n in range(3) for p in _section_plants(n)] + [
    _account_plant("main"), _account_plant("backup"),
    Plant((("limits",),), lambda d: d.head["limits"].update(max_jobs=0),
          "0 is less than the minimum of 1")]


@st.composite
def planted(draw: st.DrawFn) -> list[Plant]:
    k = draw(st.integers(1, 8))
    chosen: list[Plant] = []
    taken: set[Slot] = set()
    for plant in draw(st.permutations(ALL_PLANTS)):
        if not taken & set(plant.slots):
            chosen.append(plant)
            taken |= set(plant.slots)
        if len(chosen) == k:
            break
    return chosen


@pytest.fixture(scope="module")
def folder() -> Any:
    """A folder with the example images and, in .klingflow, the simulator's catalogue."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(PIPELINES / "images", Path(tmp) / "images")
        keep_sim_catalogues(Path(tmp) / ".klingflow")
        yield Path(tmp)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(planted())
def test_k_planted_problems_give_exactly_k_located_messages(
        folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        plants: list[Plant]) -> None:
    monkeypatch.delenv("KLINGFLOW_HOME", raising=False)
    doc = copy.deepcopy(BASE)
    for plant in plants:
        plant.apply(doc)
    path = folder / "p.yaml"
    path.write_text(doc.text(), encoding="utf-8")
    code = main(["validate", "--sim", str(path)])
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert code == 2 and out.out == "", out.err
    k = len(plants)
    assert lines[-1] == f"{k} problem{'s' if k > 1 else ''} found", out.err
    problems = lines[:-1]
    located = re.compile(re.escape(str(path)) + r":\d+:\d+: \S")
    assert len(problems) == k and all(located.match(p) for p in problems), out.err
    for plant in plants:
        assert sum(plant.says in p for p in problems) >= 1, (plant.says, out.err)


def test_the_base_is_valid(folder: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLINGFLOW_HOME", raising=False)
    path = folder / "base.yaml"
    path.write_text(BASE.text(), encoding="utf-8")
    assert main(["validate", "--sim", str(path)]) == 0, capsys.readouterr().err
